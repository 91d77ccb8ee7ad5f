//! The libtorch side of onenet: the CNN backbones and their checkpoint reader, the caption
//! network, the stage kinds that run them (features, order, train, embed, evaluate) and the four
//! tasks. The engine never links this crate: it runs these stages through the `onenet-torch`
//! worker binary, so that commands that do not need libtorch start without loading it.

pub mod backbone;
pub mod embed;
pub mod evaluate;
pub mod feature_table;
pub mod features;
pub mod glove;
pub mod model;
pub mod optim;
pub mod order;
pub mod runtime;
pub mod tasks;
pub mod train;

use onenet_stages::RunFn;

/// The `run` function of each stage kind this crate implements, for the worker to call.
pub fn run_of_kind(kind: &str) -> Option<RunFn> {
    Some(match kind {
        "features" => features::run,
        "order" => order::run,
        "train" => train::run,
        "embed" => embed::run,
        "evaluate" => evaluate::run,
        _ => return None,
    })
}
