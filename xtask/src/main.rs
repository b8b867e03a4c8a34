//! `cargo xtask`: the project's own commands.
//!
//! - `cargo xtask pipeline [ARGS]`: the main job, `ponder run configs/default.toml [ARGS]`.
//! - `cargo xtask sweep FILE`: an ablation sweep.
//! - `cargo xtask bench`: speed benchmarks, side by side with the PyTorch reference.
//! - `cargo xtask paper [SWEEP...]`: the default pipeline, every shipped sweep (or the named
//!   ones) and the seeds sweep, one report over all of them, and `docs/reference-results.md`.
//! - `cargo xtask ci`: every check, cheapest first (what `.ci/run` runs).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

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
        "paper" => paper(rest),
        "ci" => ci(),
        "hf-check" => hf_check(true),
        _ => {
            eprintln!("usage: cargo xtask <pipeline|sweep FILE|bench|paper [SWEEP...]|ci|hf-check>");
            if command == "help" {
                Ok(())
            } else {
                bail!("unknown command `{command}`")
            }
        }
    }
}

/// The shipped sweeps to run: every `configs/sweeps/*.toml`, or the named ones; `seeds` last.
fn paper_sweeps(names: &[String]) -> Result<Vec<PathBuf>> {
    let dir = Path::new("configs/sweeps");
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    all.sort_by_key(|p| (p.file_stem().is_some_and(|s| s == "seeds"), p.clone()));
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|p| p.file_stem().is_some_and(|s| s == n.as_str()))
                .cloned()
                .with_context(|| format!("no sweep `{n}` in {}", dir.display()))
        })
        .collect()
}

/// How many pipelines a sweep runs (its shared base included), from its dry run's plan.
fn sweep_runs(file: &Path) -> Result<usize> {
    let out = Command::new(ponder_exe())
        .args(["sweep", &file.to_string_lossy(), "--dry-run"])
        .output()
        .with_context(|| format!("planning {}", file.display()))?;
    if !out.status.success() {
        bail!("{}: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_end().ends_with(".toml"))
        .count())
}

fn ponder_exe() -> PathBuf {
    Path::new("target/release/ponder").to_path_buf()
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `cargo xtask paper`: every figure ponder publishes, from scratch or resumed, then
/// `docs/reference-results.md`.
fn paper(names: &[String]) -> Result<()> {
    let started = Instant::now();
    let mut build = cargo();
    build.args(["build", "--release", "--package", "ponder-runtime", "--bin", "ponder"]);
    status(build, "cargo build --release")?;
    let sweeps = paper_sweeps(names)?;
    let mut planned = Vec::new();
    for file in &sweeps {
        planned.push((file, sweep_runs(file)?));
    }
    let pipelines = 1 + planned.iter().map(|(_, n)| n).sum::<usize>();
    eprintln!(
        "xtask paper: {pipelines} pipelines, one at a time: the default, then {}",
        planned
            .iter()
            .map(|(f, n)| format!("{} ({n})", f.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let default_dir = Path::new("runs/default");
    // One pipeline's stage seconds on this machine, once the default has run here.
    let pipeline_seconds = || read_json(&default_dir.join("manifest.json")).ok()?["wall_seconds"].as_f64();
    match pipeline_seconds() {
        Some(s) => eprintln!(
            "xtask paper: at most about {:.1} hours here (the default's stages took {s:.0} s in {}; every sweep run is a pipeline of the default's size or smaller, and finished stages are skipped)",
            s * pipelines as f64 / 3600.0,
            default_dir.display()
        ),
        None => eprintln!(
            "xtask paper: the estimate follows the default run, which measures a pipeline's time on this machine"
        ),
    }
    let run_default = |what: &str| -> Result<()> {
        let mut c = Command::new(ponder_exe());
        c.args(["run", "configs/default.toml", "--resume"]);
        status(c, what)
    };
    run_default("ponder run configs/default.toml")?;
    if let Some(s) = pipeline_seconds() {
        eprintln!(
            "xtask paper: the default took {s:.0} s of stages; the sweeps' {} pipelines take at most about {:.1} hours more",
            pipelines - 1,
            s * (pipelines - 1) as f64 / 3600.0
        );
    }
    for (file, _) in &planned {
        let mut c = Command::new(ponder_exe());
        c.args(["sweep", &file.to_string_lossy()]);
        status(c, &format!("ponder sweep {}", file.display()))?;
    }
    // The report again, now that every sweep's table is there.
    let report_record = default_dir.join("stages/report.json");
    if report_record.exists() {
        std::fs::remove_file(&report_record).with_context(|| format!("removing {}", report_record.display()))?;
    }
    run_default("ponder run configs/default.toml (the report over every sweep)")?;
    let seconds = started.elapsed().as_secs_f64();
    let manifest = read_json(&default_dir.join("manifest.json"))?;
    let report = std::fs::read_to_string(default_dir.join("report.md"))
        .with_context(|| format!("reading {}/report.md", default_dir.display()))?;
    let machine = &manifest["machine"];
    let mut doc = String::new();
    doc.push_str("# Reference results\n\n");
    // The commits the default run's stages ran at (the manifest's, which a later invocation
    // does not relabel), and the seeds' runs' where the seeds sweep ran.
    let short = |c: &str| c.chars().take(7).collect::<String>();
    let mut made_at: Vec<(String, Vec<String>)> = Vec::new();
    let started_at = manifest["git_commit"].as_str().unwrap_or("?");
    for stage in manifest["stages"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        // Stages recorded before ponder kept their commit ran when the run started.
        let c = short(manifest["stage_commits"][&stage].as_str().unwrap_or(started_at));
        match made_at.iter_mut().find(|(k, _)| *k == c) {
            Some((_, stages)) => stages.push(stage),
            None => made_at.push((c, vec![stage])),
        }
    }
    let commits = match made_at.as_slice() {
        [] => format!("at commit `{}`", short(started_at)),
        [(c, _)] => format!("at commit `{c}`"),
        several => format!(
            "its stages at commits {}",
            several
                .iter()
                .map(|(c, stages)| format!("`{c}` ({})", stages.join(", ")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    doc.push_str(&format!(
        "Written by `cargo xtask paper{}` on {} from the default run made {commits} (the sweeps' runs name theirs in their `manifest.json`), on {} ({} cores, {} threads, {:.1} GiB), training at {:.0} tokens/s; {:.1} hours for this invocation, build included (runs finished earlier are reused). Compare a run of yours with these: the same commit and seeds give the same figures on a machine with the same thread count. The run directories (checkpoints, plots, logs) stay in `runs/`.\n\n",
        names.iter().map(|n| format!(" {n}")).collect::<String>(),
        command_line("date", &["-u", "+%Y-%m-%d"]),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["threads"],
        machine["memory_gib"].as_f64().unwrap_or(0.0),
        manifest["timings"]["init"]["/train_tokens_per_s"].as_f64().unwrap_or(0.0),
        seconds / 3600.0,
    ));
    // The report's text and tables; its images stay with the run.
    for line in report.lines().filter(|l| !l.trim_start().starts_with("![")) {
        let line = line
            .strip_prefix('#')
            .map(|rest| format!("##{rest}"))
            .unwrap_or_else(|| line.to_string());
        doc.push_str(&line);
        doc.push('\n');
    }
    let out = Path::new("docs/reference-results.md");
    std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("xtask paper: {:.0} s; wrote {}", seconds, out.display());
    Ok(())
}

fn ci() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    status(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    status(clippy, "cargo clippy -D warnings")?;
    // The libraries and binaries as `cargo xtask pipeline` builds them: without burn (the
    // tests above build it for their reference checks).
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--", "-D", "warnings"]);
    status(clippy, "cargo clippy -D warnings (without burn)")?;
    let mut test = cargo();
    // burn's backend is the reference the CPU transformer is tested against (the release
    // binary leaves it out unless asked).
    test.args(["test", "--workspace", "--features", "ponder-runtime/burn"]);
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
        "--features",
        "burn",
        "--test",
        "hf",
        "--",
        "--ignored",
    ]);
    status(test, "transformers logit check")
}
