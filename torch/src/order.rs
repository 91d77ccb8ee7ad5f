//! Stage kind `order`: the training set as (feature row, caption tokens) pairs per split, the
//! train split shuffled with a seed, so training reads a fixed, reproducible order. The pairs
//! table and its reader are `onenet_stages::specs::order`.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::features::FeatureMatrix;
use crate::input_dir;
use onenet_stages::captions::CAPTIONS_TABLE;
use onenet_stages::specs;
use onenet_stages::specs::order::{write_pairs, Pair};
use onenet_stages::table::{read_parquet, strings, u32_lists, u32s};
use onenet_stages::{captions, StageContext, StageError, StageReport};

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let seed = ctx.params.int("seed")? as u64;
    let captions_path = input_dir(ctx, &captions::KIND)?.join(CAPTIONS_TABLE);
    let device = crate::runtime::Runtime::for_stage(ctx)?.device;
    let features = FeatureMatrix::read(input_dir(ctx, &specs::features::KIND)?, device)?;
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
    write_pairs(&ctx.out_dir, &pairs)?;

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
