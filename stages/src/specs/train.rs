//! The `train` stage kind as the engine sees it, the files it writes, and its training log (name,
//! columns, writer and reader: the stage and the report go through these); it runs in the
//! libtorch worker.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::table::{f64_column, f64s, read_parquet, required, u32_column, u32s, write_columns};

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
    version: 3,
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

/// The trained weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// The network's shape, the hash of its vocabulary and every hyper-parameter (JSON).
pub const MODEL_INFO: &str = "model.json";
/// One row per epoch: losses, dev BLEU-4 and speed.
pub const TRAIN_LOG: &str = "train_log.parquet";

/// The columns of `TRAIN_LOG`, in order.
pub mod train_log_columns {
    pub const EPOCH: &str = "epoch";
    pub const TRAIN_LOSS: &str = "train_loss";
    pub const DEV_LOSS: &str = "dev_loss";
    pub const DEV_BLEU4: &str = "dev_bleu4";
    pub const SECONDS: &str = "seconds";
    pub const SAMPLES_PER_SECOND: &str = "samples_per_second";
}

/// One epoch of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: u32,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_bleu4: f64,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// Writes the training log into `dir`.
pub fn write_log(dir: &Path, log: &[EpochLog]) -> Result<(), StageError> {
    use train_log_columns::*;
    let f = |get: fn(&EpochLog) -> f64| f64_column(log.iter().map(get));
    write_columns(
        &dir.join(TRAIN_LOG),
        vec![
            required(EPOCH, u32_column(log.iter().map(|l| l.epoch))),
            required(TRAIN_LOSS, f(|l| l.train_loss)),
            required(DEV_LOSS, f(|l| l.dev_loss)),
            required(DEV_BLEU4, f(|l| l.dev_bleu4)),
            required(SECONDS, f(|l| l.seconds)),
            required(SAMPLES_PER_SECOND, f(|l| l.samples_per_second)),
        ],
    )
}

/// Reads the training log a `train` stage wrote into `dir`.
pub fn read_log(dir: &Path) -> Result<Vec<EpochLog>, StageError> {
    use train_log_columns::*;
    let path = dir.join(TRAIN_LOG);
    let table = read_parquet(&path)?;
    let f = |name| f64s(&path, &table, name);
    Ok(u32s(&path, &table, EPOCH)?
        .into_iter()
        .zip(f(TRAIN_LOSS)?)
        .zip(f(DEV_LOSS)?)
        .zip(f(DEV_BLEU4)?)
        .zip(f(SECONDS)?)
        .zip(f(SAMPLES_PER_SECOND)?)
        .map(
            |(((((epoch, train_loss), dev_loss), dev_bleu4), seconds), samples_per_second)| {
                EpochLog {
                    epoch,
                    train_loss,
                    dev_loss,
                    dev_bleu4,
                    seconds,
                    samples_per_second,
                }
            },
        )
        .collect())
}
