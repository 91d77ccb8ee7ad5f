//! The input similarities of t-SNE: for every point a Gaussian over its nearest neighbours whose
//! bandwidth gives the wanted perplexity, symmetrised into one sparse joint distribution P.
//!
//! Only the `3 × perplexity` nearest neighbours of a point get a non-zero similarity: beyond them
//! a Gaussian with that perplexity is negligible, and keeping P sparse is what lets the attractive
//! forces cost O(N·k) per iteration. The neighbours are found exactly (all pairs), which at the
//! sizes this stage accepts costs seconds and leaves no approximation to reason about.

use rayon::prelude::*;

/// Binary search steps for a point's bandwidth; 200 halvings reach any scale of distances.
const BANDWIDTH_STEPS: usize = 200;

/// How close the entropy of a point's similarities must come to log(perplexity).
const ENTROPY_TOLERANCE: f64 = 1e-5;

/// A square sparse matrix in compressed-row form, rows and columns both point indices.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    /// Row `i` holds entries `row_starts[i]..row_starts[i + 1]` of `columns` and `values`.
    pub row_starts: Vec<usize>,
    /// Column of each entry, ascending within a row.
    pub columns: Vec<u32>,
    pub values: Vec<f64>,
}

impl SparseMatrix {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.row_starts.len().saturating_sub(1)
    }

    /// The (column, value) entries of row `row`.
    pub fn row(&self, row: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let range = self.row_starts[row]..self.row_starts[row + 1];
        self.columns[range.clone()]
            .iter()
            .zip(&self.values[range])
            .map(|(&column, &value)| (column as usize, value))
    }
}

/// The perplexity and neighbour count actually used for `points` points: a perplexity needs at
/// least `3 × perplexity` other points, so it shrinks on small sets (but never below 1, the
/// perplexity of a single neighbour).
pub fn effective_perplexity(perplexity: f64, points: usize) -> (f64, usize) {
    let others = points.saturating_sub(1);
    let perplexity = perplexity.min(others as f64 / 3.0).max(1.0);
    let neighbours = ((3.0 * perplexity).floor() as usize).clamp(1, others.max(1));
    (perplexity, neighbours.min(others))
}

/// Squared Euclidean distance. Eight independent partial sums let the compiler use vector
/// registers (a single running sum would force the additions into one sequential chain).
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (a8, b8) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            let d = a8[lane] - b8[lane];
            lanes[lane] += d * d;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        total += (x - y) * (x - y);
    }
    total
}

/// The `k` nearest neighbours of every row of `data` (`dim` values per row), nearest first, with
/// their squared distances. Ties are broken by index so the result never depends on how the work
/// was split between threads.
pub fn nearest_neighbours(data: &[f32], dim: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    let n = data.len().checked_div(dim).unwrap_or(0);
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let closer = |a: &(u32, f32), b: &(u32, f32)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
    (0..n)
        .into_par_iter()
        .map_init(
            || Vec::with_capacity(n),
            |candidates: &mut Vec<(u32, f32)>, i| {
                candidates.clear();
                let here = row(i);
                candidates.extend(
                    (0..n)
                        .filter(|&j| j != i)
                        .map(|j| (j as u32, squared_distance(here, row(j)))),
                );
                let k = k.min(candidates.len());
                if k == 0 {
                    return Vec::new();
                }
                candidates.select_nth_unstable_by(k - 1, closer);
                let mut nearest = candidates[..k].to_vec();
                nearest.sort_unstable_by(closer);
                nearest
            },
        )
        .collect()
}

/// The conditional similarities p(j|i) of one point over its neighbours' squared distances: a
/// Gaussian whose precision `beta` is found by bisection so that the distribution's entropy is
/// log(perplexity). Returns the normalised similarities, in the order of `distances`.
pub fn conditional_similarities(distances: &[f32], perplexity: f64) -> Vec<f64> {
    if distances.is_empty() {
        return Vec::new();
    }
    // Shifting by the smallest distance changes nothing after normalisation but keeps the
    // nearest neighbour's weight at exp(0) = 1, so the sum never underflows to zero however far
    // apart the points are.
    let nearest = distances.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let shifted: Vec<f64> = distances.iter().map(|&d| d as f64 - nearest).collect();
    let target = perplexity.ln();
    let mut beta = 1.0f64;
    let (mut low, mut high) = (0.0f64, f64::INFINITY);
    let mut weights = vec![0f64; shifted.len()];
    for _ in 0..BANDWIDTH_STEPS {
        let mut sum = 0.0;
        let mut weighted_distance = 0.0;
        for (w, &d) in weights.iter_mut().zip(&shifted) {
            *w = (-beta * d).exp();
            sum += *w;
            weighted_distance += d * *w;
        }
        let entropy = sum.ln() + beta * weighted_distance / sum;
        let excess = entropy - target;
        if excess.abs() < ENTROPY_TOLERANCE {
            break;
        }
        if excess > 0.0 {
            // Too spread out: narrow the Gaussian.
            low = beta;
            beta = if high.is_finite() {
                (beta + high) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            high = beta;
            beta = (beta + low) / 2.0;
        }
    }
    let sum: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= sum);
    weights
}

/// The symmetric joint similarities P of the rows of `data`: p_ij = (p(j|i) + p(i|j)) / 2N over
/// each point's nearest neighbours, summing to one. Returns P and the perplexity used.
pub fn joint_similarities(data: &[f32], dim: usize, perplexity: f64) -> (SparseMatrix, f64) {
    let n = data.len().checked_div(dim).unwrap_or(0);
    let (perplexity, k) = effective_perplexity(perplexity, n);
    let neighbours = nearest_neighbours(data, dim, k);
    let conditional: Vec<Vec<f64>> = neighbours
        .par_iter()
        .map(|row| {
            let distances: Vec<f32> = row.iter().map(|&(_, d)| d).collect();
            conditional_similarities(&distances, perplexity)
        })
        .collect();
    (symmetrise(&neighbours, &conditional, n), perplexity)
}

/// Adds the conditional matrix to its transpose and divides by 2N. Entries are sorted by (row,
/// column) and a pair present in both directions is summed once, so the result is exact and
/// independent of thread count.
fn symmetrise(neighbours: &[Vec<(u32, f32)>], conditional: &[Vec<f64>], n: usize) -> SparseMatrix {
    let mut entries: Vec<(u32, u32, f64)> = Vec::new();
    for (i, (row, probabilities)) in neighbours.iter().zip(conditional).enumerate() {
        for (&(j, _), &p) in row.iter().zip(probabilities) {
            entries.push((i as u32, j, p));
            entries.push((j, i as u32, p));
        }
    }
    entries.sort_unstable_by_key(|e| (e.0, e.1));
    let scale = 1.0 / (2.0 * n as f64);
    let mut row_starts = vec![0usize; n + 1];
    let mut columns = Vec::with_capacity(entries.len());
    let mut values: Vec<f64> = Vec::with_capacity(entries.len());
    let mut last: Option<(u32, u32)> = None;
    for (i, j, p) in entries {
        if last == Some((i, j)) {
            if let Some(v) = values.last_mut() {
                *v += p * scale;
            }
            continue;
        }
        last = Some((i, j));
        row_starts[i as usize + 1] += 1;
        columns.push(j);
        values.push(p * scale);
    }
    for i in 0..n {
        row_starts[i + 1] += row_starts[i];
    }
    SparseMatrix {
        row_starts,
        columns,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_search_reaches_the_perplexity() {
        let distances: Vec<f32> = (1..=30).map(|d| d as f32 * 0.7).collect();
        let p = conditional_similarities(&distances, 10.0);
        let entropy: f64 = -p
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * v.ln())
            .sum::<f64>();
        assert!(
            (entropy.exp() - 10.0).abs() < 1e-3,
            "perplexity {}",
            entropy.exp()
        );
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Nearer neighbours are more similar.
        assert!(p.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn huge_distances_do_not_underflow() {
        let distances = [1e6f32, 1e6 + 10.0, 1e6 + 20.0, 1e6 + 40.0];
        let p = conditional_similarities(&distances, 2.0);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn nearest_neighbours_match_a_brute_force_sort() {
        let data: Vec<f32> = (0..40 * 3).map(|v| ((v * 37) % 23) as f32).collect();
        let found = nearest_neighbours(&data, 3, 5);
        for (i, row) in found.iter().enumerate() {
            let mut all: Vec<(u32, f32)> = (0..40)
                .filter(|&j| j != i)
                .map(|j| {
                    let d = squared_distance(&data[i * 3..i * 3 + 3], &data[j * 3..j * 3 + 3]);
                    (j as u32, d)
                })
                .collect();
            all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            assert_eq!(row, &all[..5].to_vec());
        }
    }

    #[test]
    fn joint_similarities_are_symmetric_and_sum_to_one() {
        let data: Vec<f32> = (0..50 * 4).map(|v| ((v * 13) % 17) as f32 * 0.1).collect();
        let (p, perplexity) = joint_similarities(&data, 4, 5.0);
        assert_eq!(perplexity, 5.0);
        assert_eq!(p.rows(), 50);
        let total: f64 = p.values.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "sum {total}");
        for i in 0..50 {
            for (j, value) in p.row(i) {
                assert_ne!(i, j);
                let back = p.row(j).find(|&(c, _)| c == i).map(|(_, v)| v);
                assert_eq!(back, Some(value));
            }
        }
    }

    #[test]
    fn small_sets_shrink_the_perplexity() {
        assert_eq!(effective_perplexity(30.0, 1000), (30.0, 90));
        assert_eq!(effective_perplexity(30.0, 31), (10.0, 30));
        assert_eq!(effective_perplexity(30.0, 2), (1.0, 1));
        assert_eq!(effective_perplexity(30.0, 1).1, 0);
    }
}
