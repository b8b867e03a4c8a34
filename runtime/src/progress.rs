//! One progress display for a whole pipeline: a line for the stages and a bar with an ETA for
//! the stage at work. Hidden when stderr is not a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
pub struct Display {
    multi: MultiProgress,
    pipeline: ProgressBar,
}

impl Display {
    pub fn new(stages: usize) -> Display {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let pipeline = multi.add(ProgressBar::new(stages as u64));
        pipeline.set_style(
            ProgressStyle::with_template("pipeline [{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Display { multi, pipeline }
    }

    /// A bar for the stage that starts now.
    pub fn stage(&self, name: &str) -> StageBar {
        self.pipeline.set_message(name.to_string());
        let bar = self.multi.add(ProgressBar::new(1));
        bar.set_style(
            ProgressStyle::with_template("  {prefix:<12} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(name.to_string());
        StageBar {
            bar,
            crash_at: crash_point(name),
        }
    }

    pub fn stage_done(&self) {
        self.pipeline.inc(1);
    }

    pub fn finish(&self) {
        self.pipeline.finish_and_clear();
    }
}

/// The bar of one stage; training loops report to it.
#[derive(Debug)]
pub struct StageBar {
    bar: ProgressBar,
    crash_at: Option<usize>,
}

/// Fault injection for the kill-and-resume tests: `PONDER_CRASH_AT=STAGE:POSITION` aborts the
/// process (no unwinding, no cleanup: as a kill would) when that stage's progress reaches
/// that position.
fn crash_point(stage: &str) -> Option<usize> {
    let spec = std::env::var("PONDER_CRASH_AT").ok()?;
    let (at_stage, position) = spec.split_once(':')?;
    (at_stage == stage).then(|| position.parse().ok()).flatten()
}

impl StageBar {
    /// A bar that draws nothing (tests, library use).
    pub fn hidden() -> StageBar {
        StageBar {
            bar: ProgressBar::hidden(),
            crash_at: None,
        }
    }

    pub fn set(&self, position: usize, total: usize, status: &str) {
        self.bar.set_length(total as u64);
        self.bar.set_position(position as u64);
        self.bar.set_message(status.to_string());
        if self.crash_at.is_some_and(|at| position >= at) {
            eprintln!("ponder: PONDER_CRASH_AT reached at position {position}: aborting");
            std::process::abort();
        }
    }
}

impl Drop for StageBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl ponder_policy_init::trainer::Progress for StageBar {
    fn update(&self, step: usize, total: usize, status: &str) {
        self.set(step, total, status);
    }
}
