//! Stage kind `evaluate`: measures the trained network on the test split — corpus BLEU-1..4 of
//! greedy and beam-search captions, caption→image retrieval by model inversion and by a direct
//! embedding baseline (R@1/5/10, median rank), and an image→image sanity figure — and writes
//! them as a metrics table, with example captions and per-query ranks and found images.

use onenet_stages::specs::evaluate::{Metric, EXAMPLES_TABLE, METRICS_TABLE, RANKS_TABLE};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use tch::Tensor;

use crate::embed::{flatten, mean_word_embedding, word_matrix};
use crate::feature_table::FeatureMatrix;
use crate::model::{invert, rank_by_likelihood};
use crate::order::{read_pairs, Pair};
use crate::runtime::Runtime;
use crate::train::{captions_by_image, TrainedModel};
use onenet_stages::metrics::{
    corpus_bleu, cosine_scores, l2_normalize_rows, rank_of, top_k_cosine, RetrievalMetrics,
};

/// How many images `ranks.parquet` lists as found by inversion for each query, best first.
const FOUND_PER_QUERY: usize = 5;
use onenet_stages::table::{batch, string_list_column, write_parquet};
use onenet_stages::{input_of_kind, StageContext, StageError, StageReport};

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let p = &ctx.params;
    let device = Runtime::for_stage(ctx)?.device;
    let split = p.str("split")?.to_string();
    let trained = TrainedModel::load(&input_of_kind(&ctx.inputs, "train")?.dir, device)?;
    let features = FeatureMatrix::read(&input_of_kind(&ctx.inputs, "features")?.dir, device)?;
    let pairs = read_pairs(&input_of_kind(&ctx.inputs, "order")?.dir)?;
    let eval: Vec<&Pair> = pairs.iter().filter(|p| p.split == split).collect();
    if eval.is_empty() {
        return Err(StageError::Input(format!(
            "the {split} split has no captions"
        )));
    }
    let model = &trained.model;
    let max_length = trained.info.max_length;
    let by_image = captions_by_image(&eval);
    let mut metrics = Vec::new();
    let metric = |name: &str, method: &str, value: f64| Metric {
        name: name.into(),
        method: method.into(),
        split: split.clone(),
        value,
    };

    // Captions: greedy for all images at once, beam search image by image.
    let rows: Vec<i64> = by_image.iter().map(|(r, _)| *r as i64).collect();
    let image_index = Tensor::from_slice(&rows).to_device(device);
    let embeddings =
        tch::no_grad(|| model.encode_images(&features.features.index_select(0, &image_index)));
    let greedy = model.greedy(&embeddings, max_length);
    ctx.progress.start(by_image.len() as u64, "beam search");
    let width = p.int("beam_width")? as usize;
    let beam: Vec<Vec<u32>> = (0..by_image.len())
        .map(|i| {
            let out = model.beam_search(&embeddings.get(i as i64), width, max_length);
            ctx.progress.inc(1);
            out
        })
        .collect();
    let references: Vec<Vec<Vec<u32>>> = by_image
        .iter()
        .map(|(_, caps)| caps.iter().map(|c| words_of(&c.tokens)).collect())
        .collect();
    for (method, hypotheses) in [("greedy", &greedy), ("beam", &beam)] {
        let scores = corpus_bleu(&references, hypotheses, 4)
            .map_err(|e| StageError::Input(format!("BLEU: {e}")))?;
        for n in 1..=4 {
            metrics.push(metric(
                &format!("bleu{n}"),
                method,
                scores.get(n).unwrap_or(0.0),
            ));
        }
    }

    // Retrieval: each query caption against every image of the split.
    let queries: Vec<&Pair> = eval
        .iter()
        .copied()
        .take(p.int("queries")? as usize)
        .collect();
    let target_of: std::collections::HashMap<u32, usize> = by_image
        .iter()
        .enumerate()
        .map(|(i, (r, _))| (*r, i))
        .collect();
    let image_dim = embeddings.size()[1] as usize;
    let mut image_vectors = flatten(&embeddings);
    l2_normalize_rows(&mut image_vectors, image_dim);

    tch::manual_seed(p.int("seed")?);
    let steps = p.int("invert_steps")? as usize;
    let restarts = p.int("invert_restarts")? as usize;
    let lr = p.float("invert_learning_rate")?;
    ctx.progress
        .start(queries.len() as u64, "inverting captions");
    let mut invert_ranks = Vec::with_capacity(queries.len());
    let mut nearest_ranks = Vec::with_capacity(queries.len());
    let rerank = p.int("rerank")? as usize;
    let mut invert_found: Vec<Vec<String>> = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(64) {
        let tokens: Vec<&[u32]> = chunk.iter().map(|q| q.tokens.as_slice()).collect();
        let (z, _) = invert(model, &tokens, steps, restarts, lr);
        let z = flatten(&z);
        for (q, query) in chunk.iter().enumerate() {
            let found = &z[q * image_dim..(q + 1) * image_dim];
            let scores = cosine_scores(found, &image_vectors, image_dim);
            let target = target_of[&query.image_row];
            nearest_ranks.push(rank_of(&scores, target));
            // The nearest `rerank` images (at least the ones listed), re-ordered by likelihood.
            let nearest: Vec<usize> = top_k_cosine(
                found,
                &image_vectors,
                image_dim,
                rerank.max(FOUND_PER_QUERY),
                None,
            )
            .into_iter()
            .map(|(i, _)| i)
            .collect();
            let window = &nearest[..rerank.min(nearest.len())];
            let mut order: Vec<usize> =
                rank_by_likelihood(model, &query.tokens, &embeddings, window)
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect();
            order.extend_from_slice(&nearest[window.len()..]);
            invert_ranks.push(match order.iter().position(|&i| i == target) {
                Some(position) => position + 1,
                None => rank_of(&scores, target),
            });
            invert_found.push(
                order
                    .iter()
                    .take(FOUND_PER_QUERY)
                    .map(|&i| features.rows[by_image[i].0 as usize].image_id.clone())
                    .collect(),
            );
        }
        ctx.progress.inc(chunk.len() as u64);
    }

    // The direct baseline: caption embedding (mean word embedding) against image embedding.
    let words = word_matrix(&trained);
    let word_dim = model.config.embed_dim as usize;
    let embed_ranks: Vec<usize> = if word_dim == image_dim {
        queries
            .iter()
            .map(|q| {
                let query = mean_word_embedding(&words, word_dim, &q.tokens);
                let scores = cosine_scores(&query, &image_vectors, image_dim);
                rank_of(&scores, target_of[&q.image_row])
            })
            .collect()
    } else {
        Vec::new()
    };
    for (method, ranks) in [
        ("invert", &invert_ranks),
        ("invert_nearest", &nearest_ranks),
        ("embed", &embed_ranks),
    ] {
        if ranks.is_empty() {
            continue;
        }
        let r = RetrievalMetrics::from_ranks(ranks);
        metrics.push(metric("r1", method, r.r1));
        metrics.push(metric("r5", method, r.r5));
        metrics.push(metric("r10", method, r.r10));
        metrics.push(metric("median_rank", method, r.median_rank));
        metrics.push(metric("queries", method, r.queries as f64));
    }

    // Image→image sanity: do nearest neighbours in embedding space have similar captions?
    let neighbour_bleu = neighbour_caption_bleu(&image_vectors, image_dim, &references, false)?;
    let shifted_bleu = neighbour_caption_bleu(&image_vectors, image_dim, &references, true)?;
    metrics.push(metric(
        "neighbour_caption_bleu1",
        "image_nn",
        neighbour_bleu,
    ));
    metrics.push(metric(
        "neighbour_caption_bleu1",
        "unrelated_image",
        shifted_bleu,
    ));

    write_metrics(&ctx.out_dir.join(METRICS_TABLE), &metrics)?;
    write_examples(
        &ctx.out_dir.join(EXAMPLES_TABLE),
        &trained,
        &features,
        &by_image,
        &greedy,
        &beam,
    )?;
    write_ranks(
        &ctx.out_dir.join(RANKS_TABLE),
        &trained,
        &queries,
        &invert_ranks,
        &invert_found,
        &embed_ranks,
    )?;

    let get = |name: &str, method: &str| {
        metrics
            .iter()
            .find(|m| m.name == name && m.method == method)
            .map(|m| m.value)
            .unwrap_or(f64::NAN)
    };
    Ok(StageReport {
        device: None,
        warnings: Vec::new(),
        notes: vec![
            format!(
                "{split}: BLEU-4 greedy {:.3}, beam {:.3} ({} images)",
                get("bleu4", "greedy"),
                get("bleu4", "beam"),
                by_image.len()
            ),
            format!(
                "caption→image by inversion: R@1 {:.3}, R@5 {:.3}, R@10 {:.3}, median rank {} ({} queries)",
                get("r1", "invert"),
                get("r5", "invert"),
                get("r10", "invert"),
                get("median_rank", "invert"),
                invert_ranks.len()
            ),
        ],
    })
}

/// A caption's words: its tokens without `<start>` and `<end>`.
pub fn words_of(tokens: &[u32]) -> Vec<u32> {
    tokens
        .iter()
        .copied()
        .filter(|&t| {
            t != onenet_stages::captions::START_ID
                && t != onenet_stages::captions::END_ID
                && t != onenet_stages::captions::PAD_ID
        })
        .collect()
}

/// BLEU-1 of each image's nearest neighbour's first caption against the image's own captions
/// (or, with `unrelated`, of the next image in split order: the chance level to compare with).
fn neighbour_caption_bleu(
    vectors: &[f32],
    dim: usize,
    references: &[Vec<Vec<u32>>],
    unrelated: bool,
) -> Result<f64, StageError> {
    let n = references.len();
    if n < 2 {
        return Ok(f64::NAN);
    }
    let mut hypotheses = Vec::with_capacity(n);
    for i in 0..n {
        let other = if unrelated {
            (i + 1) % n
        } else {
            onenet_stages::metrics::top_k_cosine(
                &vectors[i * dim..(i + 1) * dim],
                vectors,
                dim,
                1,
                Some(i),
            )
            .first()
            .map(|(j, _)| *j)
            .unwrap_or((i + 1) % n)
        };
        hypotheses.push(references[other][0].clone());
    }
    corpus_bleu(references, &hypotheses, 1)
        .map(|s| s.get(1).unwrap_or(0.0))
        .map_err(|e| StageError::Input(format!("BLEU: {e}")))
}

fn write_metrics(path: &Path, metrics: &[Metric]) -> Result<(), StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("metric", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            metrics.iter().map(|m| &m.name),
        )),
        Arc::new(StringArray::from_iter_values(
            metrics.iter().map(|m| &m.method),
        )),
        Arc::new(StringArray::from_iter_values(
            metrics.iter().map(|m| &m.split),
        )),
        Arc::new(Float64Array::from_iter_values(
            metrics.iter().map(|m| m.value),
        )),
    ];
    write_parquet(path, &batch(path, schema, columns)?)
}

fn write_examples(
    path: &Path,
    trained: &TrainedModel,
    features: &FeatureMatrix,
    by_image: &[(u32, Vec<&Pair>)],
    greedy: &[Vec<u32>],
    beam: &[Vec<u32>],
) -> Result<(), StageError> {
    let vocab = &trained.vocab;
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("greedy", DataType::Utf8, false),
        Field::new("beam", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            by_image
                .iter()
                .map(|(r, _)| &features.rows[*r as usize].image_id),
        )),
        Arc::new(StringArray::from_iter_values(
            by_image
                .iter()
                .map(|(r, _)| &features.rows[*r as usize].path),
        )),
        Arc::new(StringArray::from_iter_values(
            greedy.iter().map(|t| vocab.decode(t)),
        )),
        Arc::new(StringArray::from_iter_values(
            beam.iter().map(|t| vocab.decode(t)),
        )),
        Arc::new(StringArray::from_iter_values(
            by_image
                .iter()
                .map(|(_, caps)| vocab.decode(&caps[0].tokens)),
        )),
    ];
    write_parquet(path, &batch(path, schema, columns)?)
}

fn write_ranks(
    path: &Path,
    trained: &TrainedModel,
    queries: &[&Pair],
    invert_ranks: &[usize],
    invert_found: &[Vec<String>],
    embed_ranks: &[usize],
) -> Result<(), StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Utf8, false),
        Field::new("caption_no", DataType::UInt32, false),
        Field::new("caption", DataType::Utf8, false),
        Field::new("invert_rank", DataType::UInt32, false),
        Field::new(
            "invert_found",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
        Field::new("embed_rank", DataType::UInt32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            queries.iter().map(|q| &q.image_id),
        )),
        Arc::new(UInt32Array::from_iter_values(
            queries.iter().map(|q| q.caption_no),
        )),
        Arc::new(StringArray::from_iter_values(
            queries.iter().map(|q| trained.vocab.decode(&q.tokens)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            invert_ranks.iter().map(|&r| r as u32),
        )),
        string_list_column(invert_found),
        Arc::new(UInt32Array::from(
            (0..queries.len())
                .map(|i| embed_ranks.get(i).map(|&r| r as u32))
                .collect::<Vec<_>>(),
        )),
    ];
    write_parquet(path, &batch(path, schema, columns)?)
}
