//! The `embed` stage kind as the engine sees it, and the tables it writes; it runs in the libtorch
//! worker.

use crate::{InputRule, ParamSpec, StageKind};

pub const KIND: StageKind = StageKind {
    name: "embed",
    version: 1,
    about: "Export image, word and caption embeddings of the trained network as Parquet",
    params: &[ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP)],
    inputs: InputRule {
        kinds: &["train", "features", "captions"],
        min: 3,
        max: 3,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Cpu,
    run: crate::worker::run_in_worker,
};

pub const IMAGE_EMBEDDINGS: &str = "image_embeddings.parquet";
pub const WORD_EMBEDDINGS: &str = "word_embeddings.parquet";
pub const CAPTION_EMBEDDINGS: &str = "caption_embeddings.parquet";
