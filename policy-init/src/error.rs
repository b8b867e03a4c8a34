//! Errors of the policy crate.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not what it should be (checkpoint, config.json, tokenizer.json).
    #[error("{0}")]
    Format(String),
    /// Settings that do not make a model or a run.
    #[error("{0}")]
    Config(String),
    /// A remote endpoint failed or answered something unusable.
    #[error("remote policy: {0}")]
    Remote(String),
    /// Training diverged (NaN or exploding loss); the last good checkpoint is intact.
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error(transparent)]
    Task(#[from] ponder_datagen::TaskError),
    #[error(transparent)]
    Dataset(#[from] ponder_datagen::DatasetError),
}

impl PolicyError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
