//! # ponder-datagen
//!
//! The world the policy reasons about: task families with exact verifiers, the text format of
//! problems, steps and traces, expert traces in several styles, and JSONL datasets.
//!
//! | task | steps | exact step label | difficulty level |
//! |---|---|---|---|
//! | [`countdown`] | `a op b=c left ...`, `back to ...` | target still reachable | how many numbers |
//! | [`chains`] | `v=x op y=A op B=R`, goals `v=x op y?`, `back` | step content is true | operations needed |
//! | [`arithmetic`] | `d+d+c=ss`, `back` | the expected scratchpad step | digits |
//!
//! Every function that reads model output accepts any text without panicking.

pub mod arithmetic;
pub mod chains;
pub mod countdown;
pub mod dataset;
pub mod io;
pub mod task;
pub mod trace;

pub use dataset::{DatasetError, Example, GenerateSpec, Split};
pub use task::{Task, TaskError, TaskRng, TraceStyle, Verdict};
pub use trace::{ANSWER_PREFIX, Problem, Trace};
