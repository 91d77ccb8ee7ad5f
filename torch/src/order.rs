//! Stage kind `order`: the training set as (feature row, caption tokens) pairs per split, the
//! train split shuffled with a seed, so training reads a fixed, reproducible order.

use onenet_stages::specs::order::PAIRS_TABLE;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, ListArray, StringArray, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::feature_table::FeatureMatrix;
use onenet_stages::captions::CAPTIONS_TABLE;
use onenet_stages::table::{batch, read_parquet, strings, u32_lists, u32s, write_parquet};
use onenet_stages::{input_of_kind, StageContext, StageError, StageReport};

/// One caption of one image, ready for training or evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub split: String,
    pub image_row: u32,
    pub image_id: String,
    pub caption_no: u32,
    pub tokens: Vec<u32>,
}

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let seed = ctx.params.int("seed")? as u64;
    let captions_path = input_of_kind(&ctx.inputs, "captions")?
        .dir
        .join(CAPTIONS_TABLE);
    let device = crate::runtime::Runtime::for_stage(ctx)?.device;
    let features = FeatureMatrix::read(&input_of_kind(&ctx.inputs, "features")?.dir, device)?;
    let row_of = features.row_of();

    let table = read_parquet(&captions_path)?;
    let ids = strings(&captions_path, &table, "image_id")?;
    let numbers = u32s(&captions_path, &table, "caption_no")?;
    let tokens = u32_lists(&captions_path, &table, "tokens")?;
    let splits = strings(&captions_path, &table, "split")?;

    let mut by_split: [(&str, Vec<Pair>); 3] = [
        ("train", Vec::new()),
        ("dev", Vec::new()),
        ("test", Vec::new()),
    ];
    let mut without_features = Vec::new();
    for (((image_id, caption_no), tokens), split) in
        ids.into_iter().zip(numbers).zip(tokens).zip(splits)
    {
        let Some(bucket) = by_split.iter_mut().find(|(name, _)| *name == split) else {
            continue;
        };
        match row_of.get(image_id.as_str()) {
            Some(&row) => bucket.1.push(Pair {
                split,
                image_row: row as u32,
                image_id,
                caption_no,
                tokens,
            }),
            None => without_features.push(image_id),
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    by_split[0].1.shuffle(&mut rng);

    let pairs: Vec<Pair> = by_split
        .iter()
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    write_pairs(&ctx.out_dir.join(PAIRS_TABLE), &pairs)?;

    let mut report = StageReport::default();
    report.notes.push(format!(
        "{} train, {} dev, {} test pairs (train shuffled with seed {seed})",
        by_split[0].1.len(),
        by_split[1].1.len(),
        by_split[2].1.len()
    ));
    if !without_features.is_empty() {
        without_features.dedup();
        report.warnings.push(format!(
            "{} image(s) have captions but no features (missing or corrupt), left out: {}",
            without_features.len(),
            onenet_stages::flickr::preview_names(&without_features, without_features.len())
        ));
    }
    if by_split[0].1.is_empty() {
        return Err(StageError::Input(
            "no train-split caption has an image with features: nothing to train on".into(),
        ));
    }
    Ok(report)
}

fn write_pairs(path: &Path, pairs: &[Pair]) -> Result<(), StageError> {
    let item = Arc::new(Field::new("item", DataType::UInt32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("split", DataType::Utf8, false),
        Field::new("image_row", DataType::UInt32, false),
        Field::new("image_id", DataType::Utf8, false),
        Field::new("caption_no", DataType::UInt32, false),
        Field::new("tokens", DataType::List(item.clone()), false),
    ]));
    let offsets = OffsetBuffer::from_lengths(pairs.iter().map(|p| p.tokens.len()));
    let values = UInt32Array::from_iter_values(pairs.iter().flat_map(|p| p.tokens.iter().copied()));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            pairs.iter().map(|p| &p.split),
        )),
        Arc::new(UInt32Array::from_iter_values(
            pairs.iter().map(|p| p.image_row),
        )),
        Arc::new(StringArray::from_iter_values(
            pairs.iter().map(|p| &p.image_id),
        )),
        Arc::new(UInt32Array::from_iter_values(
            pairs.iter().map(|p| p.caption_no),
        )),
        Arc::new(
            ListArray::try_new(item, offsets, Arc::new(values), None).map_err(|e| {
                StageError::Table {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }
            })?,
        ),
    ];
    write_parquet(path, &batch(path, schema, columns)?)
}

/// Reads the pairs an `order` stage wrote into `dir`, in stored order.
pub fn read_pairs(dir: &Path) -> Result<Vec<Pair>, StageError> {
    let path = dir.join(PAIRS_TABLE);
    let table = read_parquet(&path)?;
    let splits = strings(&path, &table, "split")?;
    let rows = u32s(&path, &table, "image_row")?;
    let ids = strings(&path, &table, "image_id")?;
    let numbers = u32s(&path, &table, "caption_no")?;
    let tokens = u32_lists(&path, &table, "tokens")?;
    Ok(splits
        .into_iter()
        .zip(rows)
        .zip(ids)
        .zip(numbers)
        .zip(tokens)
        .map(
            |((((split, image_row), image_id), caption_no), tokens)| Pair {
                split,
                image_row,
                image_id,
                caption_no,
                tokens,
            },
        )
        .collect())
}
