//! Evaluation metrics for the captioning tasks: corpus BLEU exactly as NLTK computes it (and
//! NLTK's smoothed sentence BLEU, for scoring single captions), ranks and recall for cross-modal
//! retrieval, and cosine-similarity search over embedding rows (the [`SimilarityIndex`] the report
//! and the task commands share). CIDEr-D and ROUGE-L are in [`crate::coco_metrics`].
//!
//! Everything here is plain arithmetic on slices, independent of libtorch, so that a task can score
//! model outputs once the tensors are gone and the tests run on any machine.
//!
//! BLEU follows NLTK's `corpus_bleu` (no smoothing) rule for rule, because published captioning
//! numbers are usually NLTK's: the same inputs give the same scores to within rounding, including
//! NLTK's handling of empty hypotheses, hypotheses shorter than n and orders without any match.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

/// Corpus-level BLEU for every order 1..=`max_n`, with the counts it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScores {
    /// `bleu[n - 1]` is cumulative BLEU-n: the brevity penalty times the geometric mean of the
    /// modified precisions of orders 1..=n, each weighted 1/n.
    pub bleu: Vec<f64>,
    /// `matches[n - 1]`: hypothesis n-grams found in the references, summed over the corpus. Each
    /// n-gram counts at most as often as it occurs in any single reference of its hypothesis.
    pub matches: Vec<u64>,
    /// `totals[n - 1]`: hypothesis n-grams summed over the corpus, where a hypothesis with no
    /// n-gram of order n (shorter than n, or empty) still counts 1, as in NLTK. That floor is what
    /// makes a too-short hypothesis lower the corpus precision instead of being ignored.
    pub totals: Vec<u64>,
    /// Hypothesis tokens, summed over the corpus.
    pub hypothesis_length: u64,
    /// For each hypothesis the length of its reference closest in length (the shorter one on a
    /// tie), summed over the corpus.
    pub reference_length: u64,
    /// `exp(1 - reference_length / hypothesis_length)` when the hypotheses are shorter, else 1;
    /// 0 when every hypothesis is empty.
    pub brevity_penalty: f64,
}

impl BleuScores {
    /// Cumulative BLEU-n for `n` in 1..=`max_n`, or `None` outside that range.
    pub fn get(&self, n: usize) -> Option<f64> {
        n.checked_sub(1).and_then(|i| self.bleu.get(i)).copied()
    }

    /// The corpus-level modified precision of order `n` (`matches / totals`), or `None` outside
    /// 1..=`max_n`.
    pub fn precision(&self, n: usize) -> Option<f64> {
        let i = n.checked_sub(1)?;
        Some(*self.matches.get(i)? as f64 / *self.totals.get(i)? as f64)
    }
}

/// Why a corpus cannot be scored, by BLEU here or by CIDEr-D and ROUGE-L
/// ([`crate::coco_metrics`]). NLTK and the COCO evaluation code reject the same inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorpusError {
    #[error("{references} reference sets for {hypotheses} hypotheses: each hypothesis needs one")]
    LengthMismatch {
        references: usize,
        hypotheses: usize,
    },
    #[error("hypothesis {index} has no reference captions")]
    NoReferences { index: usize },
    #[error("an empty corpus has no score")]
    EmptyCorpus,
}

/// Scores a corpus of tokenised hypotheses against their reference sets (`references[i]` holds
/// every reference caption of `hypotheses[i]`) and returns BLEU-1..=`max_n`.
///
/// Matches NLTK's `corpus_bleu(references, hypotheses, weights=(1/n,)*n)` without smoothing for
/// each n:
/// - modified precision is computed at corpus level: clipped matches and hypothesis n-gram counts
///   are summed over all hypotheses before dividing;
/// - the brevity penalty compares the summed hypothesis length with the summed closest reference
///   lengths;
/// - if no unigram matches anywhere, every score is exactly 0;
/// - an order with no match at all (while unigrams do match) gets NLTK's stand-in precision, the
///   smallest normal `f64`, so its BLEU is a positive number around 1e-78 or smaller rather
///   than exactly 0.
///
/// Tokens can be anything comparable and hashable: words (`String`, `&str`) or vocabulary ids.
/// `max_n == 0` gives empty score lists.
pub fn corpus_bleu<T: Eq + Hash>(
    references: &[Vec<Vec<T>>],
    hypotheses: &[Vec<T>],
    max_n: usize,
) -> Result<BleuScores, CorpusError> {
    if references.len() != hypotheses.len() {
        return Err(CorpusError::LengthMismatch {
            references: references.len(),
            hypotheses: hypotheses.len(),
        });
    }
    if hypotheses.is_empty() {
        return Err(CorpusError::EmptyCorpus);
    }

    let mut matches = vec![0u64; max_n];
    let mut totals = vec![0u64; max_n];
    let mut hypothesis_length = 0u64;
    let mut reference_length = 0u64;
    for (index, (refs, hypothesis)) in references.iter().zip(hypotheses).enumerate() {
        let closest = closest_reference_length(refs, hypothesis.len())
            .ok_or(CorpusError::NoReferences { index })?;
        for n in 1..=max_n {
            matches[n - 1] += clipped_matches(refs, hypothesis, n);
            totals[n - 1] += ngram_total(hypothesis.len(), n).max(1);
        }
        hypothesis_length += hypothesis.len() as u64;
        reference_length += closest as u64;
    }

    let brevity_penalty = brevity_penalty(reference_length, hypothesis_length);
    let bleu = if matches.first().is_some_and(|&unigrams| unigrams == 0) {
        // NLTK returns 0 before looking at any other order: with no unigram match there can be
        // no longer match either.
        vec![0.0; max_n]
    } else {
        (1..=max_n)
            .map(|n| brevity_penalty * geometric_mean_precision(&matches[..n], &totals[..n]))
            .collect()
    };

    Ok(BleuScores {
        bleu,
        matches,
        totals,
        hypothesis_length,
        reference_length,
        brevity_penalty,
    })
}

/// The smoothing constant of NLTK's `SmoothingFunction().method1` (its default `epsilon`).
pub const SENTENCE_BLEU_EPSILON: f64 = 0.1;

/// Sentence-level BLEU-1..=`max_n` of one hypothesis against its references, smoothed as NLTK's
/// `sentence_bleu(references, hypothesis, weights=(1/n,)*n,
/// smoothing_function=SmoothingFunction().method1)` computes it for each n.
///
/// Unsmoothed BLEU-4 is practically 0 for any caption without a matching 4-gram, which is most
/// short captions, so it cannot rank single captions. NLTK's method 1 (Chen and Cherry, 2014,
/// "A Systematic Comparison of Smoothing Techniques for Sentence-Level BLEU") replaces a zero
/// match count of an order by [`SENTENCE_BLEU_EPSILON`] (0.1) before dividing by that order's
/// n-gram count (at least 1); every other rule is [`corpus_bleu`]'s, including a score of exactly 0
/// when no unigram matches.
///
/// # Errors
/// [`CorpusError::NoReferences`] (index 0) when `references` is empty.
pub fn smoothed_sentence_bleu<T: Eq + Hash>(
    references: &[Vec<T>],
    hypothesis: &[T],
    max_n: usize,
) -> Result<Vec<f64>, CorpusError> {
    let closest = closest_reference_length(references, hypothesis.len())
        .ok_or(CorpusError::NoReferences { index: 0 })?;
    let matches: Vec<u64> = (1..=max_n)
        .map(|n| clipped_matches(references, hypothesis, n))
        .collect();
    let totals: Vec<u64> = (1..=max_n)
        .map(|n| ngram_total(hypothesis.len(), n).max(1))
        .collect();
    if matches.first().is_some_and(|&unigrams| unigrams == 0) {
        return Ok(vec![0.0; max_n]);
    }
    let penalty = brevity_penalty(closest as u64, hypothesis.len() as u64);
    Ok((1..=max_n)
        .map(|n| {
            penalty
                * weighted_geometric_mean(&matches[..n], &totals[..n], |total| {
                    SENTENCE_BLEU_EPSILON / total as f64
                })
        })
        .collect())
}

/// How many n-grams a sequence of `length` tokens has.
fn ngram_total(length: usize, n: usize) -> u64 {
    (length + 1).saturating_sub(n) as u64
}

/// Occurrences of every n-gram of `tokens`, keyed by the n-gram's slice.
pub(crate) fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], u64> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// Hypothesis n-grams that occur in the references, each counted at most as often as it occurs in
/// the single reference that holds it most often, so that repeating a common word earns nothing.
fn clipped_matches<T: Eq + Hash>(references: &[Vec<T>], hypothesis: &[T], n: usize) -> u64 {
    let hypothesis_counts = ngram_counts(hypothesis, n);
    if hypothesis_counts.is_empty() {
        return 0;
    }
    let mut most_in_one_reference: HashMap<&[T], u64> = HashMap::new();
    for reference in references {
        for (gram, count) in ngram_counts(reference, n) {
            if let Some((&hypothesis_gram, _)) = hypothesis_counts.get_key_value(gram) {
                let most = most_in_one_reference.entry(hypothesis_gram).or_insert(0);
                *most = (*most).max(count);
            }
        }
    }
    hypothesis_counts
        .iter()
        .map(|(gram, &count)| count.min(most_in_one_reference.get(gram).copied().unwrap_or(0)))
        .sum()
}

/// The reference length closest to `hypothesis_length`, the shorter one on a tie; `None` for an
/// empty reference set.
fn closest_reference_length<T>(references: &[Vec<T>], hypothesis_length: usize) -> Option<usize> {
    references
        .iter()
        .map(Vec::len)
        .min_by_key(|&length| (length.abs_diff(hypothesis_length), length))
}

/// BLEU's penalty for hypotheses shorter than their references (longer ones are already punished
/// by lower precision).
fn brevity_penalty(reference_length: u64, hypothesis_length: u64) -> f64 {
    if hypothesis_length > reference_length {
        1.0
    } else if hypothesis_length == 0 {
        0.0
    } else {
        (1.0 - reference_length as f64 / hypothesis_length as f64).exp()
    }
}

/// The geometric mean of the precisions `matches[i] / totals[i]` with uniform weights, computed in
/// log space in the same order of operations as NLTK so the result agrees to the last few bits.
fn geometric_mean_precision(matches: &[u64], totals: &[u64]) -> f64 {
    // NLTK's unsmoothed BLEU replaces a zero precision by the smallest normal float so that the
    // logarithm stays finite; the score then collapses to nearly, not exactly, 0.
    weighted_geometric_mean(matches, totals, |_| f64::MIN_POSITIVE)
}

/// [`geometric_mean_precision`] with `zero_precision(total)` standing in for the precision of an
/// order without any match: the one place where BLEU's smoothing variants differ.
fn weighted_geometric_mean(
    matches: &[u64],
    totals: &[u64],
    zero_precision: impl Fn(u64) -> f64,
) -> f64 {
    let weight = 1.0 / matches.len() as f64;
    let weighted_logs = matches.iter().zip(totals).map(|(&matched, &total)| {
        let precision = if matched == 0 {
            zero_precision(total)
        } else {
            matched as f64 / total as f64
        };
        weight * precision.ln()
    });
    compensated_sum(weighted_logs).exp()
}

/// Sums with Neumaier's compensation. NLTK adds the weighted logarithms with Python's exactly
/// rounded `math.fsum`; a naive sum can differ from it in the last bits when a huge stand-in
/// logarithm meets small ones, while the compensated sum agrees with it for these few terms.
fn compensated_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sum = 0.0f64;
    let mut lost = 0.0f64;
    for value in values {
        let next = sum + value;
        // Whatever rounding dropped from the smaller operand is recovered exactly here.
        lost += if sum.abs() >= value.abs() {
            (sum - next) + value
        } else {
            (value - next) + sum
        };
        sum = next;
    }
    sum + lost
}

/// The 1-based rank of candidate `target` when the candidates are sorted by descending score.
///
/// Ties count against the target: every other candidate whose score is greater than *or equal
/// to* the target's ranks ahead of it, so a model that scores everything alike ranks last rather
/// than first. A NaN score also counts against the target: a NaN candidate ranks ahead of it, and
/// a NaN target ranks behind every other candidate.
///
/// # Panics
/// If `target` is not an index into `scores`.
pub fn rank_of(scores: &[f32], target: usize) -> usize {
    assert!(
        target < scores.len(),
        "target {target} out of range for {} candidates",
        scores.len()
    );
    let target_score = scores[target];
    let ahead = scores
        .iter()
        .enumerate()
        .filter(|&(index, score)| {
            // Anything but a clear "less than" (greater, equal, or unordered because of a NaN)
            // puts the candidate ahead.
            index != target && score.partial_cmp(&target_score) != Some(Ordering::Less)
        })
        .count();
    1 + ahead
}

/// The fraction of queries whose rank is at most `k`; NaN for no queries.
pub fn recall_at(ranks: &[usize], k: usize) -> f64 {
    ranks.iter().filter(|&&rank| rank <= k).count() as f64 / ranks.len() as f64
}

/// Summary of a retrieval evaluation over a set of queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetrievalMetrics {
    /// Recall at 1, 5 and 10: the fraction of queries whose correct item ranked at most K, in
    /// [0, 1].
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    /// The median rank; for an even number of queries, the mean of the two middle ranks.
    pub median_rank: f64,
    pub mean_rank: f64,
    /// How many queries the numbers summarise.
    pub queries: usize,
}

impl RetrievalMetrics {
    /// Summarises the 1-based rank of the correct item for each query (see [`rank_of`]).
    ///
    /// With no queries every rate and rank is NaN (undefined, and written as `null` in JSON)
    /// rather than a 0 that would look like a real result.
    ///
    /// # Panics
    /// If a rank is 0: ranks start at 1, so a 0 means the caller mixed up indices and ranks.
    pub fn from_ranks(ranks: &[usize]) -> Self {
        if let Some(query) = ranks.iter().position(|&rank| rank == 0) {
            panic!("rank 0 for query {query}: ranks are 1-based");
        }
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let middle = sorted.len() / 2;
        let median_rank = match sorted.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => sorted[middle] as f64,
            _ => (sorted[middle - 1] as f64 + sorted[middle] as f64) / 2.0,
        };
        let mean_rank = sorted.iter().map(|&rank| rank as f64).sum::<f64>() / sorted.len() as f64;
        RetrievalMetrics {
            r1: recall_at(ranks, 1),
            r5: recall_at(ranks, 5),
            r10: recall_at(ranks, 10),
            median_rank,
            mean_rank,
            queries: ranks.len(),
        }
    }
}

/// Scales every row of a row-major `matrix` of width `dim` to unit Euclidean length, so that dot
/// products between rows are cosine similarities. An all-zero row stays zero (its similarity to
/// anything is then 0) instead of turning into NaNs.
///
/// # Panics
/// If `dim` is 0 or does not divide the matrix length.
pub fn l2_normalize_rows(matrix: &mut [f32], dim: usize) {
    check_rows(matrix.len(), dim);
    for row in matrix.chunks_exact_mut(dim) {
        normalize(row);
    }
}

/// Cosine similarity of `query` with every row of `rows` (row-major, width `dim`, rows already
/// L2-normalised with [`l2_normalize_rows`]); the query is normalised here.
///
/// # Panics
/// If `query` is not `dim` long, or `dim` is 0 or does not divide the length of `rows`.
pub fn cosine_scores(query: &[f32], rows: &[f32], dim: usize) -> Vec<f32> {
    check_rows(rows.len(), dim);
    assert_eq!(
        query.len(),
        dim,
        "query has {} values, rows have {dim}",
        query.len()
    );
    let mut unit_query = query.to_vec();
    normalize(&mut unit_query);
    rows.chunks_exact(dim)
        .map(|row| dot(&unit_query, row))
        .collect()
}

/// The `k` rows most cosine-similar to `query`, best first, as `(row index, similarity)`.
///
/// Rows must be L2-normalised already (done once for the whole matrix, not per query); the query
/// is normalised here. `exclude` leaves one row out, e.g. the query's own row when searching a
/// matrix for neighbours of one of its rows. Equal scores are ordered by row index, so the result
/// does not depend on the sort algorithm; NaN scores come last. Fewer than `k` pairs come back
/// when there are fewer candidate rows.
///
/// # Panics
/// As [`cosine_scores`].
pub fn top_k_cosine(
    query: &[f32],
    rows: &[f32],
    dim: usize,
    k: usize,
    exclude: Option<usize>,
) -> Vec<(usize, f32)> {
    top_k_cosine_where(query, rows, dim, k, |index| Some(index) != exclude)
}

/// As [`top_k_cosine`], among the rows for which `keep` holds: the same as ranking every row and
/// keeping the first `k` that `keep` accepts, without sorting them all.
pub fn top_k_cosine_where(
    query: &[f32],
    rows: &[f32],
    dim: usize,
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<(usize, f32)> {
    let mut candidates: Vec<(usize, f32)> = cosine_scores(query, rows, dim)
        .into_iter()
        .enumerate()
        .filter(|&(index, _)| keep(index))
        .collect();
    let k = k.min(candidates.len());
    if k == 0 {
        return Vec::new();
    }
    // Partition first so that only the k winners get sorted: k is usually tiny next to the
    // number of rows.
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, best_first);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(best_first);
    candidates
}

/// Cosine nearest neighbours over a set of vectors with one id each: the one similarity search
/// of the report and the task commands (similar images, words and captions, images found for a
/// caption). The vectors are L2-normalised once, here; searches rank as [`top_k_cosine`] does
/// (ties by row index, NaN last).
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarityIndex {
    ids: Vec<String>,
    vectors: Vec<f32>,
    dim: usize,
}

impl SimilarityIndex {
    /// An index of `ids` and their vectors (row-major, width `dim`, one row per id).
    ///
    /// # Panics
    /// If the vectors are not one row of width `dim` per id (`dim` may be 0 only without ids).
    pub fn new(ids: Vec<String>, mut vectors: Vec<f32>, dim: usize) -> SimilarityIndex {
        assert_eq!(
            ids.len() * dim,
            vectors.len(),
            "{} values are not {} rows of width {dim}",
            vectors.len(),
            ids.len()
        );
        if !ids.is_empty() {
            l2_normalize_rows(&mut vectors, dim);
        }
        SimilarityIndex { ids, vectors, dim }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The width of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The id of row `row`.
    pub fn id(&self, row: usize) -> &str {
        &self.ids[row]
    }

    /// Every id, in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The first row whose id is `id`.
    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// Row `row`'s vector, L2-normalised.
    pub fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    /// Every vector, L2-normalised, row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// The cosine similarity of `query` with every row.
    pub fn scores(&self, query: &[f32]) -> Vec<f32> {
        if self.is_empty() {
            return Vec::new();
        }
        cosine_scores(query, &self.vectors, self.dim)
    }

    /// The `k` rows nearest `query`, best first, leaving out row `exclude`.
    pub fn nearest(&self, query: &[f32], k: usize, exclude: Option<usize>) -> Vec<(usize, f32)> {
        self.nearest_where(query, k, |row| Some(row) != exclude)
    }

    /// The `k` rows nearest `query`, best first, among the rows for which `keep` holds.
    pub fn nearest_where(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        if self.is_empty() {
            return Vec::new();
        }
        top_k_cosine_where(query, &self.vectors, self.dim, k, keep)
    }

    /// The `k` rows nearest row `row`, best first: the row itself left out, and the rows for
    /// which `keep` does not hold.
    pub fn neighbours(
        &self,
        row: usize,
        k: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        self.nearest_where(self.vector(row), k, |other| other != row && keep(other))
    }
}

/// A total order on `(index, score)`: higher score first, NaN last, then lower index first.
fn best_first(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    let by_score = match (a.1.is_nan(), b.1.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // Neither is NaN, so the comparison exists; 0.0 and -0.0 compare equal and fall back to
        // the index.
        (false, false) => b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal),
    };
    by_score.then(a.0.cmp(&b.0))
}

fn check_rows(len: usize, dim: usize) {
    assert!(dim > 0, "row width must be positive");
    assert!(
        len.is_multiple_of(dim),
        "{len} values do not split into rows of width {dim}"
    );
}

/// Scales `vector` to unit length in place; the norm is accumulated in f64 so that long
/// embeddings do not lose precision. A zero vector is left alone.
fn normalize(vector: &mut [f32]) {
    let norm = vector
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde::Deserialize;

    use super::*;

    /// How far a score may be from NLTK's.
    const TOLERANCE: f64 = 1e-9;

    fn words(sentence: &str) -> Vec<String> {
        sentence.split_whitespace().map(str::to_string).collect()
    }

    /// A one-hypothesis corpus from plain strings.
    fn sentence_bleu(references: &[&str], hypothesis: &str) -> BleuScores {
        let references = vec![references.iter().map(|r| words(r)).collect()];
        corpus_bleu(&references, &[words(hypothesis)], 4).unwrap()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= TOLERANCE,
            "{what}: got {actual:e}, expected {expected:e}"
        );
    }

    // The fixture written by tests/fixtures/bleu/make_cases.py, scores from NLTK.

    #[derive(Deserialize)]
    struct Fixture {
        nltk_version: String,
        max_n: usize,
        cases: Vec<FixtureCase>,
    }

    #[derive(Deserialize)]
    struct FixtureCase {
        name: String,
        references: Vec<Vec<Vec<String>>>,
        hypotheses: Vec<Vec<String>>,
        expected: Expected,
    }

    #[derive(Deserialize)]
    struct Expected {
        bleu: Vec<f64>,
        matches: Vec<u64>,
        totals: Vec<u64>,
        hypothesis_length: u64,
        reference_length: u64,
    }

    fn fixture_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bleu/cases.json")
    }

    #[test]
    fn bleu_matches_nltk_fixture() {
        let path = fixture_path();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let fixture: Fixture = serde_json::from_str(&text).unwrap();
        assert!(fixture.cases.len() >= 50, "fixture lost cases");

        let mut largest_difference = 0.0f64;
        for case in &fixture.cases {
            let scores = corpus_bleu(&case.references, &case.hypotheses, fixture.max_n)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let expected = &case.expected;
            assert_eq!(scores.matches, expected.matches, "{}: matches", case.name);
            assert_eq!(scores.totals, expected.totals, "{}: totals", case.name);
            assert_eq!(
                (scores.hypothesis_length, scores.reference_length),
                (expected.hypothesis_length, expected.reference_length),
                "{}: lengths",
                case.name
            );
            for (n, (&actual, &wanted)) in scores.bleu.iter().zip(&expected.bleu).enumerate() {
                let what = format!("{} BLEU-{}", case.name, n + 1);
                assert_close(actual, wanted, &what);
                // The absolute tolerance would pass 0 for NLTK's ~1e-78 "no match" scores; the
                // relative check shows those are reproduced too, not just rounded to 0.
                assert!(
                    actual == wanted || (actual - wanted).abs() <= 1e-10 * wanted.abs(),
                    "{what}: got {actual:e}, expected {wanted:e}"
                );
                largest_difference = largest_difference.max((actual - wanted).abs());
            }
        }
        println!(
            "{} cases agree with NLTK {} (largest difference {largest_difference:e})",
            fixture.cases.len(),
            fixture.nltk_version
        );
    }

    /// NLTK's `corpus_bleu` over corpora read as JSON from stdin: BLEU-1..4 per corpus, and the
    /// method-1 smoothed `sentence_bleu` of each hypothesis.
    const NLTK_SCRIPT: &str = r#"
import json, sys, warnings
from nltk.translate.bleu_score import corpus_bleu, sentence_bleu, SmoothingFunction
warnings.simplefilter("ignore")
corpora = json.load(sys.stdin)
smooth = SmoothingFunction().method1
json.dump([{
    "corpus": [float(corpus_bleu(c["references"], c["hypotheses"], weights=(1 / n,) * n))
               for n in range(1, 5)],
    "sentences": [[float(sentence_bleu(r, h, weights=(1 / n,) * n, smoothing_function=smooth))
                   for n in range(1, 5)]
                  for r, h in zip(c["references"], c["hypotheses"])],
} for c in corpora], sys.stdout)
"#;

    #[derive(Deserialize)]
    struct NltkScores {
        corpus: Vec<f64>,
        sentences: Vec<Vec<f64>>,
    }

    #[derive(Serialize)]
    struct Corpus {
        references: Vec<Vec<Vec<String>>>,
        hypotheses: Vec<Vec<String>>,
    }

    /// Random corpora over a small vocabulary, so that n-grams of every order collide, with empty
    /// and very short sentences mixed in.
    fn random_corpora(seed: u64, count: usize) -> Vec<Corpus> {
        const VOCABULARY: [&str; 7] = ["a", "dog", "runs", "on", "the", "grass", "."];
        fn sentence(rng: &mut ChaCha8Rng) -> Vec<String> {
            let length = rng.gen_range(0..=14);
            (0..length)
                .map(|_| VOCABULARY[rng.gen_range(0..VOCABULARY.len())].to_string())
                .collect()
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let size = rng.gen_range(1..=25);
                let mut references = Vec::with_capacity(size);
                let mut hypotheses = Vec::with_capacity(size);
                for _ in 0..size {
                    let reference_count = rng.gen_range(1..=5);
                    references.push((0..reference_count).map(|_| sentence(&mut rng)).collect());
                    hypotheses.push(sentence(&mut rng));
                }
                Corpus {
                    references,
                    hypotheses,
                }
            })
            .collect()
    }

    #[test]
    fn bleu_matches_live_nltk() {
        let corpora = random_corpora(7, 60);
        let expected: Vec<NltkScores> = crate::test_python::run_json("nltk", NLTK_SCRIPT, &corpora);
        assert_eq!(expected.len(), corpora.len());
        for (index, (corpus, wanted)) in corpora.iter().zip(&expected).enumerate() {
            let scores = corpus_bleu(&corpus.references, &corpus.hypotheses, 4).unwrap();
            for (n, (&actual, &wanted)) in scores.bleu.iter().zip(&wanted.corpus).enumerate() {
                assert_close(actual, wanted, &format!("corpus {index} BLEU-{}", n + 1));
            }
            assert_eq!(wanted.sentences.len(), corpus.hypotheses.len());
            for (sentence, (references, hypothesis)) in
                corpus.references.iter().zip(&corpus.hypotheses).enumerate()
            {
                let smoothed = smoothed_sentence_bleu(references, hypothesis, 4).unwrap();
                for (n, (&actual, &wanted)) in
                    smoothed.iter().zip(&wanted.sentences[sentence]).enumerate()
                {
                    let what =
                        format!("corpus {index} sentence {sentence} smoothed BLEU-{}", n + 1);
                    assert_close(actual, wanted, &what);
                }
            }
        }
    }

    #[test]
    fn smoothed_sentence_bleu_by_hand() {
        // "a dog runs" against "a dog runs fast": 3/3, 2/2, 1/1 and, for order 4, 0.1/1 instead
        // of 0/1; the brevity penalty is exp(1 - 4/3).
        let references = vec![words("a dog runs fast")];
        let scores = smoothed_sentence_bleu(&references, &words("a dog runs"), 4).unwrap();
        let penalty = (1.0f64 - 4.0 / 3.0).exp();
        assert_close(scores[2], penalty, "BLEU-3");
        assert_close(scores[3], penalty * 0.1f64.powf(0.25), "BLEU-4");
        // No shared word: exactly 0, as unsmoothed.
        let none = smoothed_sentence_bleu(&references, &words("purple elephants"), 4).unwrap();
        assert_eq!(none, vec![0.0; 4]);
        assert_eq!(
            smoothed_sentence_bleu::<String>(&[], &[], 4),
            Err(CorpusError::NoReferences { index: 0 })
        );
    }

    #[test]
    fn bleu_of_an_exact_copy_is_one() {
        let scores = sentence_bleu(
            &["a dog runs on the grass .", "a dog is running ."],
            "a dog runs on the grass .",
        );
        assert_eq!(scores.bleu, vec![1.0; 4]);
        assert_eq!(scores.brevity_penalty, 1.0);
    }

    #[test]
    fn bleu_without_a_shared_word_is_zero() {
        let scores = sentence_bleu(&["a dog runs ."], "purple elephants sing");
        assert_eq!(scores.bleu, vec![0.0; 4]);
    }

    #[test]
    fn bleu_counts_by_hand() {
        // Hypothesis "a dog runs" against "a dog runs fast": all 3 unigrams, 2 bigrams and 1
        // trigram match, the one slot for a 4-gram does not; the hypothesis is 3 tokens against a
        // closest reference of 4, so the brevity penalty is exp(1 - 4/3).
        let scores = sentence_bleu(&["a dog runs fast"], "a dog runs");
        assert_eq!(scores.matches, vec![3, 2, 1, 0]);
        assert_eq!(scores.totals, vec![3, 2, 1, 1]);
        let penalty = (1.0f64 - 4.0 / 3.0).exp();
        assert_close(scores.brevity_penalty, penalty, "brevity penalty");
        for n in 1..=3 {
            assert_close(scores.get(n).unwrap(), penalty, &format!("BLEU-{n}"));
        }
        // BLEU-4 uses the stand-in precision for order 4: positive, but negligible.
        let bleu4 = scores.get(4).unwrap();
        assert!(bleu4 > 0.0 && bleu4 < 1e-70, "BLEU-4 {bleu4:e}");
        assert_eq!(scores.get(0), None);
        assert_eq!(scores.get(5), None);
        assert_eq!(scores.precision(2), Some(1.0));
    }

    #[test]
    fn bleu_clips_repeated_words() {
        // "the" occurs at most twice in one reference, so 2 of the 7 repetitions count.
        let scores = sentence_bleu(
            &["the cat is on the mat .", "there is a cat on the mat ."],
            "the the the the the the the",
        );
        assert_eq!(scores.matches[0], 2);
        assert_close(scores.bleu[0], 2.0 / 7.0, "BLEU-1");
    }

    #[test]
    fn bleu_brevity_uses_the_closest_reference_and_the_shorter_on_a_tie() {
        // Length 4 lies between references of 3 and 5 tokens: 3 is taken, so no penalty.
        let scores = sentence_bleu(&["a dog runs very fast", "a dog runs"], "a dog runs fast");
        assert_eq!(scores.reference_length, 3);
        assert_eq!(scores.brevity_penalty, 1.0);
        // Against 6 and 2 tokens a 5-token hypothesis is closest to 6 and penalised.
        let scores = sentence_bleu(&["a dog", "a dog runs very fast ."], "a dog runs fast .");
        assert_eq!(scores.reference_length, 6);
        assert_close(
            scores.brevity_penalty,
            (1.0f64 - 6.0 / 5.0).exp(),
            "penalty",
        );
    }

    #[test]
    fn bleu_empty_and_short_hypotheses_count_one_per_order() {
        let references = vec![
            vec![words("a dog runs on the grass .")],
            vec![words("two cats sleep .")],
            vec![words("a bird")],
        ];
        let hypotheses = vec![words("a dog runs on the grass ."), vec![], words("a bird")];
        let scores = corpus_bleu(&references, &hypotheses, 4).unwrap();
        // Order 3: 5 trigrams from the first hypothesis, and 1 each for the other two.
        assert_eq!(
            scores.totals,
            vec![7 + 1 + 2, 6 + 1 + 1, 5 + 1 + 1, 4 + 1 + 1]
        );
        assert_eq!(scores.hypothesis_length, 9);
        // The empty hypothesis is closest to the shortest reference (4 tokens).
        assert_eq!(scores.reference_length, 7 + 4 + 2);

        let only_empty = corpus_bleu(&[vec![words("a dog")]], &[vec![]], 4).unwrap();
        assert_eq!(only_empty.bleu, vec![0.0; 4]);
        assert_eq!(only_empty.brevity_penalty, 0.0);
    }

    #[test]
    fn bleu_accepts_token_ids() {
        let as_words = sentence_bleu(&["a dog runs fast .", "the dog runs"], "a dog runs .");
        let as_ids = corpus_bleu(
            &[vec![vec![1u32, 2, 3, 4, 5], vec![6, 2, 3]]],
            &[vec![1u32, 2, 3, 5]],
            4,
        )
        .unwrap();
        assert_eq!(as_words, as_ids);
    }

    #[test]
    fn bleu_rejects_what_nltk_rejects() {
        let one = vec![words("a dog")];
        assert_eq!(
            corpus_bleu(&[vec![one.clone()]], &[], 4),
            Err(CorpusError::LengthMismatch {
                references: 1,
                hypotheses: 0
            })
        );
        assert_eq!(
            corpus_bleu::<String>(&[], &[], 4),
            Err(CorpusError::EmptyCorpus)
        );
        assert_eq!(
            corpus_bleu(&[one.clone(), vec![]], &[words("a dog"), words("a cat")], 4),
            Err(CorpusError::NoReferences { index: 1 })
        );
        let none = corpus_bleu(std::slice::from_ref(&one), &one, 0).unwrap();
        assert!(none.bleu.is_empty() && none.matches.is_empty());
    }

    #[test]
    fn rank_of_counts_ties_and_nan_against_the_target() {
        assert_eq!(rank_of(&[0.9, 0.1, 0.5], 0), 1);
        assert_eq!(rank_of(&[0.9, 0.1, 0.5], 2), 2);
        assert_eq!(rank_of(&[0.9, 0.1, 0.5], 1), 3);
        // Two others tie with the target: both go ahead of it.
        assert_eq!(rank_of(&[0.5, 0.5, 0.5, 0.2], 1), 3);
        assert_eq!(rank_of(&[0.7; 4], 0), 4);
        assert_eq!(rank_of(&[f32::NAN, 0.3, 0.1], 1), 2);
        assert_eq!(rank_of(&[0.2, f32::NAN, 0.1], 1), 3);
        assert_eq!(rank_of(&[0.4], 0), 1);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn rank_of_rejects_a_missing_target() {
        rank_of(&[0.1, 0.2], 2);
    }

    #[test]
    fn retrieval_metrics_by_hand() {
        // Sorted: 1 1 2 4 6 11 → R@1 2/6, R@5 4/6, R@10 5/6, median (2 + 4) / 2, mean 25 / 6.
        let metrics = RetrievalMetrics::from_ranks(&[4, 1, 11, 2, 1, 6]);
        assert_eq!(
            metrics,
            RetrievalMetrics {
                r1: 2.0 / 6.0,
                r5: 4.0 / 6.0,
                r10: 5.0 / 6.0,
                median_rank: 3.0,
                mean_rank: 25.0 / 6.0,
                queries: 6,
            }
        );
        // Odd count: the middle value. Sorted: 3 5 10 12 40.
        let metrics = RetrievalMetrics::from_ranks(&[12, 3, 40, 5, 10]);
        assert_eq!(metrics.median_rank, 10.0);
        assert_eq!(metrics.mean_rank, 14.0);
        assert_eq!((metrics.r1, metrics.r5, metrics.r10), (0.0, 0.4, 0.6));
        let one = RetrievalMetrics::from_ranks(&[1]);
        assert_eq!((one.r1, one.median_rank, one.mean_rank), (1.0, 1.0, 1.0));
    }

    #[test]
    fn retrieval_metrics_from_rank_of() {
        // Three queries, scores of each against four candidates, correct candidate = query index.
        let scores = [
            [0.9, 0.1, 0.2, 0.3],
            [0.5, 0.4, 0.6, 0.1],
            [0.2, 0.2, 0.2, 0.2],
        ];
        let ranks: Vec<usize> = scores
            .iter()
            .enumerate()
            .map(|(query, row)| rank_of(row, query))
            .collect();
        assert_eq!(ranks, vec![1, 3, 4]);
        let metrics = RetrievalMetrics::from_ranks(&ranks);
        assert_eq!(metrics.r1, 1.0 / 3.0);
        assert_eq!(metrics.median_rank, 3.0);
    }

    #[test]
    fn retrieval_metrics_of_no_queries_are_undefined() {
        let metrics = RetrievalMetrics::from_ranks(&[]);
        assert_eq!(metrics.queries, 0);
        assert!(metrics.r1.is_nan() && metrics.median_rank.is_nan() && metrics.mean_rank.is_nan());
        assert_eq!(
            serde_json::to_value(metrics).unwrap()["median_rank"],
            serde_json::Value::Null
        );
    }

    #[test]
    #[should_panic(expected = "1-based")]
    fn retrieval_metrics_reject_rank_zero() {
        RetrievalMetrics::from_ranks(&[1, 0]);
    }

    #[test]
    fn l2_normalize_rows_scales_each_row_and_keeps_zero_rows() {
        let mut matrix = vec![3.0, 4.0, 0.0, 0.0, 0.0, -2.0];
        l2_normalize_rows(&mut matrix, 2);
        assert_eq!(matrix, vec![0.6, 0.8, 0.0, 0.0, 0.0, -1.0]);
        let mut wide = vec![1.0f32; 512];
        l2_normalize_rows(&mut wide, 512);
        let norm: f32 = wide.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "do not split")]
    fn l2_normalize_rows_rejects_a_ragged_matrix() {
        l2_normalize_rows(&mut [1.0, 2.0, 3.0], 2);
    }

    /// Five unit rows in 2-D: along x, along y, diagonal, along -x, along x again.
    fn unit_rows() -> Vec<f32> {
        let mut rows = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0, 2.0, 0.0];
        l2_normalize_rows(&mut rows, 2);
        rows
    }

    #[test]
    fn top_k_cosine_orders_by_score_then_index() {
        let rows = unit_rows();
        // The query is scaled on purpose: it is normalised inside.
        let top = top_k_cosine(&[10.0, 0.0], &rows, 2, 3, None);
        let indices: Vec<usize> = top.iter().map(|&(index, _)| index).collect();
        // Rows 0 and 4 tie at 1.0 and come in index order; the diagonal follows.
        assert_eq!(indices, vec![0, 4, 2]);
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert!((top[2].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);

        let everything = top_k_cosine(&[1.0, 0.0], &rows, 2, 100, None);
        let indices: Vec<usize> = everything.iter().map(|&(index, _)| index).collect();
        assert_eq!(indices, vec![0, 4, 2, 1, 3]);
        assert!(top_k_cosine(&[1.0, 0.0], &rows, 2, 0, None).is_empty());
    }

    #[test]
    fn top_k_cosine_leaves_out_the_excluded_row() {
        let rows = unit_rows();
        let top = top_k_cosine(&rows[0..2], &rows, 2, 2, Some(0));
        let indices: Vec<usize> = top.iter().map(|&(index, _)| index).collect();
        assert_eq!(indices, vec![4, 2]);
        // Excluding the only row leaves nothing.
        assert!(top_k_cosine(&[1.0, 0.0], &[1.0, 0.0], 2, 5, Some(0)).is_empty());
    }

    #[test]
    fn top_k_cosine_puts_nan_last_and_handles_a_zero_query() {
        let rows = vec![f32::NAN, 0.0, 0.0, 1.0, 1.0, 0.0];
        let top = top_k_cosine(&[1.0, 0.0], &rows, 2, 3, None);
        let indices: Vec<usize> = top.iter().map(|&(index, _)| index).collect();
        assert_eq!(indices, vec![2, 1, 0]);
        // A zero query is similar to nothing: every score 0, rows in index order.
        let top = top_k_cosine(&[0.0, 0.0], &unit_rows(), 2, 3, None);
        assert_eq!(top, vec![(0, 0.0), (1, 0.0), (2, 0.0)]);
    }

    #[test]
    fn top_k_cosine_where_is_the_filtered_ranking() {
        let rows = unit_rows();
        let everything = top_k_cosine(&[1.0, 0.5], &rows, 2, 100, None);
        for k in 0..=5 {
            let odd: Vec<(usize, f32)> = everything
                .iter()
                .copied()
                .filter(|&(index, _)| index % 2 == 1)
                .take(k)
                .collect();
            assert_eq!(
                top_k_cosine_where(&[1.0, 0.5], &rows, 2, k, |i| i % 2 == 1),
                odd
            );
        }
    }

    #[test]
    fn similarity_index_finds_neighbours_by_id() {
        let ids: Vec<String> = ["x", "y", "diagonal", "minus x", "x again"]
            .map(String::from)
            .into();
        let raw = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0, 2.0, 0.0];
        let index = SimilarityIndex::new(ids, raw, 2);
        assert_eq!(index.vectors(), unit_rows());
        assert_eq!((index.len(), index.dim()), (5, 2));
        let x = index.row_of("x").unwrap();
        assert_eq!(index.row_of("z"), None);
        // The query row is left out; the tie with "x again" would otherwise come first.
        let near: Vec<&str> = index
            .neighbours(x, 2, |_| true)
            .into_iter()
            .map(|(row, _)| index.id(row))
            .collect();
        assert_eq!(near, ["x again", "diagonal"]);
        let near: Vec<usize> = index
            .neighbours(x, 2, |row| row != 4)
            .into_iter()
            .map(|(row, _)| row)
            .collect();
        assert_eq!(near, [2, 1]);
        assert_eq!(
            index.nearest(index.vector(x), 3, Some(x)),
            top_k_cosine(&unit_rows()[0..2], &unit_rows(), 2, 3, Some(0))
        );
        assert_eq!(
            index.scores(&[0.0, 1.0]),
            cosine_scores(&[0.0, 1.0], &unit_rows(), 2)
        );
        let empty = SimilarityIndex::new(Vec::new(), Vec::new(), 0);
        assert!(empty.nearest(&[], 3, None).is_empty());
    }

    #[test]
    fn cosine_scores_match_top_k() {
        let rows = unit_rows();
        let scores = cosine_scores(&[0.0, 3.0], &rows, 2);
        assert_eq!(scores.len(), 5);
        let best = top_k_cosine(&[0.0, 3.0], &rows, 2, 1, None)[0];
        assert_eq!(best, (1, scores[1]));
        assert_eq!(rank_of(&scores, 1), 1);
    }
}
