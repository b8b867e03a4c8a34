//! `cargo xtask`: the project's own commands.
//!
//! - `cargo xtask pipeline [ARGS]`: the main job, `ponder run configs/default.toml [ARGS]`.
//! - `cargo xtask sweep FILE`: an ablation sweep.
//! - `cargo xtask bench`: speed benchmarks, side by side with the PyTorch reference.
//! - `cargo xtask ci`: every check, cheapest first (what `.ci/run` runs).

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(mut command: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = command.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs the `ponder` binary (release build) with the given arguments.
fn ponder(args: &[String], what: &str) -> Result<()> {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "ponder-runtime",
        "--bin",
        "ponder",
        "--",
    ])
    .args(args);
    status(c, what)
}

fn run(args: &[String]) -> Result<()> {
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &[][..]),
    };
    match command {
        "pipeline" => {
            let mut a = vec!["run".to_string(), "configs/default.toml".to_string()];
            a.extend(rest.iter().cloned());
            ponder(&a, "ponder run configs/default.toml")
        }
        "sweep" => {
            let Some(file) = rest.first() else {
                bail!("usage: cargo xtask sweep configs/sweeps/NAME.toml");
            };
            let mut a = vec!["sweep".to_string(), file.clone()];
            a.extend(rest[1..].iter().cloned());
            ponder(&a, &format!("ponder sweep {file}"))
        }
        "bench" => {
            let mut a = vec!["bench".to_string()];
            a.extend(rest.iter().cloned());
            ponder(&a, "ponder bench")
        }
        "ci" => ci(),
        "hf-check" => hf_check(true),
        _ => {
            eprintln!("usage: cargo xtask <pipeline|sweep FILE|bench|ci|hf-check>");
            if command == "help" {
                Ok(())
            } else {
                bail!("unknown command `{command}`")
            }
        }
    }
}

fn ci() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    status(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    status(clippy, "cargo clippy -D warnings")?;
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    status(test, "cargo test --workspace")?;
    hf_check(false)
}

/// Loads ponder's Hugging Face export in `transformers` and compares logits, when Python has
/// `transformers` and `torch` (`pip install transformers torch`). `required` makes their
/// absence an error.
fn hf_check(required: bool) -> Result<()> {
    let available = Command::new("python3")
        .args(["-c", "import transformers, torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        if required {
            bail!("python3 cannot import transformers and torch: pip install transformers torch");
        }
        eprintln!("xtask: hf-check skipped (python3 has no transformers/torch)");
        return Ok(());
    }
    let mut test = cargo();
    test.args([
        "test",
        "--package",
        "ponder-policy-init",
        "--test",
        "hf",
        "--",
        "--ignored",
    ]);
    status(test, "transformers logit check")
}
