//! Checkpoint directories, written atomically: files go to a temporary directory, are synced,
//! and the directory is renamed into place; only then does the `latest` pointer (itself written
//! atomically) move to it. A crash at any moment leaves the last good checkpoint intact.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::PolicyError;

/// A series of checkpoints `step-NNNNNNNN/` under one directory.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    /// How many checkpoints to keep (older ones are removed).
    keep: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |e| PolicyError::io(path, e)
}

impl Checkpointer {
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Checkpointer {
        Checkpointer {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(step: usize) -> String {
        format!("step-{step:08}")
    }

    /// Writes checkpoint `step`: `write` fills the given (temporary) directory.
    pub fn save(
        &self,
        step: usize,
        write: impl FnOnce(&Path) -> Result<(), PolicyError>,
    ) -> Result<PathBuf, PolicyError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let name = Self::name(step);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let result = write(&tmp).and_then(|()| {
            for entry in fs::read_dir(&tmp).map_err(io(&tmp))? {
                let path = entry.map_err(io(&tmp))?.path();
                fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let target = self.dir.join(&name);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        fs::rename(&tmp, &target).map_err(io(&target))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let pointer = self.dir.join("latest");
        ponder_datagen::io::write_atomic(&pointer, name.as_bytes()).map_err(io(&pointer))?;
        self.prune()?;
        Ok(target)
    }

    /// The latest complete checkpoint: its step and directory.
    pub fn latest(&self) -> Result<Option<(usize, PathBuf)>, PolicyError> {
        let pointer = self.dir.join("latest");
        let name = match fs::read_to_string(&pointer) {
            Ok(n) => n.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PolicyError::io(&pointer, e)),
        };
        let step = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| PolicyError::Format(format!("{}: `{name}` names no checkpoint", pointer.display())))?;
        let dir = self.dir.join(&name);
        if !dir.is_dir() {
            return Err(PolicyError::Format(format!(
                "{}: points at {}, which does not exist",
                pointer.display(),
                dir.display()
            )));
        }
        Ok(Some((step, dir)))
    }

    fn prune(&self) -> Result<(), PolicyError> {
        let mut steps: Vec<(usize, PathBuf)> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
                Some((step, e.path()))
            })
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(self.keep);
        for (_, path) in steps.into_iter().take(excess) {
            fs::remove_dir_all(&path).map_err(io(&path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_leave_the_last_checkpoint_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Checkpointer::new(dir.path().join("ckpt"), 2);
        assert_eq!(c.latest().expect("reads"), None);
        for step in [10, 20, 30] {
            c.save(step, |d| {
                fs::write(d.join("a.txt"), step.to_string()).map_err(|e| PolicyError::io(d, e))
            })
            .expect("saves");
        }
        let (step, path) = c.latest().expect("reads").expect("some");
        assert_eq!(step, 30);
        assert_eq!(fs::read_to_string(path.join("a.txt")).expect("read"), "30");
        assert!(!dir.path().join("ckpt/step-00000010").exists(), "pruned");
        assert!(dir.path().join("ckpt/step-00000020").exists());
        let failed = c.save(40, |_| Err(PolicyError::Format("disk full".into())));
        assert!(failed.is_err());
        assert_eq!(c.latest().expect("reads").expect("some").0, 30);
        assert_eq!(
            fs::read_dir(dir.path().join("ckpt")).expect("dir").count(),
            3,
            "no temporary left"
        );
    }
}
