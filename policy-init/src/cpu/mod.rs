//! ponder's CPU transformer: the Llama/Qwen2 block on host memory. One forward pass
//! ([`forward`]) serves decoding with a KV cache ([`decode`], the [`Engine`]) and training,
//! which records its activations and adds the hand-written backward pass ([`train`], the
//! [`TrainingPass`]); both read one weight layout and one set of row kernels ([`layers`]) and
//! the matrix products of [`linalg`]. burn's model (`crate::model`) is the reference both are tested
//! against, and the other training backend ([`crate::backend::Backend`]).

pub mod decode;
pub mod forward;
pub mod layers;
pub mod linalg;
pub mod train;

pub use decode::{Engine, KvCache, MAX_PASS_TOKENS, Want};
pub use train::{CrossEntropy, Gradients, ScalarHead, SeqOutputs, SequenceLoss, TrainingPass};
