//! `ponder-extended`: the `ponder` command line with this crate's kinds registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut registry = ponder_runtime::Registry::builtin();
    if let Err(e) = ponder_example_extension::register(&mut registry) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    ponder_runtime::cli::main_with(registry)
}
