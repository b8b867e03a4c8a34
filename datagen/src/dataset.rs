//! JSONL datasets: one example per line, written atomically, read as a stream whose every
//! error names the file and the line. The train/validation/test split is decided per problem
//! family (for countdown, the set of numbers) by a seeded hash, so no family is on two sides.
//!
//! A line holds the problem's fields plus `completion` (the rendered trace) and `style`: the
//! `prompt`/`completion` pair is the shape Hugging Face TRL's SFT trainer reads.

use std::collections::HashSet;
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

/// Which side of the train/validation/test split a problem is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    /// Held out for choosing settings; the test side is read once per final run.
    Validation,
    Test,
    /// Every side (no filtering).
    All,
}

/// How problems are divided into the three sides: by a seeded hash of the problem's family
/// (`Task::family`), so that problems of one family (for countdown, one set of numbers) are
/// all on one side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Splitter {
    /// The split's own seed: keep it fixed across datasets (and across the seeds of a
    /// seeds sweep) so that the sides agree.
    pub seed: u64,
    pub test_fraction: f64,
    pub validation_fraction: f64,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            seed: 0,
            test_fraction: 0.1,
            validation_fraction: 0.0,
        }
    }
}

impl Splitter {
    /// The side of a problem family: a pure function of the family and the splitter. The
    /// test side is the hash's lowest `test_fraction`, validation the next
    /// `validation_fraction`, so adding a validation side moves no family out of test.
    pub fn side(&self, family: &str) -> Split {
        let mut bytes = self.seed.to_le_bytes().to_vec();
        bytes.extend_from_slice(family.as_bytes());
        let u = (stable_hash(&bytes) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.test_fraction {
            Split::Test
        } else if u < self.test_fraction + self.validation_fraction {
            Split::Validation
        } else {
            Split::Train
        }
    }

    /// Whether a problem of `task` lies on `side`.
    pub fn contains(&self, side: Split, task: &dyn Task, problem: &Problem) -> bool {
        side == Split::All || self.side(&task.family(problem)) == side
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "validation" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            other => Err(format!("`{other}` is not train, validation, test or all")),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateSpec {
    pub n: usize,
    pub seed: u64,
    pub style: TraceStyle,
    pub split: Split,
    pub splitter: Splitter,
    /// Overrides the task's configured difficulty level.
    pub difficulty: Option<u32>,
    /// Every problem at most once in the stream (a repeated problem is skipped).
    pub distinct: bool,
    /// Problem ids to skip (for example problems another dataset keeps for itself).
    pub exclude: HashSet<String>,
}

impl GenerateSpec {
    pub fn new(n: usize, seed: u64, style: TraceStyle) -> Self {
        GenerateSpec {
            n,
            seed,
            style,
            split: Split::All,
            splitter: Splitter::default(),
            difficulty: None,
            distinct: false,
            exclude: HashSet::new(),
        }
    }
}

/// How many samples in a row may be skipped (other side of the split, repeated or excluded)
/// before the stream gives up: the space is then too small for what was asked.
const MAX_SKIPS_IN_A_ROW: usize = 20_000;

/// A deterministic stream of examples: the same task settings and spec give the same examples.
/// Problems on another side of the split, repeats (with `distinct`) and excluded problems are
/// skipped; after `MAX_SKIPS_IN_A_ROW` skips in a row the stream ends with an error that says
/// how many it produced.
pub fn generate<'a>(
    task: &'a dyn Task,
    spec: &'a GenerateSpec,
) -> impl Iterator<Item = Result<Example, TaskError>> + 'a {
    let mut rng = TaskRng::seed_from_u64(spec.seed);
    let mut produced = 0usize;
    let mut seen: HashSet<String> = HashSet::new();
    let mut failed = false;
    std::iter::from_fn(move || {
        if produced >= spec.n || failed {
            return None;
        }
        let mut skipped = 0;
        loop {
            let problem = match task.sample(&mut rng, spec.difficulty) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let wanted = spec.splitter.contains(spec.split, task, &problem)
                && !spec.exclude.contains(&problem.id)
                && (!spec.distinct || seen.insert(problem.id.clone()));
            if !wanted {
                skipped += 1;
                if skipped > MAX_SKIPS_IN_A_ROW {
                    failed = true;
                    return Some(Err(TaskError::BadSettings {
                        task: task.name().into(),
                        reason: format!(
                            "found only {produced} of the {} {}problems asked for on the {:?} side of the split \
                             ({MAX_SKIPS_IN_A_ROW} samples in a row were on another side, repeated or excluded): \
                             widen the task's ranges or ask for fewer",
                            spec.n,
                            if spec.distinct { "distinct " } else { "" },
                            spec.split
                        ),
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
        let splitter = Splitter {
            seed: 1,
            test_fraction: 0.2,
            validation_fraction: 0.1,
        };
        let ids: Vec<String> = (0..4000).map(|i| format!("p{i}")).collect();
        let share = |side: Split, s: &Splitter| ids.iter().filter(|id| s.side(id) == side).count() as f64 / 4000.0;
        assert!((0.17..0.23).contains(&share(Split::Test, &splitter)));
        assert!((0.07..0.13).contains(&share(Split::Validation, &splitter)));
        // Adding a validation side takes it from train, never from test.
        let no_validation = Splitter {
            validation_fraction: 0.0,
            ..splitter
        };
        assert!(
            ids.iter()
                .all(|id| (splitter.side(id) == Split::Test) == (no_validation.side(id) == Split::Test))
        );
        let reseeded = Splitter { seed: 2, ..splitter };
        let test = |s: &Splitter| ids.iter().filter(|id| s.side(id) == Split::Test).collect::<Vec<_>>();
        assert_ne!(test(&splitter), test(&reseeded));
    }

    #[test]
    fn generation_is_deterministic_and_keeps_families_on_one_side() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let splitter = Splitter {
            seed: 0,
            test_fraction: 0.3,
            validation_fraction: 0.2,
        };
        let side = |split: Split, n: usize| {
            let mut spec = GenerateSpec::new(n, 5, TraceStyle::Search);
            spec.split = split;
            spec.splitter = splitter;
            generate(&task, &spec)
                .collect::<Result<Vec<Example>, _>>()
                .expect("gen")
        };
        let train = side(Split::Train, 300);
        assert_eq!(train, side(Split::Train, 300));
        let families =
            |examples: &[Example]| -> HashSet<String> { examples.iter().map(|e| task.family(&e.problem)).collect() };
        let (validation, test) = (side(Split::Validation, 100), side(Split::Test, 100));
        let train_families = families(&train);
        assert!(families(&validation).is_disjoint(&train_families));
        assert!(families(&test).is_disjoint(&train_families));
        assert!(families(&test).is_disjoint(&families(&validation)));
        // Families are coarser than problems: some family has two problems in training.
        assert!(train_families.len() < train.len());
    }

    #[test]
    fn distinct_streams_repeat_no_problem_and_say_when_the_space_runs_out() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let mut spec = GenerateSpec::new(500, 3, TraceStyle::Optimal);
        spec.distinct = true;
        let examples: Vec<Example> = generate(&task, &spec).collect::<Result<_, _>>().expect("gen");
        let ids: HashSet<&str> = examples.iter().map(|e| e.problem.id.as_str()).collect();
        assert_eq!(ids.len(), 500);
        spec.exclude = ids.iter().take(100).map(|s| s.to_string()).collect();
        let again: Vec<Example> = generate(&task, &spec).collect::<Result<_, _>>().expect("gen");
        assert!(again.iter().all(|e| !spec.exclude.contains(&e.problem.id)));
        spec.n = 1_000_000;
        spec.exclude.clear();
        let err = generate(&task, &spec)
            .find_map(Result::err)
            .expect("the space runs out")
            .to_string();
        assert!(err.contains("distinct problems"), "{err}");
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
