//! The `evaluate` stage kind as the engine sees it, the inversion defaults the `find-images` task
//! shares, and the tables it writes (names, columns, writers and readers: the stage, the report and
//! the `metrics` command all go through these); it runs in the libtorch worker.

use std::path::Path;
use std::sync::Arc;

use arrow::array::UInt32Array;

use crate::table::{
    f64_column, f64s, nullable, opt_u32s, read_parquet, required, string_column,
    string_list_column, string_lists, strings, u32_column, u32s, write_columns,
};
use crate::{Effect, InputRule, ParamDefault, ParamSpec, ParamType, StageError, StageKind};

pub const KIND: StageKind = StageKind {
    name: "evaluate",
    version: 5,
    about: "BLEU, CIDEr-D and ROUGE-L of generated captions (on words) and caption→image \
            retrieval on the test split",
    params: PARAMS,
    // A `demo_data` input adds the truth-based accuracy of the captions.
    inputs: InputRule {
        kinds: &["train", "features", "order", "captions", "demo_data"],
        min: 4,
        max: 5,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
    shards: None,
    files_root: None,
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
            min: 0,
            max: i64::MAX,
        },
        default: ParamDefault::Int(0),
        effect: Effect::Output,
        help: "Captions used as retrieval queries: 0 (or more than there are) queries every \
               caption of the split, the standard protocol; fewer are a seeded sample spread \
               evenly over the split's images",
    },
    ParamSpec::seed(
        DEFAULT_INVERT_SEED,
        "Seed of the inversion's random starts and of the sample of retrieval queries",
    ),
    ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP),
];

/// The inversion settings the `find-images` task also uses by default.
pub const DEFAULT_INVERT_STEPS: i64 = 15;
pub const DEFAULT_INVERT_RESTARTS: i64 = 4;
pub const DEFAULT_INVERT_LEARNING_RATE: f64 = 0.1;
/// 30: on the demo (600 test pictures) the right picture is among the 30 nearest the inverted
/// embedding for at least 94 % of captions, among the nearest 10 for 77 %.
pub const DEFAULT_RERANK: i64 = 30;
pub const DEFAULT_INVERT_SEED: i64 = 7;

/// The evaluation's figures: one row per (metric, method) on the evaluated split.
pub const METRICS_TABLE: &str = "metrics.parquet";
/// Every evaluated image with its generated captions and its first reference caption.
pub const EXAMPLES_TABLE: &str = "examples.parquet";
/// Every retrieval query with the rank of its image and the images inversion found for it.
pub const RANKS_TABLE: &str = "ranks.parquet";
/// Every evaluated image with its generated captions, its references and per-image scores: sort
/// it to find the worst and best captions.
pub const PER_IMAGE_TABLE: &str = "per_image.parquet";

/// The columns of `METRICS_TABLE`, in order.
pub mod metrics_columns {
    pub const METRIC: &str = "metric";
    pub const METHOD: &str = "method";
    pub const SPLIT: &str = "split";
    pub const VALUE: &str = "value";
}

/// The columns of `EXAMPLES_TABLE`, in order.
pub mod examples_columns {
    pub const IMAGE_ID: &str = "image_id";
    pub const PATH: &str = "path";
    pub const GREEDY: &str = "greedy";
    pub const BEAM: &str = "beam";
    pub const REFERENCE: &str = "reference";
}

/// The columns of `RANKS_TABLE`, in order.
pub mod ranks_columns {
    pub const IMAGE_ID: &str = "image_id";
    pub const CAPTION_NO: &str = "caption_no";
    pub const CAPTION: &str = "caption";
    pub const INVERT_RANK: &str = "invert_rank";
    pub const INVERT_FOUND: &str = "invert_found";
    pub const EMBED_RANK: &str = "embed_rank";
}

/// The columns of `PER_IMAGE_TABLE`, in order.
pub mod per_image_columns {
    pub const IMAGE_ID: &str = "image_id";
    pub const PATH: &str = "path";
    pub const GREEDY: &str = "greedy";
    pub const BEAM: &str = "beam";
    pub const REFERENCES: &str = "references";
    pub const BLEU4_GREEDY: &str = "bleu4_greedy";
    pub const BLEU4_BEAM: &str = "bleu4_beam";
    pub const CIDER_D_GREEDY: &str = "cider_d_greedy";
    pub const CIDER_D_BEAM: &str = "cider_d_beam";
}

/// One row of the metrics table.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub method: String,
    pub split: String,
    pub value: f64,
}

/// Writes the metrics table into `dir`.
pub fn write_metrics(dir: &Path, metrics: &[Metric]) -> Result<(), StageError> {
    use metrics_columns::*;
    write_columns(
        &dir.join(METRICS_TABLE),
        vec![
            required(METRIC, string_column(metrics.iter().map(|m| &m.name))),
            required(METHOD, string_column(metrics.iter().map(|m| &m.method))),
            required(SPLIT, string_column(metrics.iter().map(|m| &m.split))),
            required(VALUE, f64_column(metrics.iter().map(|m| m.value))),
        ],
    )
}

/// The metrics as the experiments table names them: `<metric>_<method>` (e.g. `bleu4_beam`,
/// `r1_invert`), one number each; the split is the stage's own, so it is left out.
pub fn headline(metrics: &[Metric]) -> std::collections::BTreeMap<String, f64> {
    metrics
        .iter()
        .map(|m| (format!("{}_{}", m.name, m.method), m.value))
        .collect()
}

/// Reads the metrics table an `evaluate` stage wrote into `dir`.
pub fn read_metrics(dir: &Path) -> Result<Vec<Metric>, StageError> {
    use metrics_columns::*;
    let path = dir.join(METRICS_TABLE);
    let table = read_parquet(&path)?;
    let names = strings(&path, &table, METRIC)?;
    let methods = strings(&path, &table, METHOD)?;
    let splits = strings(&path, &table, SPLIT)?;
    let values = f64s(&path, &table, VALUE)?;
    Ok(names
        .into_iter()
        .zip(methods)
        .zip(splits)
        .zip(values)
        .map(|(((name, method), split), value)| Metric {
            name,
            method,
            split,
            value,
        })
        .collect())
}

/// One row of the examples table: an evaluated image and its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub image_id: String,
    pub path: String,
    pub greedy: String,
    pub beam: String,
    pub reference: String,
}

/// Writes the examples table into `dir`.
pub fn write_examples(dir: &Path, examples: &[Example]) -> Result<(), StageError> {
    use examples_columns::*;
    let column = |get: fn(&Example) -> &str| string_column(examples.iter().map(get));
    write_columns(
        &dir.join(EXAMPLES_TABLE),
        vec![
            required(IMAGE_ID, column(|e| &e.image_id)),
            required(PATH, column(|e| &e.path)),
            required(GREEDY, column(|e| &e.greedy)),
            required(BEAM, column(|e| &e.beam)),
            required(REFERENCE, column(|e| &e.reference)),
        ],
    )
}

/// Reads the examples table an `evaluate` stage wrote into `dir`.
pub fn read_examples(dir: &Path) -> Result<Vec<Example>, StageError> {
    use examples_columns::*;
    let path = dir.join(EXAMPLES_TABLE);
    let table = read_parquet(&path)?;
    let column = |name| strings(&path, &table, name);
    Ok(column(IMAGE_ID)?
        .into_iter()
        .zip(column(PATH)?)
        .zip(column(GREEDY)?)
        .zip(column(BEAM)?)
        .zip(column(REFERENCE)?)
        .map(|((((image_id, path), greedy), beam), reference)| Example {
            image_id,
            path,
            greedy,
            beam,
            reference,
        })
        .collect())
}

/// One row of the ranks table: a retrieval query (a caption of an image), where inversion ranked
/// its image, the images it found, best first, and where the embedding baseline ranked it (None
/// when the baseline was not run).
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    pub image_id: String,
    pub caption_no: u32,
    pub caption: String,
    pub invert_rank: u32,
    pub invert_found: Vec<String>,
    pub embed_rank: Option<u32>,
}

/// Writes the ranks table into `dir`.
pub fn write_ranks(dir: &Path, ranks: &[Rank]) -> Result<(), StageError> {
    use ranks_columns::*;
    let found: Vec<Vec<String>> = ranks.iter().map(|r| r.invert_found.clone()).collect();
    write_columns(
        &dir.join(RANKS_TABLE),
        vec![
            required(IMAGE_ID, string_column(ranks.iter().map(|r| &r.image_id))),
            required(CAPTION_NO, u32_column(ranks.iter().map(|r| r.caption_no))),
            required(CAPTION, string_column(ranks.iter().map(|r| &r.caption))),
            required(INVERT_RANK, u32_column(ranks.iter().map(|r| r.invert_rank))),
            required(INVERT_FOUND, string_list_column(&found)),
            nullable(
                EMBED_RANK,
                Arc::new(UInt32Array::from_iter(ranks.iter().map(|r| r.embed_rank))),
            ),
        ],
    )
}

/// Reads the ranks table an `evaluate` stage wrote into `dir`.
pub fn read_ranks(dir: &Path) -> Result<Vec<Rank>, StageError> {
    use ranks_columns::*;
    let path = dir.join(RANKS_TABLE);
    let table = read_parquet(&path)?;
    Ok(strings(&path, &table, IMAGE_ID)?
        .into_iter()
        .zip(u32s(&path, &table, CAPTION_NO)?)
        .zip(strings(&path, &table, CAPTION)?)
        .zip(u32s(&path, &table, INVERT_RANK)?)
        .zip(string_lists(&path, &table, INVERT_FOUND)?)
        .zip(opt_u32s(&path, &table, EMBED_RANK)?)
        .map(
            |(((((image_id, caption_no), caption), invert_rank), invert_found), embed_rank)| Rank {
                image_id,
                caption_no,
                caption,
                invert_rank,
                invert_found,
                embed_rank,
            },
        )
        .collect())
}

/// One row of the per-image table: an evaluated image, its captions and their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScores {
    pub image_id: String,
    /// The image file, as the examples table gives it.
    pub path: String,
    /// The generated captions, `<unk>` included.
    pub greedy: String,
    pub beam: String,
    /// The reference captions as the metrics compared them: their words joined by spaces.
    pub references: Vec<String>,
    /// Sentence-level BLEU-4 of each caption against the references, with NLTK's smoothing method
    /// 1 (`onenet_stages::metrics::smoothed_sentence_bleu`), in [0, 1].
    pub bleu4_greedy: f64,
    pub bleu4_beam: f64,
    /// The image's CIDEr-D (`onenet_stages::coco_metrics::cider_d`, document frequencies from
    /// the whole evaluated split), 0 to about 10; the split's CIDEr-D is their mean.
    pub cider_d_greedy: f64,
    pub cider_d_beam: f64,
}

/// Writes the per-image table into `dir`.
pub fn write_per_image(dir: &Path, images: &[ImageScores]) -> Result<(), StageError> {
    use per_image_columns::*;
    let text = |get: fn(&ImageScores) -> &str| string_column(images.iter().map(get));
    let number = |get: fn(&ImageScores) -> f64| f64_column(images.iter().map(get));
    let references: Vec<Vec<String>> = images.iter().map(|i| i.references.clone()).collect();
    write_columns(
        &dir.join(PER_IMAGE_TABLE),
        vec![
            required(IMAGE_ID, text(|i| &i.image_id)),
            required(PATH, text(|i| &i.path)),
            required(GREEDY, text(|i| &i.greedy)),
            required(BEAM, text(|i| &i.beam)),
            required(REFERENCES, string_list_column(&references)),
            required(BLEU4_GREEDY, number(|i| i.bleu4_greedy)),
            required(BLEU4_BEAM, number(|i| i.bleu4_beam)),
            required(CIDER_D_GREEDY, number(|i| i.cider_d_greedy)),
            required(CIDER_D_BEAM, number(|i| i.cider_d_beam)),
        ],
    )
}

/// Reads the per-image table an `evaluate` stage wrote into `dir`.
pub fn read_per_image(dir: &Path) -> Result<Vec<ImageScores>, StageError> {
    use per_image_columns::*;
    let path = dir.join(PER_IMAGE_TABLE);
    let table = read_parquet(&path)?;
    let text = |name| strings(&path, &table, name);
    let number = |name| f64s(&path, &table, name);
    let (bleu_greedy, bleu_beam) = (number(BLEU4_GREEDY)?, number(BLEU4_BEAM)?);
    let (cider_greedy, cider_beam) = (number(CIDER_D_GREEDY)?, number(CIDER_D_BEAM)?);
    Ok(text(IMAGE_ID)?
        .into_iter()
        .zip(text(PATH)?)
        .zip(text(GREEDY)?)
        .zip(text(BEAM)?)
        .zip(string_lists(&path, &table, REFERENCES)?)
        .enumerate()
        .map(
            |(row, ((((image_id, path), greedy), beam), references))| ImageScores {
                image_id,
                path,
                greedy,
                beam,
                references,
                bleu4_greedy: bleu_greedy[row],
                bleu4_beam: bleu_beam[row],
                cider_d_greedy: cider_greedy[row],
                cider_d_beam: cider_beam[row],
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_image_scores_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let image = |id: &str, score: f64| ImageScores {
            image_id: id.into(),
            path: format!("Images/{id}"),
            greedy: "a red circle".into(),
            beam: "a <unk> circle".into(),
            references: vec!["a red circle".into(), "a red ring above".into()],
            bleu4_greedy: score,
            bleu4_beam: score / 2.0,
            cider_d_greedy: 10.0 * score,
            cider_d_beam: 0.0,
        };
        let images = [image("1.jpg", 0.5), image("2.jpg", 0.25)];
        write_per_image(dir.path(), &images).unwrap();
        assert_eq!(read_per_image(dir.path()).unwrap(), images);
    }
}
