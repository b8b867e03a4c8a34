//! Reward datasets in the JSONL shapes the Hugging Face world uses:
//!
//! - process labels, as TRL's stepwise-supervision datasets: `{"prompt": "...",
//!   "completions": ["step", ..., "Answer: x"], "labels": [true, ..., false]}`;
//! - raw Math-Shepherd lines, `{"input": "question Step 1: ... ки\nStep 2: ... ки",
//!   "label": "question Step 1: ... +\nStep 2: ... -"}`, read into the same shape;
//! - preference pairs, as TRL's DPO datasets: `{"prompt": "...", "chosen": "...",
//!   "rejected": "..."}`.
//!
//! Every read error names the file and the line; nothing panics on any input.

use std::path::Path;

use ponder_datagen::dataset::{read_jsonl, write_jsonl};
use ponder_datagen::{ANSWER_PREFIX, DatasetError, Problem, Trace};
use serde::{Deserialize, Serialize};

use crate::RewardError;

/// One trace with a label per completion (step, then the answer line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessExample {
    pub prompt: String,
    pub completions: Vec<String>,
    pub labels: Vec<bool>,
}

impl ProcessExample {
    pub fn new(problem: &Problem, trace: &Trace, step_labels: &[bool], outcome: Option<bool>) -> ProcessExample {
        let mut completions = trace.steps.clone();
        let mut labels = step_labels.to_vec();
        if let (Some(answer), Some(o)) = (&trace.answer, outcome) {
            completions.push(ponder_datagen::trace::answer_line(answer));
            labels.push(o);
        }
        ProcessExample {
            prompt: problem.prompt.clone(),
            completions,
            labels,
        }
    }

    /// The problem (prompt only; task `imported`), the trace, its step labels and the answer's.
    pub fn split(&self) -> (Problem, Trace, Vec<bool>, Option<bool>) {
        let mut prompt = self.prompt.clone();
        if !prompt.ends_with('\n') {
            prompt.push('\n');
        }
        let problem = Problem::new("imported", prompt, String::new(), 0, serde_json::Value::Null);
        let mut steps = Vec::new();
        let mut labels = Vec::new();
        let mut answer = None;
        let mut outcome = None;
        for (c, &l) in self.completions.iter().zip(&self.labels) {
            let line = c.trim_end_matches('\n');
            match line.trim_start().strip_prefix(ANSWER_PREFIX) {
                Some(a) if answer.is_none() => {
                    answer = Some(a.trim().to_string());
                    outcome = Some(l);
                }
                _ => {
                    // A multi-line completion is one step: its lines joined by spaces.
                    steps.push(line.replace('\n', " "));
                    labels.push(l);
                }
            }
        }
        (problem, Trace { steps, answer }, labels, outcome)
    }
}

#[derive(Deserialize)]
struct AnyProcessLine {
    prompt: Option<String>,
    completions: Option<Vec<String>>,
    labels: Option<Vec<bool>>,
    input: Option<String>,
    label: Option<String>,
}

const SHEPHERD_TAG: &str = "ки";

fn from_math_shepherd(input: &str, label: &str) -> Result<ProcessExample, String> {
    let pieces: Vec<&str> = input.split(SHEPHERD_TAG).collect();
    if pieces.len() < 2 {
        return Err("`input` has no `ки` step tags".into());
    }
    // The label text is the input with each tag replaced by + or -; read the marks in order.
    let mut marks = Vec::new();
    let mut rest = label;
    for piece in &pieces[..pieces.len() - 1] {
        let piece = piece.trim_start();
        let at = rest.find(piece.trim_end()).ok_or("`label` does not follow `input`")?;
        rest = &rest[at + piece.trim_end().len()..];
        let mark = rest.trim_start().chars().next().ok_or("`label` ends before a mark")?;
        marks.push(match mark {
            '+' => true,
            '-' => false,
            other => return Err(format!("step mark `{other}` is neither + nor -")),
        });
        rest = &rest.trim_start()[mark.len_utf8()..];
    }
    let first = pieces[0];
    let (question, first_step) = match first.find("Step 1:") {
        Some(i) => (first[..i].trim(), &first[i..]),
        None => match first.split_once('\n') {
            Some((q, s)) => (q.trim(), s),
            None => return Err("cannot tell the question from the first step".into()),
        },
    };
    let mut completions = vec![first_step.trim().to_string()];
    completions.extend(pieces[1..pieces.len() - 1].iter().map(|p| p.trim().to_string()));
    Ok(ProcessExample {
        prompt: question.to_string(),
        completions,
        labels: marks,
    })
}

/// Reads a process-label file (TRL stepwise supervision, or raw Math-Shepherd).
pub fn read_process(path: &Path) -> Result<Vec<ProcessExample>, RewardError> {
    let mut out = Vec::new();
    let lines = read_jsonl::<serde_json::Value>(path).map_err(dataset_error)?;
    for (i, line) in lines.enumerate() {
        let value = line.map_err(dataset_error)?;
        let line_no = line_number(path, i)?;
        let bad = |message: String| RewardError::Line {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let any: AnyProcessLine = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let example = match any {
            AnyProcessLine {
                prompt: Some(prompt),
                completions: Some(completions),
                labels: Some(labels),
                ..
            } => {
                if completions.len() != labels.len() {
                    return Err(bad(format!(
                        "{} completions but {} labels",
                        completions.len(),
                        labels.len()
                    )));
                }
                ProcessExample {
                    prompt,
                    completions,
                    labels,
                }
            }
            AnyProcessLine {
                input: Some(input),
                label: Some(label),
                ..
            } => from_math_shepherd(&input, &label).map_err(bad)?,
            _ => {
                return Err(bad(
                    "expected `prompt`, `completions`, `labels` (TRL) or `input`, `label` (Math-Shepherd)".into(),
                ));
            }
        };
        if example.completions.is_empty() {
            return Err(bad("no completions".into()));
        }
        out.push(example);
    }
    Ok(out)
}

/// The 1-based line of the `index`-th record (blank lines are skipped by the reader).
fn line_number(path: &Path, index: usize) -> Result<usize, RewardError> {
    let text = std::fs::read_to_string(path).map_err(|e| RewardError::Format(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .nth(index)
        .map_or(index + 1, |(n, _)| n + 1))
}

fn dataset_error(e: DatasetError) -> RewardError {
    match e {
        DatasetError::Line { path, line, message } => RewardError::Line { path, line, message },
        other => RewardError::Format(other.to_string()),
    }
}

pub fn write_process(path: &Path, examples: &[ProcessExample]) -> Result<usize, RewardError> {
    write_jsonl::<_, DatasetError>(path, examples.iter().map(Ok)).map_err(dataset_error)
}

/// A preference pair (TRL DPO shape): the same prompt, a preferred and a dispreferred
/// completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

pub fn write_pairs(path: &Path, pairs: &[PreferencePair]) -> Result<usize, RewardError> {
    write_jsonl::<_, DatasetError>(path, pairs.iter().map(Ok)).map_err(dataset_error)
}

pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, RewardError> {
    read_jsonl::<PreferencePair>(path)
        .map_err(dataset_error)?
        .map(|r| r.map_err(dataset_error))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trl_and_math_shepherd_lines_read_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prm.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt": "add 1+2", "completions": ["1+2+0=3 so 3", "Answer: 3"], "labels": [true, true]}"#,
                "\n\n",
                r#"{"input": "What is 2+3? Step 1: 2+3=6 ки\nStep 2: The answer is 6 ки", "label": "What is 2+3? Step 1: 2+3=6 -\nStep 2: The answer is 6 -"}"#,
                "\n"
            ),
        )
        .expect("write");
        let examples = read_process(&path).expect("reads");
        assert_eq!(examples.len(), 2);
        let (problem, trace, labels, outcome) = examples[0].split();
        assert_eq!(problem.prompt, "add 1+2\n");
        assert_eq!(trace.steps, vec!["1+2+0=3 so 3"]);
        assert_eq!(trace.answer.as_deref(), Some("3"));
        assert_eq!((labels, outcome), (vec![true], Some(true)));
        assert_eq!(examples[1].prompt, "What is 2+3?");
        assert_eq!(
            examples[1].completions,
            vec!["Step 1: 2+3=6", "Step 2: The answer is 6"]
        );
        assert_eq!(examples[1].labels, vec![false, false]);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"p\", \"completions\": [\"a\"], \"labels\": [true]}\n\n{\"prompt\": \"p\", \"completions\": [\"a\", \"b\"], \"labels\": [true]}\n",
        )
        .expect("write");
        let err = read_process(&path).expect_err("mismatch").to_string();
        assert!(
            err.contains("bad.jsonl:3:") && err.contains("2 completions but 1 labels"),
            "{err}"
        );
        std::fs::write(&path, "{\"prompt\": \"p\", \"chosen\": 3}\n").expect("write");
        let err = read_pairs(&path).expect_err("wrong type").to_string();
        assert!(err.contains("bad.jsonl:1:"), "{err}");
    }
}
