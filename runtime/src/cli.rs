//! The `ponder` command line. A third-party binary builds its own [`Registry`] (the built-ins
//! plus its kinds) and calls [`main_with`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ponder_datagen::dataset::{GenerateSpec, Split, Splitter, generate, write_jsonl};
use ponder_datagen::{DatasetError, TraceStyle};

use crate::config::{Layers, parse_override_value, parse_task};
use crate::config_error::ConfigErrors;
use crate::registry::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "ponder",
    version,
    about = "Search and learning for reasoning models, o1-style"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a JSONL dataset of problems and expert traces.
    Datagen(DatagenArgs),
    /// Validate a run config and print its plan; exit 2 listing every error.
    Check {
        config: PathBuf,
        /// Override a config key, e.g. `--set search.width=8` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List every registered kind of every component.
    List,
    /// Serve a trained run over the OpenAI API (chat completions with a hidden chain of
    /// thought, completions, scoring, models, metrics).
    Serve {
        /// The run directory, e.g. runs/default.
        #[arg(long)]
        run: PathBuf,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// A config key over the run's config, e.g. `serve.concurrency=8`; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run an ablation sweep: a grid of configs, each a pipeline of its own, then a table and
    /// plots across the runs.
    Sweep {
        file: PathBuf,
        /// Write the runs' configs and print the plan, but run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only gather the finished runs' results into the table and plots.
        #[arg(long)]
        collect: bool,
    },
    /// Training and generation speed, side by side with the PyTorch reference when Python has
    /// torch; writes the figures as JSON.
    Bench {
        /// Model presets to measure.
        #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
        presets: Vec<String>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Alternating rounds of ponder and PyTorch; each figure is the best of its rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_reference: bool,
        #[arg(long, default_value = "runs/bench/bench.json")]
        out: PathBuf,
    },
    /// Write a run's (or a sweep folder's) interactive view, `DIR/view/index.html`: one
    /// self-contained page with the figures, the recorded search trees and RL before and after.
    View {
        /// A run directory (e.g. runs/default) or a sweep folder (e.g. runs/sweeps/seeds).
        dir: PathBuf,
        /// Then serve the page on loopback until Ctrl-C.
        #[arg(long)]
        serve: bool,
        #[arg(long, default_value_t = 8090)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
    /// Run a config's pipeline.
    Run {
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue an interrupted run from its last checkpoint.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DatagenArgs {
    /// Task kind (see `ponder list`); its settings come from `--set` or `--config`.
    #[arg(long, required_unless_present = "config")]
    pub task: Option<String>,
    /// Take the task from this run config's `[task]` section instead.
    #[arg(long, conflicts_with = "task")]
    pub config: Option<PathBuf>,
    /// A task setting (with `--task`: `numbers=4`) or config key (with `--config`:
    /// `task.numbers=4`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// How many examples.
    #[arg(long)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// optimal, search, retry or retry:RATE.
    #[arg(long, default_value = "optimal")]
    pub style: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only problems of this side of the split: train, validation, test or all. Sides
    /// are disjoint by problem family (for countdown, the set of numbers).
    #[arg(long, default_value = "all")]
    pub split: String,
    /// The split's own seed (keep it fixed across datasets of one experiment).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 0.0)]
    pub validation_fraction: f64,
    /// Every problem at most once.
    #[arg(long)]
    pub distinct: bool,
    /// Override the task's difficulty level.
    #[arg(long)]
    pub difficulty: Option<u32>,
}

/// Runs the command line with the given registry; returns the process exit code.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    match run_command(cli.command, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(errors)) => {
            eprint!("{errors}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug)]
pub enum Failure {
    Config(ConfigErrors),
    Other(anyhow::Error),
}

impl From<ConfigErrors> for Failure {
    fn from(e: ConfigErrors) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

pub fn run_command(command: Command, registry: &Registry) -> Result<(), Failure> {
    match command {
        Command::List => {
            print!("{}", list(registry));
            Ok(())
        }
        Command::Check { config, set } => {
            let layers = Layers::from_file(&config)?.with_process_env().with_overrides(&set);
            let run = layers.load(registry)?;
            eprint!("{}", crate::config_error::warning_lines(&config, &run.warnings));
            println!("{}: ok", config.display());
            print!("{}", crate::plan::describe(&run));
            Ok(())
        }
        Command::Run { config, set, resume } => {
            let layers = Layers::from_file(&config)?.with_process_env().with_overrides(&set);
            let run = layers.load(registry)?;
            eprint!("{}", crate::config_error::warning_lines(&config, &run.warnings));
            crate::pipeline::run(&run, registry, resume)
                .map(|_| eprintln!("ponder: run {} complete in {}", run.run.name, run.run_dir().display()))
                .map_err(Failure::Other)
        }
        Command::Datagen(args) => datagen(args, registry),
        Command::Bench {
            presets,
            seconds,
            rounds,
            no_reference,
            out,
        } => {
            let figures = crate::bench::run(&presets, seconds, rounds, !no_reference).map_err(Failure::Other)?;
            let text = serde_json::to_string_pretty(&figures).map_err(|e| Failure::Other(e.into()))?;
            ponder_datagen::io::write_atomic(&out, text.as_bytes()).map_err(|e| Failure::Other(e.into()))?;
            eprintln!("ponder bench: figures in {}", out.display());
            Ok(())
        }
        Command::Sweep { file, dry_run, collect } => {
            let sweep = crate::sweep::Sweep::load(&file, registry).map_err(Failure::Other)?;
            if dry_run {
                sweep.write_configs().map_err(Failure::Other)?;
                for r in sweep.bases.iter().chain(&sweep.runs) {
                    println!(
                        "{}",
                        sweep.dir.join("configs").join(format!("{}.toml", r.name)).display()
                    );
                }
                return Ok(());
            }
            if collect {
                print!("{}", sweep.collect().map_err(Failure::Other)?);
                return Ok(());
            }
            let exe = std::env::current_exe().map_err(|e| Failure::Other(e.into()))?;
            sweep.run(&exe).map_err(Failure::Other)
        }
        Command::View { dir, serve, port, host } => {
            if !serve {
                let path = crate::view::write(&dir, registry).map_err(Failure::Other)?;
                println!("{}", path.display());
                return Ok(());
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Other(e.into()))?;
            runtime
                .block_on(crate::view::serve(&dir, registry, &host, port))
                .map_err(Failure::Other)
        }
        Command::Serve { run, port, host, set } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Other(e.into()))?;
            runtime
                .block_on(crate::serve::serve(&run, registry, &set, &host, port))
                .map_err(Failure::Other)
        }
    }
}

/// The text of `ponder list`.
pub fn list(registry: &Registry) -> String {
    let mut out = String::new();
    let mut last = "";
    let listing = registry.listing();
    // Names in one column, wide enough for the longest (a third-party kind's may be long).
    let width = listing.iter().map(|(_, kind, _, _)| kind.len()).max().unwrap_or(0) + 2;
    for (category, kind, origin, description) in listing {
        if category != last {
            out.push_str(&format!("{category}:\n"));
            last = category;
        }
        let origin = if origin == "ponder" {
            String::new()
        } else {
            format!(" [{origin}]")
        };
        out.push_str(&format!("  {kind:<width$}{description}{origin}\n"));
    }
    out
}

fn datagen(args: DatagenArgs, registry: &Registry) -> Result<(), Failure> {
    let usage = |msg: String| Failure::Config(ConfigErrors::one(crate::config_error::ConfigError::new("", msg)));
    let style: TraceStyle = args.style.parse().map_err(|e: String| usage(format!("--style: {e}")))?;
    let split: Split = args.split.parse().map_err(|e: String| usage(format!("--split: {e}")))?;
    if !(0.0..1.0).contains(&args.test_fraction)
        || !(0.0..1.0).contains(&args.validation_fraction)
        || args.test_fraction + args.validation_fraction >= 1.0
    {
        return Err(usage(
            "--test-fraction, --validation-fraction: each in [0, 1), and together below 1".into(),
        ));
    }
    let spec = match (&args.task, &args.config) {
        (_, Some(config)) => {
            let layers = Layers::from_file(config)?.with_process_env().with_overrides(&args.set);
            layers.load(registry)?.task
        }
        (Some(kind), None) => {
            let mut overrides = Vec::new();
            for set in &args.set {
                let Some((k, v)) = set.split_once('=') else {
                    return Err(usage(format!("--set `{set}`: expected KEY=VALUE")));
                };
                overrides.push((k.trim().to_string(), parse_override_value(v)));
            }
            parse_task(registry, kind, &overrides)?
        }
        (None, None) => return Err(usage("give --task or --config".into())),
    };
    let task = spec.build(&()).map_err(Failure::Other)?;
    if !task.styles().contains(&style.name()) {
        return Err(usage(format!(
            "--style: task {} writes {} traces, not {}",
            task.name(),
            task.styles().join(", "),
            style.name()
        )));
    }
    let gen_spec = GenerateSpec {
        n: args.n,
        seed: args.seed,
        style,
        split,
        splitter: Splitter {
            seed: args.split_seed,
            test_fraction: args.test_fraction,
            validation_fraction: args.validation_fraction,
        },
        difficulty: args.difficulty,
        distinct: args.distinct,
        exclude: Default::default(),
    };
    let bar = ProgressBar::new(args.n as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("datagen {}", task.name()));
    let examples = generate(task.as_ref(), &gen_spec).map(|r| {
        bar.inc(1);
        r.map_err(DatasetError::from)
    });
    let n = write_jsonl::<_, DatasetError>(&args.out, examples).map_err(|e| Failure::Other(e.into()))?;
    bar.finish_and_clear();
    eprintln!("wrote {n} examples to {}", args.out.display());
    Ok(())
}
