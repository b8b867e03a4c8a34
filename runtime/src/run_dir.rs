//! A run directory: `config.toml` (resolved), `manifest.json`, `metrics.jsonl`, `log.txt`,
//! `data/`, `checkpoints/`, `policy/`, `stages/*.json` (one record per finished stage),
//! `results.json`, `report.md`, `plots/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ponder_datagen::io::write_atomic;
use serde::{Deserialize, Serialize};

/// What a finished stage left: its results and wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub results: serde_json::Value,
    pub seconds: f64,
    /// The commit checked out when the stage ran (unknown outside a git checkout, and for
    /// records written before ponder kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn data(&self, file: &str) -> PathBuf {
        self.root.join("data").join(file)
    }

    pub fn checkpoints(&self, stage: &str) -> PathBuf {
        self.root.join("checkpoints").join(stage)
    }

    pub fn policy(&self, name: &str) -> PathBuf {
        self.root.join("policy").join(name)
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    fn stage_file(&self, stage: &str) -> PathBuf {
        self.root.join("stages").join(format!("{stage}.json"))
    }

    /// Whether a stage has its record (without reading it).
    pub fn has_record(&self, stage: &str) -> bool {
        self.stage_file(stage).exists()
    }

    /// The record of a finished stage, if it finished.
    pub fn finished(&self, stage: &str) -> anyhow::Result<Option<StageRecord>> {
        let path = self.stage_file(stage);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn record(&self, record: &StageRecord) -> anyhow::Result<()> {
        let path = self.stage_file(&record.stage);
        let text = serde_json::to_string_pretty(record)?;
        write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes a JSON file atomically.
    pub fn write_json(&self, relative: &str, value: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.path(relative);
        let text = serde_json::to_string_pretty(value)?;
        write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// All finished stages' records, by name.
    pub fn records(&self, stages: &[String]) -> anyhow::Result<BTreeMap<String, StageRecord>> {
        let mut out = BTreeMap::new();
        for s in stages {
            if let Some(r) = self.finished(s)? {
                out.insert(s.clone(), r);
            }
        }
        Ok(out)
    }
}

/// Exclusive use of a run directory by one process, held until it is dropped. The operating
/// system releases it when the process ends, however it ends, so a killed run leaves no stale
/// lock behind.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

impl RunDir {
    /// Takes the directory's lock (`run.lock`), or fails at once, naming the directory and the
    /// process that holds it, if another `ponder run` writes to it.
    pub fn lock(&self) -> anyhow::Result<RunLock> {
        let path = self.path("run.lock");
        let mut file = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "{} is in use by another run ({}): wait for it to finish, or give this run another run.name",
                    self.root.display(),
                    if holder.trim().is_empty() {
                        "process unknown".to_string()
                    } else {
                        format!("process {}", holder.trim())
                    }
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        use std::io::Write;
        file.set_len(0).with_context(|| format!("writing {}", path.display()))?;
        write!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// Removes a directory if it exists.
pub fn clear_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_run_directory_refuses_a_second_run_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path());
        let held = run.lock().expect("first lock");
        let err = run.lock().expect_err("second lock").to_string();
        assert!(err.contains("in use by another run"), "{err}");
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(held);
        run.lock().expect("free again");
    }

    #[test]
    fn a_stage_record_reads_back_with_the_same_floats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(dir.path().join("stages")).expect("stages");
        // 0.9096061216121203 came back one ulp off (…204) before exact float parsing, so a
        // resumed pipeline's results.json differed from an uninterrupted run's.
        let mut values = vec![0.9096061216121203_f64, 0.1 + 0.2, 1.0 / 3.0, 6.02214076e23, 5e-324];
        let mut x = 0.5_f64;
        for _ in 0..2000 {
            x = (x * 3.999_999 * (1.0 - x)).clamp(1e-9, 1.0 - 1e-9);
            values.push(x);
        }
        let record = StageRecord {
            stage: "init".into(),
            results: serde_json::json!({ "values": values }),
            seconds: 12.345_678_901_234_567,
            commit: None,
        };
        run.record(&record).expect("write");
        let back = run.finished("init").expect("read").expect("recorded");
        assert_eq!(back.results, record.results);
        assert_eq!(back.seconds.to_bits(), record.seconds.to_bits());
    }
}
