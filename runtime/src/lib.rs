//! # ponder-runtime
//!
//! The only crate that reads TOML: the config schema, the component [`registry`], pipelines and
//! run directories, and the `ponder` binary.

pub mod bench;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod pipeline;
pub mod plan;
pub mod plots;
pub mod progress;
pub mod registry;
pub mod results;
pub mod run_dir;
pub mod serve;
pub mod stages;
pub mod sweep;
pub mod view;

pub use config::{Layers, RunConfig};

/// Runs a future to completion on a fresh single-threaded tokio runtime (stages are
/// synchronous; remote policies and reward models need a runtime for their HTTP clients).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(future),
        Err(_) => futures::executor::block_on(future),
    }
}
pub use config_error::{ConfigError, ConfigErrors};
pub use registry::{Category, Kind, Registry, Spec};
