//! The libtorch side of onenet: the CNN backbones and their checkpoint reader, the caption
//! network, the stage kinds that run them (features, order, train, embed, evaluate) and the four
//! tasks. The engine never links this crate: it runs these stages through the `onenet-torch`
//! worker binary, so that commands that do not need libtorch start without loading it.
//!
//! What the engine knows of each kind (name, params, inputs) and the files each writes are its
//! spec in `onenet_stages::specs`; this crate holds only the code that needs libtorch.

pub mod backbone;
pub mod embed;
pub mod evaluate;
pub mod features;
pub mod glove;
pub mod model;
pub mod optim;
pub mod order;
pub mod precision;
pub mod runtime;
pub mod tasks;
pub mod train;

use std::path::Path;

use onenet_stages::{input_of_kind, specs, RunFn, StageContext, StageError, StageKind};

/// Each stage kind this crate implements: its spec, and the `run` function the worker calls.
pub const KINDS: [(&StageKind, RunFn); 5] = [
    (&specs::features::KIND, features::run),
    (&specs::order::KIND, order::run),
    (&specs::train::KIND, train::run),
    (&specs::embed::KIND, embed::run),
    (&specs::evaluate::KIND, evaluate::run),
];

/// The `run` function of the stage kind named `kind`, if this crate implements it.
pub fn run_of_kind(kind: &str) -> Option<RunFn> {
    KINDS
        .iter()
        .find(|(spec, _)| spec.name == kind)
        .map(|&(_, run)| run)
}

/// The folder of the running stage's input of kind `kind`.
pub fn input_dir<'a>(ctx: &'a StageContext, kind: &StageKind) -> Result<&'a Path, StageError> {
    Ok(&input_of_kind(&ctx.inputs, kind.name)?.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libtorch_kind_of_the_registry_runs_here() {
        for kind in onenet_stages::kinds() {
            let runs_here = run_of_kind(kind.name).is_some();
            assert_eq!(runs_here, kind.device.uses_libtorch(), "{}", kind.name);
        }
        for (spec, _) in KINDS {
            assert!(onenet_stages::kind(spec.name).is_some(), "{}", spec.name);
        }
    }
}
