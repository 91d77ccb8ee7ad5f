//! CIDEr-D and ROUGE-L of generated captions, as the COCO caption evaluation code computes them
//! (the `Cider` and `Rouge` scorers of the `pycocoevalcap` package, which published captioning
//! results report), on captions that are already tokenised.
//!
//! - CIDEr-D: Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image Description
//!   Evaluation" (CVPR 2015), in the variant the COCO code implements: TF-IDF vectors of the
//!   n-grams of orders 1..=4, document frequencies counted over the reference sets of the scored
//!   corpus, the candidate's weights clipped by each reference's, a Gaussian penalty (sigma 6) on
//!   the length difference, and a factor of 10.
//! - ROUGE-L: Lin, "ROUGE: A Package for Automatic Evaluation of Summaries" (2004), the
//!   longest-common-subsequence F-measure with beta 1.2, from the best precision and the best
//!   recall over an image's references.
//!
//! Both give one score per image and the corpus score as their mean. The tests compare them with
//! the COCO code to 1e-6; the quirks of that code that matter for equal numbers are kept and
//! named where they are implemented. Tokenising is the caller's: the COCO code's own tokenizer
//! needs Java, and the pipeline scores the words of its own tokenizer.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde::Serialize;

use crate::metrics::{ngram_counts, CorpusError};

/// The longest n-grams CIDEr-D counts.
pub const CIDER_MAX_N: usize = 4;
/// The standard deviation, in tokens, of CIDEr-D's Gaussian length penalty.
pub const CIDER_SIGMA: f64 = 6.0;
/// CIDEr-D's scale factor: the scores are 10 times the mean cosine similarity.
pub const CIDER_SCALE: f64 = 10.0;
/// ROUGE-L's beta: recall weighs 1.2 times as much as precision.
pub const ROUGE_BETA: f64 = 1.2;

/// A metric's score for each image of a corpus and for the corpus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusScores {
    /// The mean of `per_image`.
    pub corpus: f64,
    /// One score per hypothesis, in input order.
    pub per_image: Vec<f64>,
}

impl CorpusScores {
    fn from_per_image(per_image: Vec<f64>) -> CorpusScores {
        let corpus = per_image.iter().sum::<f64>() / per_image.len() as f64;
        CorpusScores { corpus, per_image }
    }
}

/// Checks that every hypothesis has a non-empty reference set and that there is one.
fn check_corpus<T>(references: &[Vec<Vec<T>>], hypotheses: &[Vec<T>]) -> Result<(), CorpusError> {
    if references.len() != hypotheses.len() {
        return Err(CorpusError::LengthMismatch {
            references: references.len(),
            hypotheses: hypotheses.len(),
        });
    }
    if hypotheses.is_empty() {
        return Err(CorpusError::EmptyCorpus);
    }
    match references.iter().position(Vec::is_empty) {
        Some(index) => Err(CorpusError::NoReferences { index }),
        None => Ok(()),
    }
}

/// CIDEr-D of each hypothesis (`hypotheses[i]` against every caption in `references[i]`) and of
/// the corpus, as the COCO evaluation code's `Cider` scorer computes it, in its units: 0 for
/// nothing in common, about 10 for a hypothesis that equals all its references.
///
/// For an n-gram g of order n in a caption, its weight is `tf(g) * (ln(I) - ln(max(1, df(g))))`,
/// where `tf` is its count in the caption, `I` the number of images in the corpus and `df` the
/// number of images whose references (taken together) contain it; a hypothesis n-gram no
/// reference has gets the full `ln(I)`. Per order, the similarity of the hypothesis h to a
/// reference r is `sum_g min(h_g, r_g) * r_g / (|h| |r|)` (the sum alone when either norm is 0),
/// times `exp(-delta^2 / (2 * 6^2))`. The image's score is 10 times the mean over orders 1..=4 of
/// the mean over its references.
///
/// As in the COCO code, `delta` is the difference in the number of *bigrams* of the two
/// captions (its length count looks at order 2), which equals the difference in tokens unless a
/// caption has fewer than two.
///
/// # Errors
/// [`CorpusError`] when the lists differ in length, are empty, or a hypothesis has no reference.
pub fn cider_d<T: Eq + Hash>(
    references: &[Vec<Vec<T>>],
    hypotheses: &[Vec<T>],
) -> Result<CorpusScores, CorpusError> {
    check_corpus(references, hypotheses)?;
    // Document frequency: in how many images' reference sets each n-gram occurs.
    let mut document_frequency: HashMap<&[T], f64> = HashMap::new();
    for refs in references {
        let mut seen: HashSet<&[T]> = HashSet::new();
        for reference in refs {
            for n in 1..=CIDER_MAX_N {
                seen.extend(ngram_counts(reference, n).into_keys());
            }
        }
        for gram in seen {
            *document_frequency.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_images = (references.len() as f64).ln();

    let per_image = references
        .iter()
        .zip(hypotheses)
        .map(|(refs, hypothesis)| {
            let hypothesis = TfIdf::new(hypothesis, &document_frequency, log_images);
            let mut per_order = [0.0f64; CIDER_MAX_N];
            for reference in refs {
                let reference = TfIdf::new(reference, &document_frequency, log_images);
                for (sum, similarity) in per_order.iter_mut().zip(hypothesis.similarity(&reference))
                {
                    *sum += similarity;
                }
            }
            let mean_over_orders = per_order.iter().sum::<f64>() / CIDER_MAX_N as f64;
            mean_over_orders / refs.len() as f64 * CIDER_SCALE
        })
        .collect();
    Ok(CorpusScores::from_per_image(per_image))
}

/// A caption's TF-IDF n-gram weights, one map per order, with their Euclidean norms and the
/// caption's bigram count (CIDEr-D's length).
///
/// Every sum runs over the n-grams in the order they first occur in the caption (`grams`), never
/// in a hash map's order, which differs from process to process: floating-point addition is not
/// associative, so the same captions would otherwise score differently in their last bits from
/// one run to the next, and a stage's output would not be the same bytes twice.
struct TfIdf<'a, T> {
    /// Per order, each distinct n-gram in order of first occurrence, with its weight.
    grams: Vec<Vec<(&'a [T], f64)>>,
    weights: Vec<HashMap<&'a [T], f64>>,
    norms: Vec<f64>,
    bigrams: u64,
}

impl<'a, T: Eq + Hash> TfIdf<'a, T> {
    fn new(tokens: &'a [T], document_frequency: &HashMap<&[T], f64>, log_images: f64) -> Self {
        let mut grams = Vec::with_capacity(CIDER_MAX_N);
        let mut weights = Vec::with_capacity(CIDER_MAX_N);
        let mut norms = Vec::with_capacity(CIDER_MAX_N);
        let mut bigrams = 0;
        for n in 1..=CIDER_MAX_N {
            let counts = ngram_counts(tokens, n);
            if n == 2 {
                bigrams = tokens.windows(n).count() as u64;
            }
            let mut seen = HashSet::new();
            let ordered: Vec<(&[T], f64)> = tokens
                .windows(n)
                .filter(|gram| seen.insert(*gram))
                .map(|gram| {
                    let count = counts.get(gram).copied().unwrap_or(0);
                    let df = document_frequency.get(gram).copied().unwrap_or(0.0);
                    (gram, count as f64 * (log_images - df.max(1.0).ln()))
                })
                .collect();
            norms.push(ordered.iter().map(|(_, w)| w * w).sum::<f64>().sqrt());
            weights.push(ordered.iter().copied().collect());
            grams.push(ordered);
        }
        TfIdf {
            grams,
            weights,
            norms,
            bigrams,
        }
    }

    /// The length-penalised, clipped cosine similarity of `self` (the hypothesis) to `reference`,
    /// per order.
    fn similarity(&self, reference: &TfIdf<T>) -> Vec<f64> {
        let delta = self.bigrams as f64 - reference.bigrams as f64;
        let penalty = (-(delta * delta) / (2.0 * CIDER_SIGMA * CIDER_SIGMA)).exp();
        (0..CIDER_MAX_N)
            .map(|order| {
                let reference_weights = &reference.weights[order];
                let mut value: f64 = self.grams[order]
                    .iter()
                    .map(|(gram, weight)| {
                        let theirs = reference_weights.get(gram).copied().unwrap_or(0.0);
                        // Clipping: a hypothesis n-gram counts no more than the reference has it.
                        weight.min(theirs) * theirs
                    })
                    .sum();
                let norms = self.norms[order] * reference.norms[order];
                if norms != 0.0 {
                    value /= norms;
                }
                value * penalty
            })
            .collect()
    }
}

/// ROUGE-L of each hypothesis against its references and of the corpus, as the COCO evaluation
/// code's `Rouge` scorer computes it: in [0, 1], 1 when the hypothesis equals a reference.
///
/// With `lcs` the length of the longest common subsequence of the hypothesis and a reference,
/// precision is `lcs / hypothesis length` and recall `lcs / reference length`; taking the largest
/// precision P and the largest recall R over the references (possibly of different ones), the
/// score is `(1 + b^2) P R / (R + b^2 P)` with b = 1.2, or 0 when P or R is 0.
///
/// As in the COCO code, which splits the caption text on single spaces, an empty caption counts
/// as one empty token: it has length 1 and matches only another empty caption.
///
/// # Errors
/// [`CorpusError`] when the lists differ in length, are empty, or a hypothesis has no reference.
pub fn rouge_l<T: Eq>(
    references: &[Vec<Vec<T>>],
    hypotheses: &[Vec<T>],
) -> Result<CorpusScores, CorpusError> {
    check_corpus(references, hypotheses)?;
    let per_image = references
        .iter()
        .zip(hypotheses)
        .map(|(refs, hypothesis)| {
            let mut precision = 0.0f64;
            let mut recall = 0.0f64;
            for reference in refs {
                let common = match (hypothesis.is_empty(), reference.is_empty()) {
                    (true, true) => 1,
                    (true, false) | (false, true) => 0,
                    (false, false) => longest_common_subsequence(reference, hypothesis),
                } as f64;
                precision = precision.max(common / hypothesis.len().max(1) as f64);
                recall = recall.max(common / reference.len().max(1) as f64);
            }
            if precision == 0.0 || recall == 0.0 {
                0.0
            } else {
                let beta2 = ROUGE_BETA * ROUGE_BETA;
                (1.0 + beta2) * precision * recall / (recall + beta2 * precision)
            }
        })
        .collect();
    Ok(CorpusScores::from_per_image(per_image))
}

/// The length of the longest common subsequence of `a` and `b`, by dynamic programming over one
/// row at a time (O(|a| |b|) time, O(|b|) memory).
fn longest_common_subsequence<T: Eq>(a: &[T], b: &[T]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde::Deserialize;

    use super::*;

    /// How far a score may be from the COCO code's.
    const TOLERANCE: f64 = 1e-6;

    fn words(sentence: &str) -> Vec<String> {
        sentence.split_whitespace().map(str::to_string).collect()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= TOLERANCE,
            "{what}: got {actual}, expected {expected}"
        );
    }

    #[derive(Serialize)]
    struct Corpus {
        references: Vec<Vec<Vec<String>>>,
        hypotheses: Vec<Vec<String>>,
    }

    /// `images` images with 5 references each over a vocabulary of `vocabulary` words, so that
    /// n-grams collide; hypotheses are sometimes empty, sometimes a copy of a reference, sometimes
    /// a reference with a word changed, otherwise random.
    fn random_corpus(seed: u64, images: usize, vocabulary: usize) -> Corpus {
        const WORDS: [&str; 16] = [
            "a", "dog", "runs", "on", "the", "grass", "red", "circle", "above", "small", "two",
            "cats", "sit", "near", "blue", "square",
        ];
        let words = &WORDS[..vocabulary.min(WORDS.len())];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sentence = |rng: &mut ChaCha8Rng, shortest: usize| -> Vec<String> {
            let length = rng.gen_range(shortest..=14);
            (0..length)
                .map(|_| words[rng.gen_range(0..words.len())].to_string())
                .collect()
        };
        let mut references = Vec::with_capacity(images);
        let mut hypotheses = Vec::with_capacity(images);
        for _ in 0..images {
            let refs: Vec<Vec<String>> = (0..5).map(|_| sentence(&mut rng, 1)).collect();
            let hypothesis = match rng.gen_range(0..10) {
                0 => Vec::new(),
                1 => refs[rng.gen_range(0..5)].clone(),
                2 => {
                    let mut changed = refs[0].clone();
                    let at = rng.gen_range(0..changed.len());
                    changed[at] = "zebra".to_string();
                    changed
                }
                _ => sentence(&mut rng, 1),
            };
            references.push(refs);
            hypotheses.push(hypothesis);
        }
        Corpus {
            references,
            hypotheses,
        }
    }

    /// The COCO code's `Cider` and `Rouge` scorers over corpora read as JSON from stdin, fed the
    /// tokens joined by spaces (its tokenizer, which needs Java, is not used).
    const COCO_SCRIPT: &str = r#"
import json, sys
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
out = []
for corpus in json.load(sys.stdin):
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(corpus["references"])}
    res = {i: [" ".join(h)] for i, h in enumerate(corpus["hypotheses"])}
    scores = {}
    for name, scorer in [("cider", Cider()), ("rouge", Rouge())]:
        corpus_score, per_image = scorer.compute_score(gts, res)
        scores[name] = {"corpus": float(corpus_score), "per_image": [float(s) for s in per_image]}
    out.append(scores)
json.dump(out, sys.stdout)
"#;

    #[derive(Deserialize)]
    struct Expected {
        corpus: f64,
        per_image: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct CocoScores {
        cider: Expected,
        rouge: Expected,
    }

    fn assert_scores(actual: &CorpusScores, expected: &Expected, what: &str) {
        assert_close(actual.corpus, expected.corpus, &format!("{what} corpus"));
        assert_eq!(actual.per_image.len(), expected.per_image.len(), "{what}");
        for (image, (&got, &wanted)) in actual.per_image.iter().zip(&expected.per_image).enumerate()
        {
            assert_close(got, wanted, &format!("{what} image {image}"));
        }
    }

    #[test]
    fn cider_d_and_rouge_l_match_the_coco_code() {
        let corpora = vec![
            random_corpus(7, 60, 8),
            random_corpus(8, 50, 16),
            random_corpus(9, 80, 4),
        ];
        let expected: Vec<CocoScores> =
            crate::test_python::run_json("pycocoevalcap", COCO_SCRIPT, &corpora);
        assert_eq!(expected.len(), corpora.len());
        for (index, (corpus, wanted)) in corpora.iter().zip(&expected).enumerate() {
            let cider = cider_d(&corpus.references, &corpus.hypotheses).unwrap();
            assert_scores(&cider, &wanted.cider, &format!("corpus {index} CIDEr-D"));
            let rouge = rouge_l(&corpus.references, &corpus.hypotheses).unwrap();
            assert_scores(&rouge, &wanted.rouge, &format!("corpus {index} ROUGE-L"));
            println!(
                "corpus {index}: CIDEr-D {:.4}, ROUGE-L {:.4}",
                cider.corpus, rouge.corpus
            );
        }
    }

    #[test]
    fn rouge_l_by_hand() {
        // "a dog runs fast" against "a small dog runs": LCS "a dog runs" = 3, P 3/4, R 3/4, so
        // the F-measure is 3/4 whatever beta is.
        let scores = rouge_l(
            &[vec![words("a small dog runs")]],
            &[words("a dog runs fast")],
        )
        .unwrap();
        assert_close(scores.corpus, 0.75, "equal P and R");
        // P from one reference (2/2) and R from another (2/3): (1 + b^2) P R / (R + b^2 P).
        let scores = rouge_l(
            &[vec![words("a dog runs"), words("dog x y z w")]],
            &[words("a dog")],
        )
        .unwrap();
        let (p, r, b2) = (1.0, 2.0 / 3.0, 1.44);
        assert_close(scores.corpus, (1.0 + b2) * p * r / (r + b2 * p), "mixed");
        let nothing = rouge_l(&[vec![words("a dog")]], &[Vec::new()]).unwrap();
        assert_eq!(nothing.per_image, vec![0.0]);
    }

    #[test]
    fn cider_d_rewards_consensus_and_ignores_words_every_image_has() {
        let references = vec![
            vec![words("a red circle"), words("a red circle above")],
            vec![words("a blue square"), words("a blue square below")],
        ];
        let good = vec![words("a red circle"), words("a blue square")];
        let scores = cider_d(&references, &good).unwrap();
        assert!(scores.per_image.iter().all(|&s| s > 1.0), "{scores:?}");
        // Swapped captions share only "a", which every image has: its weight is ln(2) - ln(2).
        let swapped = vec![words("a blue square"), words("a red circle")];
        let scores = cider_d(&references, &swapped).unwrap();
        assert_eq!(scores.per_image, vec![0.0, 0.0]);
        assert_eq!(scores.corpus, 0.0);
    }

    #[test]
    fn lcs_by_hand() {
        assert_eq!(longest_common_subsequence(b"abcbdab", b"bdcaba"), 4);
        assert_eq!(longest_common_subsequence(b"abc", b""), 0);
        assert_eq!(longest_common_subsequence(b"abc", b"abc"), 3);
    }

    #[test]
    fn scores_reject_what_the_coco_code_rejects() {
        let refs = vec![vec![words("a dog")]];
        assert_eq!(
            cider_d(&refs, &[]),
            Err(CorpusError::LengthMismatch {
                references: 1,
                hypotheses: 0
            })
        );
        assert_eq!(rouge_l::<String>(&[], &[]), Err(CorpusError::EmptyCorpus));
        assert_eq!(
            cider_d(&[vec![]], &[words("a dog")]),
            Err(CorpusError::NoReferences { index: 0 })
        );
    }

    /// Hash maps iterate in another order in every instance; the scores must not follow it.
    #[test]
    fn cider_d_gives_the_same_bits_every_time() {
        // Long captions of many distinct words: many terms in every sum.
        let caption = |seed: usize| -> Vec<String> {
            (0..40)
                .map(|i| format!("w{}", (i * 7 + seed * 13) % 97))
                .collect()
        };
        let references: Vec<Vec<Vec<String>>> = (0..6)
            .map(|image| (0..5).map(|r| caption(image * 5 + r)).collect())
            .collect();
        let hypotheses: Vec<Vec<String>> = (0..6).map(|image| caption(image * 5 + 2)).collect();
        let first = cider_d(&references, &hypotheses).unwrap();
        for _ in 0..50 {
            let again = cider_d(&references, &hypotheses).unwrap();
            assert_eq!(again.corpus.to_bits(), first.corpus.to_bits());
            for (a, b) in again.per_image.iter().zip(&first.per_image) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }
}
