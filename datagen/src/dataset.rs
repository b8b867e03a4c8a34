//! JSONL datasets: one example per line, written atomically, read as a stream whose every
//! error names the file and the line. Train/test splits are decided per problem by a seeded
//! hash of its id, so no problem is ever in both.
//!
//! A line holds the problem's fields plus `completion` (the rendered trace) and `style`: the
//! `prompt`/`completion` pair is the shape Hugging Face TRL's SFT trainer reads.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::io::AtomicFile;
use crate::task::{Task, TaskError, TaskRng, TraceStyle};
use crate::trace::{Problem, Trace, stable_hash};

/// One training example: a problem and an expert trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    #[serde(flatten)]
    pub problem: Problem,
    /// Text between the prompt and the completion that the model reads but is not trained to
    /// write (earlier attempts, for revision data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The trace text the model learns to write (steps and answer line).
    pub completion: String,
    /// The trace style, e.g. `search` or `retry:0.2`.
    #[serde(default)]
    pub style: String,
}

impl Example {
    pub fn trace(&self) -> Trace {
        Trace::parse(&self.completion)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Which side of the train/test split a problem is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
    /// Both sides (no filtering).
    All,
}

impl Split {
    /// The side of `problem_id` for a split seed and test fraction: a pure function of the
    /// three, so the same problem always lands on the same side.
    pub fn of(problem_id: &str, seed: u64, test_fraction: f64) -> Split {
        let mut bytes = seed.to_le_bytes().to_vec();
        bytes.extend_from_slice(problem_id.as_bytes());
        let u = (stable_hash(&bytes) >> 11) as f64 / (1u64 << 53) as f64;
        if u < test_fraction { Split::Test } else { Split::Train }
    }

    pub fn contains(self, problem_id: &str, seed: u64, test_fraction: f64) -> bool {
        self == Split::All || Split::of(problem_id, seed, test_fraction) == self
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateSpec {
    pub n: usize,
    pub seed: u64,
    pub style: TraceStyle,
    pub split: Split,
    /// The split's own seed: keep it fixed across datasets of one experiment so that the
    /// train and test sides agree.
    pub split_seed: u64,
    pub test_fraction: f64,
    /// Overrides the task's configured difficulty level.
    pub difficulty: Option<u32>,
}

impl GenerateSpec {
    pub fn new(n: usize, seed: u64, style: TraceStyle) -> Self {
        GenerateSpec {
            n,
            seed,
            style,
            split: Split::All,
            split_seed: 0,
            test_fraction: 0.1,
            difficulty: None,
        }
    }
}

/// A deterministic stream of examples: the same task settings and spec give the same examples.
/// Problems on the other side of the split are skipped (it gives up after 1000 skips in a row).
pub fn generate<'a>(
    task: &'a dyn Task,
    spec: &'a GenerateSpec,
) -> impl Iterator<Item = Result<Example, TaskError>> + 'a {
    let mut rng = TaskRng::seed_from_u64(spec.seed);
    let mut produced = 0usize;
    std::iter::from_fn(move || {
        if produced >= spec.n {
            return None;
        }
        let mut skipped = 0;
        loop {
            let problem = match task.sample(&mut rng, spec.difficulty) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            if !spec.split.contains(&problem.id, spec.split_seed, spec.test_fraction) {
                skipped += 1;
                if skipped > 1000 {
                    return Some(Err(TaskError::BadSettings {
                        task: task.name().into(),
                        reason: format!("1000 problems in a row fell outside the {:?} split", spec.split),
                    }));
                }
                continue;
            }
            produced += 1;
            let context = match spec.style {
                TraceStyle::Revision { attempts } => {
                    let wanted = rng.random_range(0..=attempts);
                    let mut wrong = Vec::new();
                    for _ in 0..wanted {
                        match task.wrong_attempt(&problem, &mut rng) {
                            Ok(Some(t)) => wrong.push(t),
                            Ok(None) => break,
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    (!wrong.is_empty()).then(|| crate::trace::revision_context(&wrong))
                }
                _ => None,
            };
            return Some(task.expert_trace(&problem, spec.style, &mut rng).map(|trace| Example {
                completion: trace.render(),
                context,
                style: spec.style.to_string(),
                problem,
            }));
        }
    })
}

/// Writes records as JSONL, atomically: the file appears whole or not at all. Returns how
/// many lines were written.
pub fn write_jsonl<T: Serialize, E>(path: &Path, records: impl IntoIterator<Item = Result<T, E>>) -> Result<usize, E>
where
    E: From<DatasetError>,
{
    let io_err = |source: io::Error| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = AtomicFile::create(path).map_err(io_err)?;
    let mut count = 0;
    for record in records {
        let record = record?;
        serde_json::to_writer(&mut file, &record).map_err(|e| io_err(io::Error::other(e)))?;
        file.write_all(b"\n").map_err(io_err)?;
        count += 1;
    }
    file.commit().map_err(io_err)?;
    Ok(count)
}

/// Streams the records of a JSONL file; blank lines are skipped; every error names the file
/// and the 1-based line.
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
) -> Result<impl Iterator<Item = Result<T, DatasetError>> + use<T>, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let path = path.to_path_buf();
    let mut lines = BufReader::new(file).lines().enumerate();
    Ok(std::iter::from_fn(move || {
        loop {
            let (index, line) = lines.next()?;
            let line_no = index + 1;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(DatasetError::Line {
                        path: path.clone(),
                        line: line_no,
                        message: format!("cannot read the line: {e}"),
                    }));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(serde_json::from_str(&line).map_err(|e| DatasetError::Line {
                path: path.clone(),
                line: line_no,
                message: format!("not a valid record: {e}"),
            }));
        }
    }))
}

/// Reads a whole dataset of examples.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, DatasetError> {
    read_jsonl(path)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::countdown::{Countdown, CountdownConfig};

    #[test]
    fn splits_are_disjoint_and_seeded() {
        let ids: Vec<String> = (0..2000).map(|i| format!("p{i}")).collect();
        let test: Vec<&String> = ids.iter().filter(|id| Split::of(id, 1, 0.2) == Split::Test).collect();
        let share = test.len() as f64 / ids.len() as f64;
        assert!((0.15..0.25).contains(&share), "{share}");
        let other: Vec<&String> = ids.iter().filter(|id| Split::of(id, 2, 0.2) == Split::Test).collect();
        assert_ne!(test, other);
    }

    #[test]
    fn generation_is_deterministic_and_respects_the_split() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let mut spec = GenerateSpec::new(200, 5, TraceStyle::Search);
        spec.split = Split::Train;
        spec.test_fraction = 0.3;
        let a: Vec<Example> = generate(&task, &spec).collect::<Result<_, _>>().expect("gen");
        let b: Vec<Example> = generate(&task, &spec).collect::<Result<_, _>>().expect("gen");
        assert_eq!(a, b);
        assert!(a.iter().all(|e| Split::of(&e.problem.id, 0, 0.3) == Split::Train));
        spec.split = Split::Test;
        let t: Vec<Example> = generate(&task, &spec).collect::<Result<_, _>>().expect("gen");
        assert!(t.iter().all(|e| a.iter().all(|x| x.problem.id != e.problem.id)));
    }

    #[test]
    fn read_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.jsonl");
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let spec = GenerateSpec::new(3, 1, TraceStyle::Optimal);
        let n = write_jsonl::<_, DatasetError>(&path, generate(&task, &spec).map(|r| r.map_err(DatasetError::from)))
            .expect("write");
        assert_eq!(n, 3);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("\n{\"id\": 3}\n");
        std::fs::write(&path, text).expect("write");
        let results: Vec<Result<Example, DatasetError>> = read_jsonl(&path).expect("opens").collect();
        assert_eq!(results.len(), 4);
        let err = results[3].as_ref().expect_err("bad line").to_string();
        assert!(err.contains("d.jsonl:5:"), "{err}");
    }
}
