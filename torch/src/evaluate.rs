//! Stage kind `evaluate`: measures the trained network on the test split — BLEU-1..4, CIDEr-D and
//! ROUGE-L of greedy and beam-search captions, computed on words (the generated words against the
//! references' own words, where a generated `<unk>` matches nothing), caption→image retrieval by
//! model inversion and by a direct embedding baseline (R@1/5/10, median rank), and an image→image
//! sanity figure, and, given the demo's scenes, the fraction of captions true of their picture —
//! and writes them as a metrics table, with example captions, per-image scores
//! and per-query ranks and found images.

use std::hash::Hash;

use tch::Tensor;

use crate::embed::{flatten, mean_word_embedding, word_matrix};
use crate::features::FeatureMatrix;
use crate::input_dir;
use crate::model::{invert, rank_by_likelihood_batch};
use crate::runtime::Runtime;
use crate::train::{captions_by_image, reference_words_of, TrainedModel};
use onenet_stages::captions::{self, read_reference_words, CaptionWord, CAPTIONS_TABLE};
use onenet_stages::coco_metrics::{cider_d, rouge_l};
use onenet_stages::demo_data::truth::{caption_is_true, read_truth};
use onenet_stages::metrics::{
    corpus_bleu, rank_of, smoothed_sentence_bleu, RetrievalMetrics, SimilarityIndex,
};
use onenet_stages::specs::evaluate::{
    write_examples, write_metrics, write_per_image, write_ranks, Example, ImageScores, Metric, Rank,
};
use onenet_stages::specs::{self, order::read_pairs, order::Pair};
use onenet_stages::{StageContext, StageError, StageReport};

/// How many images the ranks table lists as found by inversion for each query, best first.
const FOUND_PER_QUERY: usize = 5;

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let p = &ctx.params;
    let device = Runtime::for_stage(ctx)?.device;
    let split = p.str("split")?.to_string();
    let trained = TrainedModel::load(input_dir(ctx, &specs::train::KIND)?, device)?;
    let features = FeatureMatrix::read(input_dir(ctx, &specs::features::KIND)?, device)?;
    let pairs = read_pairs(input_dir(ctx, &specs::order::KIND)?)?;
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

    // Captions: greedy and beam search, each for all images at once.
    let rows: Vec<i64> = by_image.iter().map(|(r, _)| *r as i64).collect();
    let image_index = Tensor::from_slice(&rows).to_device(device);
    let embeddings =
        tch::no_grad(|| model.encode_images(&features.features.index_select(0, &image_index)));
    let greedy = model.greedy(&embeddings, max_length);
    ctx.progress.start(by_image.len() as u64, "beam search");
    let width = p.int("beam_width")? as usize;
    let beam =
        model.beam_search_batch(&embeddings, width, max_length, &mut |n| ctx.progress.inc(n));
    // Every caption metric compares words: the references' own, read from the captions table,
    // so that a word the vocabulary turned into <unk> is still itself there.
    let words_by_caption =
        read_reference_words(&input_dir(ctx, &captions::KIND)?.join(CAPTIONS_TABLE))?;
    let references: Vec<Vec<Vec<CaptionWord>>> = by_image
        .iter()
        .map(|(_, caps)| reference_words_of(caps, &words_by_caption))
        .collect::<Result<_, _>>()?;
    let vocab = &trained.vocab;
    let greedy_words: Vec<Vec<CaptionWord>> =
        greedy.iter().map(|ids| vocab.caption_words(ids)).collect();
    let beam_words: Vec<Vec<CaptionWord>> =
        beam.iter().map(|ids| vocab.caption_words(ids)).collect();
    // With the demo's scenes: is each caption true of its picture?
    let truth = match ctx.inputs.iter().find(|input| input.kind == "demo_data") {
        Some(demo) => Some(read_truth(&demo.dir)?),
        None => None,
    };
    if let Some(truth) = &truth {
        for (method, hypotheses) in [("greedy", &greedy_words), ("beam", &beam_words)] {
            let mut right = 0usize;
            for ((row, _), words) in by_image.iter().zip(hypotheses) {
                let id = &features.rows[*row as usize].image_id;
                let scene = truth.get(id).ok_or_else(|| {
                    StageError::Input(format!(
                        "image {id} is not in the demo's scenes table: the `demo_data` input \
                         must be the dataset the features were computed from"
                    ))
                })?;
                let text = joined(words);
                right += usize::from(caption_is_true(scene, &text.split(' ').collect::<Vec<_>>()));
            }
            metrics.push(metric(
                "truth_accuracy",
                method,
                right as f64 / by_image.len() as f64,
            ));
        }
    }
    let scoring = |e: onenet_stages::metrics::CorpusError| StageError::Input(e.to_string());
    // Per image and decoding: (smoothed sentence BLEU-4, CIDEr-D).
    let mut per_image: Vec<Vec<(f64, f64)>> = Vec::new();
    for (method, hypotheses) in [("greedy", &greedy_words), ("beam", &beam_words)] {
        let bleu = corpus_bleu(&references, hypotheses, 4).map_err(scoring)?;
        for n in 1..=4 {
            metrics.push(metric(
                &format!("bleu{n}"),
                method,
                bleu.get(n).unwrap_or(0.0),
            ));
        }
        let cider = cider_d(&references, hypotheses).map_err(scoring)?;
        metrics.push(metric("cider_d", method, cider.corpus));
        let rouge = rouge_l(&references, hypotheses).map_err(scoring)?;
        metrics.push(metric("rouge_l", method, rouge.corpus));
        let sentence_bleu4 = references
            .iter()
            .zip(hypotheses)
            .map(|(refs, hypothesis)| {
                smoothed_sentence_bleu(refs, hypothesis, 4).map(|scores| scores[3])
            })
            .collect::<Result<Vec<f64>, _>>()
            .map_err(scoring)?;
        per_image.push(sentence_bleu4.into_iter().zip(cider.per_image).collect());
    }

    // Retrieval: each query caption against every image of the split.
    let queries = spread_queries(&by_image, p.int("queries")? as usize, p.int("seed")? as u64);
    let target_of: std::collections::HashMap<u32, usize> = by_image
        .iter()
        .enumerate()
        .map(|(i, (r, _))| (*r, i))
        .collect();
    let image_dim = embeddings.size()[1] as usize;
    // The split's images, in `by_image` order, by image id.
    let images = SimilarityIndex::new(
        by_image
            .iter()
            .map(|(r, _)| features.rows[*r as usize].image_id.clone())
            .collect(),
        flatten(&embeddings),
        image_dim,
    );

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
        // Each query's scores against every image and its nearest `rerank` images (at least the
        // ones listed); then all queries' nearest re-ordered by likelihood in one pass.
        let found: Vec<(Vec<f32>, Vec<usize>)> = (0..chunk.len())
            .map(|q| {
                let found = &z[q * image_dim..(q + 1) * image_dim];
                let nearest = images
                    .nearest(found, rerank.max(FOUND_PER_QUERY), None)
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect();
                (images.scores(found), nearest)
            })
            .collect();
        let windows: Vec<(&[u32], &[usize])> = chunk
            .iter()
            .zip(&found)
            .map(|(query, (_, nearest))| {
                (
                    query.tokens.as_slice(),
                    &nearest[..rerank.min(nearest.len())],
                )
            })
            .collect();
        let reranked = rank_by_likelihood_batch(model, &windows, &embeddings);
        for ((query, (scores, nearest)), ranked) in chunk.iter().zip(&found).zip(reranked) {
            let target = target_of[&query.image_row];
            nearest_ranks.push(rank_of(scores, target));
            let window = ranked.len();
            let mut order: Vec<usize> = ranked.into_iter().map(|(i, _)| i).collect();
            order.extend_from_slice(&nearest[window..]);
            invert_ranks.push(match order.iter().position(|&i| i == target) {
                Some(position) => position + 1,
                None => rank_of(scores, target),
            });
            invert_found.push(
                order
                    .iter()
                    .take(FOUND_PER_QUERY)
                    .map(|&i| images.id(i).to_string())
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
                rank_of(&images.scores(&query), target_of[&q.image_row])
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
    let neighbour_bleu = neighbour_caption_bleu(&images, &references, false)?;
    let shifted_bleu = neighbour_caption_bleu(&images, &references, true)?;
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

    write_metrics(&ctx.out_dir, &metrics)?;
    let examples: Vec<Example> = by_image
        .iter()
        .zip(greedy.iter().zip(&beam))
        .map(|((row, captions), (greedy, beam))| {
            let row = &features.rows[*row as usize];
            Example {
                image_id: row.image_id.clone(),
                path: row.path.clone(),
                greedy: vocab.decode(greedy),
                beam: vocab.decode(beam),
                reference: vocab.decode(&captions[0].tokens),
            }
        })
        .collect();
    let scores: Vec<ImageScores> = examples
        .iter()
        .zip(&references)
        .enumerate()
        .map(|(i, (example, refs))| ImageScores {
            image_id: example.image_id.clone(),
            path: example.path.clone(),
            greedy: example.greedy.clone(),
            beam: example.beam.clone(),
            references: refs.iter().map(|r| joined(r)).collect(),
            bleu4_greedy: per_image[0][i].0,
            bleu4_beam: per_image[1][i].0,
            cider_d_greedy: per_image[0][i].1,
            cider_d_beam: per_image[1][i].1,
        })
        .collect();
    write_per_image(&ctx.out_dir, &scores)?;
    write_examples(&ctx.out_dir, &examples)?;
    let ranks: Vec<Rank> = queries
        .iter()
        .zip(invert_ranks.iter().zip(invert_found))
        .enumerate()
        .map(|(i, (query, (&invert_rank, invert_found)))| Rank {
            image_id: query.image_id.clone(),
            caption_no: query.caption_no,
            caption: vocab.decode(&query.tokens),
            invert_rank: invert_rank as u32,
            invert_found,
            embed_rank: embed_ranks.get(i).map(|&r| r as u32),
        })
        .collect();
    write_ranks(&ctx.out_dir, &ranks)?;

    let get = |name: &str, method: &str| {
        metrics
            .iter()
            .find(|m| m.name == name && m.method == method)
            .map(|m| m.value)
            .unwrap_or(f64::NAN)
    };
    Ok(StageReport {
        device: None,
        metrics: specs::evaluate::headline(&metrics),
        warnings: Vec::new(),
        notes: [
            truth.as_ref().map(|_| {
                format!(
                    "{split}: captions true of their picture (colour, shape, count): greedy \
                     {:.3}, beam {:.3}",
                    get("truth_accuracy", "greedy"),
                    get("truth_accuracy", "beam")
                )
            }),
            Some(format!(
                "{split}: BLEU-4 greedy {:.3}, beam {:.3}; CIDEr-D greedy {:.3}, beam {:.3} ({} images)",
                get("bleu4", "greedy"),
                get("bleu4", "beam"),
                get("cider_d", "greedy"),
                get("cider_d", "beam"),
                by_image.len()
            )),
            Some(format!(
                "caption→image by inversion: R@1 {:.3}, R@5 {:.3}, R@10 {:.3}, median rank {} ({} queries)",
                get("r1", "invert"),
                get("r5", "invert"),
                get("r10", "invert"),
                get("median_rank", "invert"),
                invert_ranks.len()
            )),
        ]
        .into_iter()
        .flatten()
        .collect(),
    })
}

/// The retrieval queries: every caption of the split when `limit` is 0 or at least their
/// number (the standard protocol: 5,000 queries for Flickr8k's 1,000 test images); otherwise
/// `limit` captions spread evenly over the images — images in a seeded random order, one caption
/// of each per round (a seeded random one of those not yet taken) — so that as many images as
/// possible are queried for. The result lists the chosen captions image by image.
fn spread_queries<'a>(by_image: &[(u32, Vec<&'a Pair>)], limit: usize, seed: u64) -> Vec<&'a Pair> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let total: usize = by_image.iter().map(|(_, captions)| captions.len()).sum();
    let in_order = || {
        by_image
            .iter()
            .flat_map(|(_, captions)| captions.iter().copied())
    };
    if limit == 0 || limit >= total {
        return in_order().collect();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut images: Vec<usize> = (0..by_image.len()).collect();
    images.shuffle(&mut rng);
    let mut remaining: Vec<Vec<usize>> = by_image
        .iter()
        .map(|(_, captions)| {
            let mut order: Vec<usize> = (0..captions.len()).collect();
            order.shuffle(&mut rng);
            order
        })
        .collect();
    let mut chosen: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
    while chosen.len() < limit {
        for &image in &images {
            if let Some(caption) = remaining[image].pop() {
                chosen.insert((image, caption));
                if chosen.len() == limit {
                    break;
                }
            }
        }
    }
    by_image
        .iter()
        .enumerate()
        .flat_map(|(image, (_, captions))| {
            let chosen = &chosen;
            captions
                .iter()
                .enumerate()
                .filter(move |(caption, _)| chosen.contains(&(image, *caption)))
                .map(|(_, pair)| *pair)
        })
        .collect()
}

/// Words joined by spaces, a generated `<unk>` written as such.
fn joined(words: &[CaptionWord]) -> String {
    words
        .iter()
        .map(|word| match word {
            CaptionWord::Word(word) => word.as_str(),
            CaptionWord::Unknown => captions::UNK,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// BLEU-1 of each image's nearest neighbour's first caption against the image's own captions
/// (or, with `unrelated`, of the next image in split order: the chance level to compare with).
fn neighbour_caption_bleu<T: Eq + Hash + Clone>(
    images: &SimilarityIndex,
    references: &[Vec<Vec<T>>],
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
            images
                .neighbours(i, 1, |_| true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(image_row: u32, caption_no: u32) -> Pair {
        Pair {
            image_id: format!("{image_row}.jpg"),
            image_row,
            caption_no,
            split: "test".into(),
            tokens: vec![1, 2],
        }
    }

    #[test]
    fn queries_spread_over_every_image_before_any_second_caption() {
        let pairs: Vec<Pair> = (0..10)
            .flat_map(|i| (0..5).map(move |c| pair(i, c)))
            .collect();
        let refs: Vec<&Pair> = pairs.iter().collect();
        let by_image = captions_by_image(&refs);
        // All of them by default, in split order.
        assert_eq!(spread_queries(&by_image, 0, 7).len(), 50);
        assert_eq!(spread_queries(&by_image, 80, 7).len(), 50);
        // 23 queries: every image queried twice, three of them three times; split order.
        let some = spread_queries(&by_image, 23, 7);
        assert_eq!(some.len(), 23);
        let mut per_image = [0usize; 10];
        for q in &some {
            per_image[q.image_row as usize] += 1;
        }
        assert!(per_image.iter().all(|&n| n == 2 || n == 3), "{per_image:?}");
        assert_eq!(per_image.iter().filter(|&&n| n == 3).count(), 3);
        let keys: Vec<(u32, u32)> = some.iter().map(|q| (q.image_row, q.caption_no)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // Seeded: the same seed picks the same captions, another seed others.
        let again: Vec<(u32, u32)> = spread_queries(&by_image, 23, 7)
            .iter()
            .map(|q| (q.image_row, q.caption_no))
            .collect();
        assert_eq!(keys, again);
        let other: Vec<(u32, u32)> = spread_queries(&by_image, 23, 8)
            .iter()
            .map(|q| (q.image_row, q.caption_no))
            .collect();
        assert_ne!(keys, other);
    }
}
