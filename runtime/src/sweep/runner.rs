//! Running a sweep: each run a `ponder run` process of its own, `parallel` at a time, with
//! the shared stages run once and copied into every run.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

use super::{Sweep, SweepRun};
use crate::run_dir::RunDir;

impl Sweep {
    /// Runs everything (resuming what is done), then writes the table and plots.
    pub fn run(&self, exe: &Path) -> anyhow::Result<()> {
        self.write_configs()?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if self.threads > 0 {
            self.threads
        } else {
            (cores / self.parallel).max(1)
        };
        for base in &self.bases {
            eprintln!(
                "ponder sweep {}: shared stages ({}) in {}",
                self.name,
                self.reuse.join(", "),
                self.dir.join(&base.name).display()
            );
            self.run_one(exe, base, threads)?;
        }
        let queue = Mutex::new(self.runs.iter().collect::<Vec<_>>().into_iter());
        let failures = Mutex::new(Vec::new());
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.parallel.min(self.runs.len()).max(1) {
                scope.spawn(|| {
                    loop {
                        let next = queue.lock().ok().and_then(|mut q| q.next());
                        let Some(run) = next else { break };
                        let outcome = self.prepare(run).and_then(|()| self.run_one(exe, run, threads));
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        match outcome {
                            Ok(()) => eprintln!(
                                "ponder sweep {}: [{n}/{}] {} done",
                                self.name,
                                self.runs.len(),
                                run.name
                            ),
                            Err(e) => {
                                eprintln!(
                                    "ponder sweep {}: [{n}/{}] {} FAILED: {e:#}",
                                    self.name,
                                    self.runs.len(),
                                    run.name
                                );
                                if let Ok(mut f) = failures.lock() {
                                    f.push(format!("{}: {e:#}", run.name));
                                }
                            }
                        }
                    }
                });
            }
        });
        let table = self.collect()?;
        eprintln!(
            "ponder sweep {}: table in {}",
            self.name,
            self.dir.join("table.md").display()
        );
        eprint!("{table}");
        let failures = failures.into_inner().unwrap_or_default();
        if !failures.is_empty() {
            bail!(
                "{} of {} runs failed (logs in {}):\n{}",
                failures.len(),
                self.runs.len(),
                self.dir.join("logs").display(),
                failures.join("\n")
            );
        }
        Ok(())
    }

    /// Gives a run the shared stages' files, unless it has them.
    fn prepare(&self, run: &SweepRun) -> anyhow::Result<()> {
        let Some(base) = &run.base else {
            return Ok(());
        };
        let from = self.dir.join(base);
        let to = self.dir.join(&run.name);
        let to_run = RunDir::new(&to);
        if self.reuse.iter().all(|s| to_run.has_record(s)) {
            return Ok(());
        }
        copy_tree(&from, &to, &from)
    }

    fn run_one(&self, exe: &Path, run: &SweepRun, threads: usize) -> anyhow::Result<()> {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}.log", run.name));
        let log = std::fs::File::options().create(true).append(true).open(&log_path)?;
        let status = Command::new(exe)
            .arg("run")
            .arg(self.config_path(run))
            .arg("--resume")
            .arg("--set")
            .arg(format!("run.threads={threads}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            bail!(
                "exit {status}; log {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

/// Copies (hard-links where possible) a run's files into another run's directory, leaving out
/// what belongs to the run itself (config, manifest, results, log, report, plots).
fn copy_tree(from: &Path, to: &Path, root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let own = [
            "config.toml",
            "manifest.json",
            "results.json",
            "log.txt",
            "report.md",
            "plots",
        ];
        if relative.components().count() == 1 && own.iter().any(|o| relative == Path::new(o)) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &target, root)?;
        } else if !target.exists() && std::fs::hard_link(&path, &target).is_err() {
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}
