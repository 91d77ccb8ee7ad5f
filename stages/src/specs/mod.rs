//! The stage kinds that need libtorch, as the engine sees them: their params, inputs, the files
//! they read and write. Their `run` is `worker::run_in_worker`: the `onenet-torch` crate holds
//! the code, so that the engine never links libtorch.

pub mod embed;
pub mod evaluate;
pub mod features;
pub mod order;
pub mod train;
