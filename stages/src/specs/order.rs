//! The `order` stage kind as the engine sees it; it runs in the libtorch worker.

use crate::{InputRule, ParamSpec, StageKind};

pub const KIND: StageKind = StageKind {
    name: "order",
    version: 1,
    about: "Pair each caption with its image's feature row; shuffle the train split with a seed",
    params: &[ParamSpec::seed(7, "Seed of the train-split shuffle")],
    inputs: InputRule {
        kinds: &["captions", "features"],
        min: 2,
        max: 2,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Cpu,
    run: crate::worker::run_in_worker,
};

pub const PAIRS_TABLE: &str = "pairs.parquet";
