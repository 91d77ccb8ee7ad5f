//! The `evaluate` stage kind as the engine sees it, the tables it writes and the inversion
//! defaults the `find-images` task shares; it runs in the libtorch worker.

use std::path::Path;

use arrow::array::Float64Array;

use crate::table::{column, read_parquet, strings};
use crate::{Effect, InputRule, ParamDefault, ParamSpec, ParamType, StageError, StageKind};

pub const KIND: StageKind = StageKind {
    name: "evaluate",
    version: 3,
    about: "BLEU of generated captions and caption→image retrieval on the test split",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["train", "features", "order"],
        min: 3,
        max: 3,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "split",
        ty: ParamType::Choice(&["test", "dev"]),
        default: ParamDefault::Str("test"),
        effect: Effect::Output,
        help: "Split to evaluate on",
    },
    ParamSpec {
        name: "beam_width",
        ty: ParamType::Int { min: 1, max: 100 },
        default: ParamDefault::Int(3),
        effect: Effect::Output,
        help: "Beam width of beam-search captions",
    },
    ParamSpec {
        name: "invert_steps",
        ty: ParamType::Int {
            min: 1,
            max: 100_000,
        },
        default: ParamDefault::Int(DEFAULT_INVERT_STEPS),
        effect: Effect::Output,
        help: "Adam steps when inverting the captioner for a caption",
    },
    ParamSpec {
        name: "invert_restarts",
        ty: ParamType::Int { min: 1, max: 1000 },
        default: ParamDefault::Int(DEFAULT_INVERT_RESTARTS),
        effect: Effect::Output,
        help: "Random starting embeddings per caption; the lowest-loss one is kept",
    },
    ParamSpec {
        name: "invert_learning_rate",
        ty: ParamType::Float {
            min: 1e-9,
            max: 100.0,
        },
        default: ParamDefault::Float(DEFAULT_INVERT_LEARNING_RATE),
        effect: Effect::Output,
        help: "Adam learning rate of the inversion",
    },
    ParamSpec {
        name: "rerank",
        ty: ParamType::Int { min: 0, max: 1000 },
        default: ParamDefault::Int(DEFAULT_RERANK),
        effect: Effect::Output,
        help: "Images nearest the inverted embedding that are re-ordered by the caption's \
               likelihood under the captioner (0: nearest by cosine only)",
    },
    ParamSpec {
        name: "queries",
        ty: ParamType::Int {
            min: 1,
            max: i64::MAX,
        },
        default: ParamDefault::Int(500),
        effect: Effect::Output,
        help: "Most captions used as retrieval queries (in split order)",
    },
    ParamSpec::seed(DEFAULT_INVERT_SEED, "Seed of the inversion's random starts"),
    ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP),
];

/// The inversion settings the `find-images` task also uses by default.
pub const DEFAULT_INVERT_STEPS: i64 = 15;
pub const DEFAULT_INVERT_RESTARTS: i64 = 4;
pub const DEFAULT_INVERT_LEARNING_RATE: f64 = 0.1;
pub const DEFAULT_RERANK: i64 = 10;
pub const DEFAULT_INVERT_SEED: i64 = 7;
pub const METRICS_TABLE: &str = "metrics.parquet";
pub const EXAMPLES_TABLE: &str = "examples.parquet";
pub const RANKS_TABLE: &str = "ranks.parquet";

/// One row of the metrics table.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub method: String,
    pub split: String,
    pub value: f64,
}

/// Reads the metrics table an `evaluate` stage wrote into `dir`.
pub fn read_metrics(dir: &Path) -> Result<Vec<Metric>, StageError> {
    let path = dir.join(METRICS_TABLE);
    let table = read_parquet(&path)?;
    let names = strings(&path, &table, "metric")?;
    let methods = strings(&path, &table, "method")?;
    let splits = strings(&path, &table, "split")?;
    let values = column::<Float64Array>(&path, &table, "value")?;
    Ok(names
        .into_iter()
        .zip(methods)
        .zip(splits)
        .zip(values.values().iter())
        .map(|(((name, method), split), &value)| Metric {
            name,
            method,
            split,
            value,
        })
        .collect())
}
