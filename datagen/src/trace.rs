//! Problems, steps and traces: the text the language model reads and writes.
//!
//! A model sees `problem.prompt` (one or more lines, always ending with a newline) followed by
//! its trace: one step per line, then a final line `Answer: ...`. The steps are the hidden
//! chain of thought; the answer is the visible response. See `docs/format.md`.

use serde::{Deserialize, Serialize};

/// The line prefix that ends a trace and carries the visible answer.
pub const ANSWER_PREFIX: &str = "Answer:";

/// The step delimiter.
pub const STEP_END: char = '\n';

/// One verifiable problem of a task family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Unique within a task: derived from the prompt, so equal problems have equal ids.
    pub id: String,
    /// The task family's name, e.g. `countdown`.
    pub task: String,
    /// Exactly the text the model is conditioned on; ends with a newline.
    pub prompt: String,
    /// One gold answer (for countdown any expression that verifies is right, not only this one).
    pub answer: String,
    /// The task's difficulty level (higher is harder; what it counts is task-specific).
    pub difficulty: u32,
    /// Task-specific facts about the problem, e.g. countdown's number of solutions.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
}

impl Problem {
    /// Builds a problem whose id is a stable hash of task name and prompt.
    pub fn new(task: &str, prompt: String, answer: String, difficulty: u32, meta: serde_json::Value) -> Self {
        let id = format!("{task}-{:016x}", stable_hash(prompt.as_bytes()));
        Problem {
            id,
            task: task.to_string(),
            prompt,
            answer,
            difficulty,
            meta,
        }
    }
}

/// FNV-1a with a SplitMix64 finaliser, 64 bit: stable across platforms and Rust versions
/// (unlike `DefaultHasher`), and every output bit depends on every input bit.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// One attempt: the steps (hidden chain of thought) and the final answer, if one was given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub steps: Vec<String>,
    pub answer: Option<String>,
}

impl Trace {
    pub fn new(steps: Vec<String>, answer: impl Into<String>) -> Self {
        Trace {
            steps,
            answer: Some(answer.into()),
        }
    }

    /// Parses model output (the text after the prompt). Never fails and never panics: lines
    /// before the first `Answer:` line are steps, the rest of that line is the answer, and
    /// anything after it is ignored. Without an answer line the trace is unfinished.
    pub fn parse(text: &str) -> Trace {
        let mut steps = Vec::new();
        for line in text.split(STEP_END) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(rest) = line.trim_start().strip_prefix(ANSWER_PREFIX) {
                return Trace {
                    steps,
                    answer: Some(rest.trim().to_string()),
                };
            }
            steps.push(line.to_string());
        }
        // A final empty piece is what follows the last newline, not a step.
        if steps.last().is_some_and(|s| s.is_empty()) {
            steps.pop();
        }
        Trace { steps, answer: None }
    }

    /// The exact text a model writes for this trace: every step and the answer line end with
    /// a newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(step);
            out.push(STEP_END);
        }
        if let Some(answer) = &self.answer {
            out.push_str(ANSWER_PREFIX);
            out.push(' ');
            out.push_str(answer);
            out.push(STEP_END);
        }
        out
    }

    /// The rendered text of the first `n` steps (a partial trace, as a prefix for rollouts).
    pub fn render_prefix(&self, n: usize) -> String {
        let mut out = String::new();
        for step in self.steps.iter().take(n) {
            out.push_str(step);
            out.push(STEP_END);
        }
        out
    }

    /// Whether the trace ended with an answer line.
    pub fn is_finished(&self) -> bool {
        self.answer.is_some()
    }
}

/// The answer line for an answer.
pub fn answer_line(answer: &str) -> String {
    format!("{ANSWER_PREFIX} {answer}")
}

/// The line that follows an attempt when another one comes (sequential revision).
pub const REVISE: &str = "revise";

/// Earlier attempts as the context of a revision: each attempt's text, then a `revise` line.
/// Whether an attempt was right is never written.
pub fn revision_context(attempts: &[Trace]) -> String {
    let mut out = String::new();
    for a in attempts {
        out.push_str(&a.render());
        out.push_str(REVISE);
        out.push(STEP_END);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render_round_trip() {
        let trace = Trace::new(vec!["1+2=3 left 3 3".into(), "3+3=6 left 6".into()], "1+2+3");
        let text = trace.render();
        assert_eq!(text, "1+2=3 left 3 3\n3+3=6 left 6\nAnswer: 1+2+3\n");
        assert_eq!(Trace::parse(&text), trace);
    }

    #[test]
    fn unfinished_and_trailing_text() {
        let t = Trace::parse("a\nb");
        assert_eq!(t.steps, vec!["a", "b"]);
        assert_eq!(t.answer, None);
        let t = Trace::parse("a\nAnswer:  7 \nnoise\nmore");
        assert_eq!(t.steps, vec!["a"]);
        assert_eq!(t.answer.as_deref(), Some("7"));
        assert_eq!(Trace::parse(""), Trace::default());
    }

    #[test]
    fn ids_depend_on_prompt_only() {
        let a = Problem::new("t", "p\n".into(), "1".into(), 1, serde_json::Value::Null);
        let b = Problem::new("t", "p\n".into(), "2".into(), 3, serde_json::Value::Null);
        assert_eq!(a.id, b.id);
        let c = Problem::new("t", "q\n".into(), "1".into(), 1, serde_json::Value::Null);
        assert_ne!(a.id, c.id);
    }
}
