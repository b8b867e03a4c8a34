//! `metrics.jsonl`: one JSON object per line, appended as training goes. On resume, records a
//! stage wrote after its last checkpoint are dropped (the resumed run writes them again,
//! identically), so the file never holds a step twice.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::PolicyError;

#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: Option<File>,
    stage: String,
}

impl MetricsLog {
    /// A log that writes nothing (for tests and throwaway runs).
    pub fn disabled(stage: &str) -> MetricsLog {
        MetricsLog {
            path: PathBuf::new(),
            file: None,
            stage: stage.to_string(),
        }
    }

    /// Opens the log for `stage`. With `resume_after = Some(step)`, this stage's records past
    /// `step` are removed first; with `None`, all of this stage's records are (a fresh start).
    pub fn open(path: &Path, stage: &str, resume_after: Option<usize>) -> Result<MetricsLog, PolicyError> {
        let io = |e| PolicyError::io(path, e);
        if path.exists() {
            let kept: Vec<String> = BufReader::new(File::open(path).map_err(io)?)
                .lines()
                .map_while(Result::ok)
                .filter(|line| {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        return false; // a torn last line from a crash
                    };
                    if v.get("stage").and_then(|s| s.as_str()) != Some(stage) {
                        return true;
                    }
                    match (resume_after, v.get("step").and_then(|s| s.as_u64())) {
                        (Some(limit), Some(step)) => step as usize <= limit,
                        _ => false,
                    }
                })
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            ponder_datagen::io::write_atomic(path, text.as_bytes()).map_err(io)?;
        } else if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: Some(file),
            stage: stage.to_string(),
        })
    }

    /// Drops this stage's records past `step` (a training run rewinding to it).
    pub fn rewind_to(&mut self, step: usize) -> Result<(), PolicyError> {
        if self.file.is_none() {
            return Ok(());
        }
        self.file = None;
        *self = MetricsLog::open(&self.path, &self.stage, Some(step))?;
        Ok(())
    }

    /// Appends one record; `stage` is added.
    pub fn write(&mut self, mut record: serde_json::Value) -> Result<(), PolicyError> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        if let Some(map) = record.as_object_mut() {
            map.insert("stage".into(), serde_json::Value::String(self.stage.clone()));
        }
        let mut line = record.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| PolicyError::io(&self.path, e))
    }
}
