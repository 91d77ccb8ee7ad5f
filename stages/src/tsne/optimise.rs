//! Barnes-Hut t-SNE in two dimensions: gradient descent on KL(P ‖ Q), with the attractive forces
//! summed exactly over the sparse P and the repulsive forces approximated by a quadtree.
//!
//! The schedule is the usual one: P exaggerated twelvefold and momentum 0.5 for the first 250
//! iterations (clusters form while points can still move through each other), then momentum 0.8;
//! per-coordinate gains grow while the gradient keeps its direction and shrink when it flips.
//!
//! Every sum is taken in a fixed order (per point in parallel, then across points sequentially), so
//! the map depends only on the data and the seed, never on the number of threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::affinity::{joint_similarities, SparseMatrix};
use super::quadtree::QuadTree;
use crate::Progress;

/// Iterations with exaggerated P and low momentum.
const EARLY_ITERATIONS: usize = 250;
const EXAGGERATION: f64 = 12.0;
const EARLY_MOMENTUM: f64 = 0.5;
const LATE_MOMENTUM: f64 = 0.8;
/// Gains never fall below this, so no coordinate freezes.
const MIN_GAIN: f64 = 0.01;
/// Standard deviation of the random initial map: small enough that all points start together.
const INITIAL_SPREAD: f64 = 1e-4;

/// The settings of one t-SNE run.
#[derive(Debug, Clone, Copy)]
pub struct TsneSettings {
    pub perplexity: f64,
    pub iterations: usize,
    /// Step size; 0 picks [`auto_learning_rate`] for the number of points.
    pub learning_rate: f64,
    /// Barnes-Hut accuracy: 0 is exact, 0.5 the usual trade-off.
    pub theta: f64,
    pub seed: u64,
    /// The ChaCha stream of the initial map, so two maps under one seed start independently.
    pub stream: u64,
}

/// A finished map.
#[derive(Debug, Clone, PartialEq)]
pub struct TsneMap {
    /// One (x, y) per input row, in input order, centred on the origin.
    pub positions: Vec<[f64; 2]>,
    /// The perplexity used (smaller than asked for on small sets).
    pub perplexity: f64,
    /// The learning rate used.
    pub learning_rate: f64,
    /// KL(P ‖ Q) of the final map, with the Barnes-Hut estimate of Q's normaliser.
    pub kl_divergence: f64,
}

/// Maps the rows of `data` (`dim` values each) to the plane. `progress` advances once per
/// iteration.
/// The learning rate that suits a map of `points` points: the number of points over the early
/// exaggeration, at least 50 (the usual automatic choice; a fixed 200 overshoots on small maps
/// and crawls on large ones).
fn auto_learning_rate(points: usize) -> f64 {
    (points as f64 / EXAGGERATION).max(50.0)
}

pub fn tsne(data: &[f32], dim: usize, settings: &TsneSettings, progress: &dyn Progress) -> TsneMap {
    let n = data.len().checked_div(dim).unwrap_or(0);
    let mut positions = initial_positions(n, settings.seed, settings.stream);
    let learning_rate = if settings.learning_rate > 0.0 {
        settings.learning_rate
    } else {
        auto_learning_rate(n)
    };
    if n < 2 {
        progress.inc(settings.iterations as u64);
        return TsneMap {
            positions,
            perplexity: settings.perplexity,
            learning_rate,
            kl_divergence: 0.0,
        };
    }
    let (p, perplexity) = joint_similarities(data, dim, settings.perplexity);
    let mut velocity = vec![[0.0f64; 2]; n];
    let mut gains = vec![[1.0f64; 2]; n];
    for iteration in 0..settings.iterations {
        let early = iteration < EARLY_ITERATIONS;
        let exaggeration = if early { EXAGGERATION } else { 1.0 };
        let momentum = if early { EARLY_MOMENTUM } else { LATE_MOMENTUM };
        let (grad, _) = gradient(&p, &positions, exaggeration, settings.theta);
        for i in 0..n {
            for axis in 0..2 {
                let g = grad[i][axis];
                // Delta-bar-delta: a step that keeps going the way the last one went grows.
                let gain = &mut gains[i][axis];
                *gain = if (g > 0.0) != (velocity[i][axis] > 0.0) {
                    *gain + 0.2
                } else {
                    (*gain * 0.8).max(MIN_GAIN)
                };
                velocity[i][axis] = momentum * velocity[i][axis] - learning_rate * *gain * g;
                positions[i][axis] += velocity[i][axis];
            }
        }
        centre(&mut positions);
        progress.inc(1);
    }
    let kl_divergence = kl_divergence(&p, &positions, settings.theta);
    TsneMap {
        positions,
        perplexity,
        learning_rate,
        kl_divergence,
    }
}

/// Initial map: independent N(0, INITIAL_SPREAD²) coordinates from a seeded ChaCha stream.
fn initial_positions(n: usize, seed: u64, stream: u64) -> Vec<[f64; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..n)
        .map(|_| {
            // Box-Muller: two uniforms give two independent standard normals.
            let u: f64 = 1.0 - rng.gen::<f64>(); // in (0, 1], so the logarithm is finite
            let v: f64 = rng.gen();
            let radius = (-2.0 * u.ln()).sqrt() * INITIAL_SPREAD;
            let angle = std::f64::consts::TAU * v;
            [radius * angle.cos(), radius * angle.sin()]
        })
        .collect()
}

/// Moves the map's mean to the origin (t-SNE's cost ignores translation; drift would only cost
/// precision).
fn centre(positions: &mut [[f64; 2]]) {
    let n = positions.len() as f64;
    let mut mean = [0.0; 2];
    for p in positions.iter() {
        mean[0] += p[0];
        mean[1] += p[1];
    }
    for p in positions.iter_mut() {
        p[0] -= mean[0] / n;
        p[1] -= mean[1] / n;
    }
}

/// A quarter of the gradient of KL(P ‖ Q) at `positions`, with P multiplied by `exaggeration`:
/// dC/dy_i / 4 = Σ_j (p_ij − q_ij) q_ij Z (y_i − y_j), split into the attractive part over the
/// sparse P and the repulsive part from the quadtree. Also returns Z, the normaliser of Q.
///
/// The constant 4 is left out because the usual Barnes-Hut t-SNE leaves it out, and learning
/// rates (200 by default) are quoted for that scale; with the 4, a rate of 200 overshoots badly
/// on maps of a few thousand points.
pub fn gradient(
    p: &SparseMatrix,
    positions: &[[f64; 2]],
    exaggeration: f64,
    theta: f64,
) -> (Vec<[f64; 2]>, f64) {
    let tree = QuadTree::new(positions);
    let repulsions: Vec<_> = (0..positions.len())
        .into_par_iter()
        .map(|i| tree.repulsion(i, theta))
        .collect();
    // Summed sequentially so that Z is bit-identical whatever the thread count.
    let z: f64 = repulsions.iter().map(|r| r.kernel_sum).sum();
    let grad = (0..positions.len())
        .into_par_iter()
        .map(|i| {
            let here = positions[i];
            let mut attraction = [0.0f64; 2];
            for (j, p_ij) in p.row(i) {
                let delta = [here[0] - positions[j][0], here[1] - positions[j][1]];
                let kernel = 1.0 / (1.0 + delta[0] * delta[0] + delta[1] * delta[1]);
                attraction[0] += p_ij * kernel * delta[0];
                attraction[1] += p_ij * kernel * delta[1];
            }
            let repulsion = repulsions[i].force;
            [
                exaggeration * attraction[0] - repulsion[0] / z,
                exaggeration * attraction[1] - repulsion[1] / z,
            ]
        })
        .collect();
    (grad, z)
}

/// KL(P ‖ Q) = Σ p_ij log(p_ij / q_ij) over the non-zero p_ij, where q_ij = (1 + d_ij²)⁻¹ / Z.
fn kl_divergence(p: &SparseMatrix, positions: &[[f64; 2]], theta: f64) -> f64 {
    let (_, z) = gradient(p, positions, 1.0, theta);
    let per_row: Vec<f64> = (0..p.rows())
        .into_par_iter()
        .map(|i| {
            p.row(i)
                .filter(|&(_, p_ij)| p_ij > 0.0)
                .map(|(j, p_ij)| {
                    let dx = positions[i][0] - positions[j][0];
                    let dy = positions[i][1] - positions[j][1];
                    let q_ij = 1.0 / ((1.0 + dx * dx + dy * dy) * z);
                    p_ij * (p_ij / q_ij).ln()
                })
                .sum()
        })
        .collect();
    per_row.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;

    fn settings(seed: u64) -> TsneSettings {
        TsneSettings {
            perplexity: 10.0,
            iterations: 300,
            learning_rate: 200.0,
            theta: 0.5,
            seed,
            stream: 1,
        }
    }

    /// `blobs` Gaussian clusters of `per_blob` points in `dim` dimensions, far apart, with each
    /// point's blob.
    fn blobs(blobs: usize, per_blob: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(blobs * per_blob * dim);
        let mut labels = Vec::new();
        let centres: Vec<Vec<f32>> = (0..blobs)
            .map(|_| (0..dim).map(|_| rng.gen_range(-20.0..20.0)).collect())
            .collect();
        for (blob, centre) in centres.iter().enumerate() {
            for _ in 0..per_blob {
                // Sum of uniforms: roughly Gaussian, unit scale.
                data.extend(
                    centre
                        .iter()
                        .map(|c| c + (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>()),
                );
                labels.push(blob);
            }
        }
        (data, labels)
    }

    fn nearest(positions: &[[f64; 2]], i: usize) -> usize {
        (0..positions.len())
            .filter(|&j| j != i)
            .min_by(|&a, &b| {
                let d = |j: usize| {
                    (positions[i][0] - positions[j][0]).powi(2)
                        + (positions[i][1] - positions[j][1]).powi(2)
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap_or(i)
    }

    #[test]
    fn separated_blobs_stay_separated() {
        let (data, labels) = blobs(5, 60, 20, 3);
        let map = tsne(&data, 20, &settings(7), &NoProgress);
        assert_eq!(map.positions.len(), 300);
        let same = (0..300)
            .filter(|&i| labels[nearest(&map.positions, i)] == labels[i])
            .count();
        assert!(
            same >= 285,
            "{same} of 300 points have a same-blob neighbour"
        );
        assert!(map.kl_divergence.is_finite() && map.kl_divergence > 0.0);
    }

    #[test]
    fn small_maps_separate_at_the_automatic_learning_rate() {
        assert_eq!(auto_learning_rate(60), 50.0);
        assert_eq!(auto_learning_rate(1200), 100.0);
        let (data, labels) = blobs(3, 15, 10, 11);
        let mut small = settings(7);
        small.learning_rate = 0.0;
        let map = tsne(&data, 10, &small, &NoProgress);
        assert_eq!(map.learning_rate, auto_learning_rate(45));
        let same = (0..45)
            .filter(|&i| labels[nearest(&map.positions, i)] == labels[i])
            .count();
        assert!(same >= 43, "{same} of 45 points have a same-blob neighbour");
    }

    #[test]
    fn same_seed_same_map_different_seed_different_map() {
        let (data, _) = blobs(3, 30, 10, 5);
        let run = |seed| tsne(&data, 10, &settings(seed), &NoProgress);
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first.positions, run(8).positions);
    }

    #[test]
    fn thread_count_does_not_change_the_map() {
        let (data, _) = blobs(3, 40, 8, 9);
        let run_on = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| tsne(&data, 8, &settings(7), &NoProgress))
        };
        assert_eq!(run_on(1), run_on(3));
    }

    /// The (quarter) gradient by definition, over all pairs, from a dense P.
    fn exact_gradient(
        p: &SparseMatrix,
        positions: &[[f64; 2]],
        exaggeration: f64,
    ) -> Vec<[f64; 2]> {
        let n = positions.len();
        let mut dense = vec![vec![0.0; n]; n];
        for (i, row) in dense.iter_mut().enumerate() {
            for (j, v) in p.row(i) {
                row[j] = v * exaggeration;
            }
        }
        let kernel = |i: usize, j: usize| {
            let dx = positions[i][0] - positions[j][0];
            let dy = positions[i][1] - positions[j][1];
            1.0 / (1.0 + dx * dx + dy * dy)
        };
        let z: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| kernel(i, j))
            .sum();
        (0..n)
            .map(|i| {
                let mut g = [0.0; 2];
                for j in (0..n).filter(|&j| j != i) {
                    let k = kernel(i, j);
                    let scale = (dense[i][j] - k / z) * k;
                    g[0] += scale * (positions[i][0] - positions[j][0]);
                    g[1] += scale * (positions[i][1] - positions[j][1]);
                }
                g
            })
            .collect()
    }

    #[test]
    fn barnes_hut_gradient_matches_the_exact_one() {
        let (data, _) = blobs(4, 40, 6, 11);
        let (p, _) = joint_similarities(&data, 6, 8.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let positions: Vec<[f64; 2]> = (0..160)
            .map(|_| [rng.gen_range(-10.0..10.0), rng.gen_range(-10.0..10.0)])
            .collect();
        let exact = exact_gradient(&p, &positions, 12.0);
        let norm = |g: &[[f64; 2]]| g.iter().map(|v| v[0] * v[0] + v[1] * v[1]).sum::<f64>();
        let error_of = |theta: f64| {
            let (approx, _) = gradient(&p, &positions, 12.0, theta);
            let diff: Vec<[f64; 2]> = approx
                .iter()
                .zip(&exact)
                .map(|(a, e)| [a[0] - e[0], a[1] - e[1]])
                .collect();
            (norm(&diff) / norm(&exact)).sqrt()
        };
        assert!(error_of(0.0) < 1e-10, "theta 0: {}", error_of(0.0));
        let approximate = error_of(0.5);
        assert!(
            approximate < 0.02,
            "theta 0.5: relative error {approximate}"
        );
        assert!(approximate > 0.0, "theta 0.5 should approximate something");
    }

    #[test]
    fn degenerate_sizes() {
        let one = tsne(&[1.0, 2.0], 2, &settings(1), &NoProgress);
        assert_eq!(one.positions.len(), 1);
        let none = tsne(&[], 2, &settings(1), &NoProgress);
        assert!(none.positions.is_empty());
        let two = tsne(&[0.0, 0.0, 1.0, 1.0], 2, &settings(1), &NoProgress);
        assert!(two.positions.iter().flatten().all(|v| v.is_finite()));
    }

    /// The size the stage is built for: 8,000 points in 300 dimensions. Run with
    /// `cargo test --release -p onenet-stages tsne_8000 -- --ignored --nocapture`.
    #[test]
    #[ignore = "takes tens of seconds; a benchmark, not a check"]
    fn tsne_8000_points_timing() {
        let (data, labels) = blobs(20, 400, 300, 2);
        let started = std::time::Instant::now();
        let map = tsne(
            &data,
            300,
            &TsneSettings {
                perplexity: 30.0,
                iterations: 500,
                ..settings(7)
            },
            &NoProgress,
        );
        let seconds = started.elapsed().as_secs_f64();
        let same = (0..labels.len())
            .filter(|&i| labels[nearest(&map.positions, i)] == labels[i])
            .count();
        println!(
            "t-SNE of 8000 x 300 on {} threads: {seconds:.1} s, KL {:.3}, {same} of 8000 \
             nearest neighbours in the same blob",
            rayon::current_num_threads(),
            map.kl_divergence
        );
        assert!(seconds < 60.0);
    }
}
