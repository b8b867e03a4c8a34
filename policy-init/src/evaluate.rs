//! Held-out evaluation of a policy with a task's verifier: greedy pass@1, sampled pass@k
//! (unbiased estimator), majority vote, with confidence intervals.

use std::collections::HashMap;

use ponder_datagen::{Problem, Task, Trace};
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::eval::{Estimate, bootstrap_mean, pass_at_k, wilson};
use crate::policy::{GenRequest, Policy, Sampling, Stop};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Samples per problem for pass@k and maj@k (0 skips sampling).
    pub samples: usize,
    /// The k of pass@k and maj@k to report (each at most `samples`).
    pub ks: Vec<usize>,
    pub temperature: f32,
    pub max_tokens: usize,
    pub seed: u64,
    /// Problems per `generate` call.
    pub batch_problems: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            samples: 32,
            ks: vec![1, 8, 32],
            temperature: 1.0,
            max_tokens: 256,
            seed: 0,
            batch_problems: 16,
        }
    }
}

/// One problem's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemOutcome {
    pub id: String,
    pub greedy_correct: bool,
    /// Right samples out of `samples`.
    pub correct_samples: usize,
    pub samples: usize,
    pub majority_correct: Option<bool>,
    /// The greedy trace as generated (what `ponder view` shows before and after RL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub greedy_text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub problems: usize,
    /// Greedy decoding, with a Wilson interval.
    pub pass1_greedy: Estimate,
    /// pass@k from the samples (unbiased estimator), bootstrap intervals over problems.
    pub pass_at: Vec<(usize, Estimate)>,
    /// Majority vote over the first k samples.
    pub maj_at: Vec<(usize, Estimate)>,
    /// Share of greedy traces that ended with a readable answer.
    pub well_formed: f64,
    /// Mean generated tokens of a greedy trace.
    pub mean_trace_tokens: f64,
    /// What a random guess scores on these problems.
    pub chance_level: f64,
    pub outcomes: Vec<ProblemOutcome>,
}

impl EvalReport {
    pub fn pass_at(&self, k: usize) -> Option<Estimate> {
        self.pass_at.iter().find(|(kk, _)| *kk == k).map(|(_, e)| *e)
    }

    pub fn maj_at(&self, k: usize) -> Option<Estimate> {
        self.maj_at.iter().find(|(kk, _)| *kk == k).map(|(_, e)| *e)
    }

    /// A compact JSON summary (no per-problem outcomes).
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "problems": self.problems,
            "pass@1_greedy": self.pass1_greedy.value,
            "well_formed": self.well_formed,
            "mean_trace_tokens": self.mean_trace_tokens,
            "chance_level": self.chance_level,
        });
        for (k, e) in &self.pass_at {
            v[format!("pass@{k}")] = serde_json::json!(e.value);
        }
        for (k, e) in &self.maj_at {
            v[format!("maj@{k}")] = serde_json::json!(e.value);
        }
        v
    }
}

/// The answer most samples gave (by the task's answer key; ties go to the earliest), and
/// whether it is right.
pub fn majority_vote(task: &dyn Task, problem: &Problem, traces: &[Trace]) -> Result<Option<bool>, PolicyError> {
    let mut counts: HashMap<String, (usize, usize, String)> = HashMap::new();
    for (i, t) in traces.iter().enumerate() {
        let Some(answer) = &t.answer else { continue };
        let Some(key) = task.answer_key(problem, answer) else {
            continue;
        };
        let e = counts.entry(key).or_insert((0, i, answer.clone()));
        e.0 += 1;
    }
    let best = counts.into_values().max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    match best {
        Some((_, _, answer)) => Ok(Some(task.check_answer(problem, &answer)?)),
        None => Ok(None),
    }
}

/// Evaluates a policy on problems: greedy, then `samples` sampled traces per problem.
pub async fn evaluate(
    policy: &dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    settings: &EvalSettings,
) -> Result<EvalReport, PolicyError> {
    let mut outcomes = Vec::with_capacity(problems.len());
    let mut well_formed = 0usize;
    let mut greedy_tokens = 0usize;
    let mut sampled: Vec<Vec<Trace>> = Vec::with_capacity(problems.len());
    for (chunk_index, chunk) in problems.chunks(settings.batch_problems.max(1)).enumerate() {
        let mut requests = Vec::new();
        for (i, p) in chunk.iter().enumerate() {
            let problem_seed = settings.seed ^ ((chunk_index * 100_003 + i) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            requests.push(GenRequest::new(
                &p.prompt,
                Stop::TraceEnd,
                settings.max_tokens,
                Sampling::greedy(),
                problem_seed,
            ));
            let sampling = Sampling {
                temperature: settings.temperature,
                ..Sampling::default()
            };
            for s in 0..settings.samples {
                requests.push(GenRequest::new(
                    &p.prompt,
                    Stop::TraceEnd,
                    settings.max_tokens,
                    sampling,
                    problem_seed.wrapping_add(s as u64 + 1),
                ));
            }
        }
        let generations = policy.generate(&requests).await?;
        let per = 1 + settings.samples;
        for (i, p) in chunk.iter().enumerate() {
            let group = &generations[i * per..(i + 1) * per];
            let greedy = Trace::parse(&group[0].text);
            let verdict = task.verify(p, &greedy)?;
            well_formed += usize::from(verdict.well_formed);
            greedy_tokens += group[0].tokens();
            let traces: Vec<Trace> = group[1..].iter().map(|g| Trace::parse(&g.text)).collect();
            let mut correct = 0;
            for t in &traces {
                correct += usize::from(task.verify(p, t)?.correct);
            }
            outcomes.push(ProblemOutcome {
                id: p.id.clone(),
                greedy_correct: verdict.correct,
                correct_samples: correct,
                samples: settings.samples,
                majority_correct: None,
                greedy_text: group[0].text.clone(),
            });
            sampled.push(traces);
        }
    }
    let n = problems.len();
    let greedy_right = outcomes.iter().filter(|o| o.greedy_correct).count();
    let mut pass_at = Vec::new();
    let mut maj_at = Vec::new();
    for &k in settings.ks.iter().filter(|&&k| k >= 1 && k <= settings.samples) {
        let scores: Vec<f64> = outcomes
            .iter()
            .map(|o| pass_at_k(o.samples, o.correct_samples, k))
            .collect();
        pass_at.push((k, bootstrap_mean(&scores, settings.seed ^ k as u64)));
        let mut votes = Vec::with_capacity(n);
        for ((p, traces), outcome) in problems.iter().zip(&sampled).zip(outcomes.iter_mut()) {
            let right = majority_vote(task, p, &traces[..k])?.unwrap_or(false);
            if k == settings.samples {
                outcome.majority_correct = Some(right);
            }
            votes.push(f64::from(u8::from(right)));
        }
        maj_at.push((k, bootstrap_mean(&votes, settings.seed ^ (k as u64) << 8)));
    }
    let chance = problems.iter().map(|p| task.chance_level(p)).sum::<f64>() / n.max(1) as f64;
    Ok(EvalReport {
        problems: n,
        pass1_greedy: wilson(greedy_right as f64, n),
        pass_at,
        maj_at,
        well_formed: well_formed as f64 / n.max(1) as f64,
        mean_trace_tokens: greedy_tokens as f64 / n.max(1) as f64,
        chance_level: chance,
        outcomes,
    })
}
