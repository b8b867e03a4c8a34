use std::process::ExitCode;

fn main() -> ExitCode {
    ponder_runtime::cli::main_with(ponder_runtime::Registry::builtin())
}
