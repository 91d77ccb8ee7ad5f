//! The `train` stage kind as the engine sees it, and the names of the files it writes; it runs in
//! the libtorch worker.

use std::path::Path;

use crate::{
    Effect, InputRule, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageError,
    StageInput, StageKind,
};

/// The files of the GloVe folder a `glove` param names.
pub const GLOVE_FILES: [&str; 2] = ["glove_6B_50d_emb.npy", "glove_6B_index.parquet"];

/// The GloVe files, content-hashed into the key, when the `glove` param is set.
fn sources(
    params: &Params,
    _inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    let Some(dir) = params.opt_str("glove") else {
        return Ok(Vec::new());
    };
    let dir = base_dir.join(dir);
    GLOVE_FILES
        .iter()
        .map(|f| {
            let path = dir.join(f);
            if path.is_file() {
                Ok(Source::in_param_folder("glove", &dir, path))
            } else {
                Err(StageError::file(
                    &path,
                    "GloVe file not found (`make setup` installs them into ./glove)",
                ))
            }
        })
        .collect()
}

pub const KIND: StageKind = StageKind {
    name: "train",
    version: 2,
    about: "Train the caption network (image encoder, word embedding, GRU/LSTM decoder)",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["order", "features", "captions"],
        min: 3,
        max: 3,
    },
    sources,
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "rnn",
        ty: ParamType::Choice(&["gru", "lstm"]),
        default: ParamDefault::Str("gru"),
        effect: Effect::Output,
        help: "Recurrent cell of the decoder",
    },
    ParamSpec {
        name: "image_dim",
        ty: ParamType::Int { min: 1, max: 65536 },
        default: ParamDefault::Int(300),
        effect: Effect::Output,
        help: "Width of the image embedding",
    },
    ParamSpec {
        name: "embed_dim",
        ty: ParamType::Int { min: 1, max: 65536 },
        default: ParamDefault::Int(300),
        effect: Effect::Output,
        help: "Width of the word embedding",
    },
    ParamSpec {
        name: "hidden_dim",
        ty: ParamType::Int { min: 1, max: 65536 },
        default: ParamDefault::Int(516),
        effect: Effect::Output,
        help: "Width of the recurrent state",
    },
    ParamSpec {
        name: "epochs",
        ty: ParamType::Int {
            min: 1,
            max: 100_000,
        },
        default: ParamDefault::Int(10),
        effect: Effect::Output,
        help: "Passes over the train split",
    },
    ParamSpec {
        name: "batch_size",
        ty: ParamType::Int {
            min: 1,
            max: 1 << 20,
        },
        default: ParamDefault::Int(64),
        effect: Effect::Output,
        help: "Captions per optimisation step",
    },
    ParamSpec {
        name: "learning_rate",
        ty: ParamType::Float {
            min: 1e-9,
            max: 10.0,
        },
        default: ParamDefault::Float(1e-3),
        effect: Effect::Output,
        help: "Adam learning rate",
    },
    ParamSpec::seed(7, "Seed of the initial weights and of each epoch's shuffle"),
    ParamSpec {
        name: "max_length",
        ty: ParamType::Int { min: 1, max: 1000 },
        default: ParamDefault::Int(30),
        effect: Effect::Output,
        help: "Most words a decoded caption may have",
    },
    ParamSpec {
        name: "dev_images",
        ty: ParamType::Int {
            min: 0,
            max: i64::MAX,
        },
        default: ParamDefault::Int(100),
        effect: Effect::Output,
        help: "Dev images captioned each epoch for dev BLEU-4 (0: skip)",
    },
    ParamSpec {
        name: "glove",
        ty: ParamType::Path {
            what: PathKind::Folder,
            words: &[],
        },
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "Folder of GloVe 50-d vectors (`make setup` links ./glove) to start word embeddings \
               from, through a learned Linear(50→embed_dim); unset: learned from scratch",
    },
    ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP),
];

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_INFO: &str = "model.json";
pub const TRAIN_LOG: &str = "train_log.parquet";
