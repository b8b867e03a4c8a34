//! # ponder-runtime
//!
//! The only crate that reads TOML: the config schema, the component [`registry`], pipelines and
//! run directories, and the `ponder` binary.

pub mod builtin;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod results;
pub mod run_dir;
pub mod stages;

pub use config::{Layers, RunConfig};
pub use config_error::{ConfigError, ConfigErrors};
pub use registry::{Category, Kind, Registry, Spec};
