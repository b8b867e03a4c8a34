//! # ponder-runtime
//!
//! The only crate that reads TOML: the config schema, the component [`registry`], pipelines and
//! run directories, and the `ponder` binary.

pub mod builtin;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod plan;
pub mod registry;

pub use config::{Layers, RunConfig};
pub use config_error::{ConfigError, ConfigErrors};
pub use registry::{Category, Kind, Registry, Spec};
