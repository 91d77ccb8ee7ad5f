//! The `train` stage kind as the engine sees it, the files it writes, and its training log (name,
//! columns, writer and reader: the stage and the report go through these); it runs in the
//! libtorch worker.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::table::{
    bool_column, bools, f64_column, f64s, read_parquet, required, u32_column, u32s, write_columns,
};

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
    version: 4,
    about: "Train the caption network (image encoder, word embedding, GRU/LSTM decoder); the \
            image encoder follows the features' pooling: one linear layer for a pooled vector, \
            for grid features one shared layer per region and each unit's maximum over the \
            regions",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["order", "features", "captions"],
        min: 3,
        max: 3,
    },
    sources,
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
    shards: None,
    files_root: None,
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
        name: "bucket",
        ty: ParamType::Int {
            min: 0,
            max: 1 << 20,
        },
        default: ParamDefault::Int(0),
        effect: Effect::Output,
        help: "Length bucketing: each epoch's shuffled pairs are taken `bucket` batches at a \
               time (e.g. 50), sorted by caption length and cut into batches, and the batches \
               shuffled, so a batch is padded to the length of its own captions: faster where \
               lengths vary (seeded; 0 or 1: plain shuffled batches)",
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
    ParamSpec::seed(
        7,
        "Seed of the initial weights and of each epoch's shuffle and dropout masks",
    ),
    ParamSpec {
        name: "dropout",
        ty: ParamType::Float { min: 0.0, max: 0.9 },
        default: ParamDefault::Float(0.0),
        effect: Effect::Output,
        help: "Probability of dropping each input and output unit of the decoder in training \
               (0: no dropout)",
    },
    ParamSpec {
        name: "precision",
        ty: ParamType::Choice(&["f32", "bf16"]),
        default: ParamDefault::Str("f32"),
        effect: Effect::Output,
        help: "f32, or bf16: mixed-precision training (the decoder's matrix products in \
               bfloat16, weights and optimiser state in f32): 1.2-1.7x as fast at Flickr8k's \
               sizes on CPUs with AVX-512 BF16 or AMX, less at small sizes, slow on CPUs without",
    },
    ParamSpec {
        name: "select",
        ty: ParamType::Choice(SELECT_CHOICES),
        default: ParamDefault::Str("dev_cider"),
        effect: Effect::Output,
        help: "Which epoch's weights are kept: the best dev CIDEr-D, the best dev BLEU-4, or the \
               last epoch's (dev scores are of greedy captions of `dev_images` dev images)",
    },
    ParamSpec {
        name: "patience",
        ty: ParamType::Int {
            min: 0,
            max: 100_000,
        },
        default: ParamDefault::Int(0),
        effect: Effect::Output,
        help: "Stop after this many epochs without a better dev score (the `select` one; 0: \
               train every epoch)",
    },
    ParamSpec {
        name: "lr_decay",
        ty: ParamType::Float {
            min: 0.01,
            max: 1.0,
        },
        default: ParamDefault::Float(1.0),
        effect: Effect::Output,
        help: "Factor the learning rate is multiplied by after `lr_patience` epochs without a \
               better dev score (1: constant learning rate)",
    },
    ParamSpec {
        name: "lr_patience",
        ty: ParamType::Int {
            min: 1,
            max: 100_000,
        },
        default: ParamDefault::Int(2),
        effect: Effect::Output,
        help: "Epochs without a better dev score before the learning rate decays by `lr_decay`",
    },
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

/// The values of the `select` param.
pub const SELECT_CHOICES: &[&str] = &["dev_cider", "dev_bleu4", "last"];

/// The trained weights (those of the kept epoch: see the `select` param).
pub const MODEL_FILE: &str = "model.safetensors";
/// The network's shape, the hash of its vocabulary and every hyper-parameter (JSON).
pub const MODEL_INFO: &str = "model.json";
/// One row per epoch: losses, dev BLEU-4 and CIDEr-D, learning rate, whether its weights are
/// the ones kept, and speed.
pub const TRAIN_LOG: &str = "train_log.parquet";

/// The columns of `TRAIN_LOG`, in order.
pub mod train_log_columns {
    pub const EPOCH: &str = "epoch";
    pub const TRAIN_LOSS: &str = "train_loss";
    pub const DEV_LOSS: &str = "dev_loss";
    pub const DEV_BLEU4: &str = "dev_bleu4";
    pub const DEV_CIDER_D: &str = "dev_cider_d";
    pub const LEARNING_RATE: &str = "learning_rate";
    pub const KEPT: &str = "kept";
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
    /// CIDEr-D of the same greedy dev captions as `dev_bleu4` (NaN without dev images).
    #[serde(default = "nan")]
    pub dev_cider_d: f64,
    /// The learning rate of this epoch's steps.
    #[serde(default = "nan")]
    pub learning_rate: f64,
    /// Whether the saved model holds this epoch's weights (exactly one epoch of a finished log).
    #[serde(default)]
    pub kept: bool,
    pub seconds: f64,
    pub samples_per_second: f64,
}

fn nan() -> f64 {
    f64::NAN
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
            required(DEV_CIDER_D, f(|l| l.dev_cider_d)),
            required(LEARNING_RATE, f(|l| l.learning_rate)),
            required(KEPT, bool_column(log.iter().map(|l| l.kept))),
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
    let epochs = u32s(&path, &table, EPOCH)?;
    let (train_loss, dev_loss, dev_bleu4) = (f(TRAIN_LOSS)?, f(DEV_LOSS)?, f(DEV_BLEU4)?);
    let (dev_cider_d, learning_rate) = (f(DEV_CIDER_D)?, f(LEARNING_RATE)?);
    let kept = bools(&path, &table, KEPT)?;
    let (seconds, samples_per_second) = (f(SECONDS)?, f(SAMPLES_PER_SECOND)?);
    Ok(epochs
        .into_iter()
        .enumerate()
        .map(|(i, epoch)| EpochLog {
            epoch,
            train_loss: train_loss[i],
            dev_loss: dev_loss[i],
            dev_bleu4: dev_bleu4[i],
            dev_cider_d: dev_cider_d[i],
            learning_rate: learning_rate[i],
            kept: kept[i],
            seconds: seconds[i],
            samples_per_second: samples_per_second[i],
        })
        .collect())
}
