//! A quadtree over the 2-D map for the Barnes-Hut approximation of t-SNE's repulsive forces: a
//! cell that looks small from a point (side / distance below theta) acts on it as one body at its
//! centre of mass, so each point sums over O(log N) cells instead of N points.

/// Below this depth cells stop splitting: points closer than 2^-40 of the map's extent (in
/// practice only duplicates) share one leaf, whose points are then summed exactly.
const MAX_DEPTH: usize = 40;

/// Enough stack for a depth-first walk: at most three siblings wait at each level, plus the node
/// being expanded.
const STACK_SIZE: usize = 3 * MAX_DEPTH + 8;

#[derive(Debug, Clone)]
struct Node {
    /// Side length of the square cell.
    side: f64,
    centre_of_mass: [f64; 2],
    count: u32,
    /// Index of the first of four consecutive children; 0 for a leaf (the root is never a child).
    first_child: u32,
    /// For a leaf, its points are `order[start..end]`.
    start: u32,
    end: u32,
}

/// The repulsion one point feels from all the others.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Repulsion {
    /// Σ_j q_ij² Z² (y_i − y_j), where q_ij Z = 1 / (1 + |y_i − y_j|²) is the unnormalised
    /// Student-t kernel; dividing by Z gives the repulsive part of the gradient.
    pub force: [f64; 2],
    /// Σ_j q_ij Z: this point's share of the normaliser Z.
    pub kernel_sum: f64,
}

pub struct QuadTree<'a> {
    positions: &'a [[f64; 2]],
    nodes: Vec<Node>,
    /// Point indices, grouped so that every cell's points are contiguous.
    order: Vec<u32>,
}

impl<'a> QuadTree<'a> {
    /// Builds the tree over `positions`. The construction is sequential and its partitioning
    /// stable, so the tree (and every sum over it) is the same on every run.
    pub fn new(positions: &'a [[f64; 2]]) -> Self {
        let mut tree = QuadTree {
            positions,
            nodes: Vec::with_capacity(positions.len() * 2 + 1),
            order: (0..positions.len() as u32).collect(),
        };
        if positions.is_empty() {
            return tree;
        }
        let (mut low, mut high) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for p in positions {
            for axis in 0..2 {
                low[axis] = low[axis].min(p[axis]);
                high[axis] = high[axis].max(p[axis]);
            }
        }
        let centre = [(low[0] + high[0]) / 2.0, (low[1] + high[1]) / 2.0];
        // A little wider than the points so that the maximum lands strictly inside the root.
        let side = (high[0] - low[0])
            .max(high[1] - low[1])
            .max(f64::MIN_POSITIVE)
            * 1.0001;
        tree.nodes.push(Node {
            side,
            centre_of_mass: [0.0; 2],
            count: 0,
            first_child: 0,
            start: 0,
            end: 0,
        });
        let mut scratch = vec![0u32; positions.len()];
        tree.build(0, 0, positions.len(), centre, side, 0, &mut scratch);
        tree
    }

    /// Fills node `node` with the points `order[start..end]`, inside the square at `centre`.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        node: usize,
        start: usize,
        end: usize,
        centre: [f64; 2],
        side: f64,
        depth: usize,
        scratch: &mut [u32],
    ) {
        let mut sum = [0.0f64; 2];
        for &p in &self.order[start..end] {
            let position = self.positions[p as usize];
            sum[0] += position[0];
            sum[1] += position[1];
        }
        let count = end - start;
        let centre_of_mass = if count > 0 {
            [sum[0] / count as f64, sum[1] / count as f64]
        } else {
            [0.0; 2]
        };
        self.nodes[node] = Node {
            side,
            centre_of_mass,
            count: count as u32,
            first_child: 0,
            start: start as u32,
            end: end as u32,
        };
        if count <= 1 || depth >= MAX_DEPTH {
            return;
        }

        // Stable partition into the four quadrants: 0 = left-bottom, 1 = right-bottom,
        // 2 = left-top, 3 = right-top.
        let quadrant = |p: u32| {
            let position = self.positions[p as usize];
            usize::from(position[0] >= centre[0]) | (usize::from(position[1] >= centre[1]) << 1)
        };
        let mut counts = [0usize; 4];
        for &p in &self.order[start..end] {
            counts[quadrant(p)] += 1;
        }
        let mut offsets = [start, 0, 0, 0];
        for q in 1..4 {
            offsets[q] = offsets[q - 1] + counts[q - 1];
        }
        let mut next = offsets;
        for &p in &self.order[start..end] {
            let q = quadrant(p);
            scratch[next[q]] = p;
            next[q] += 1;
        }
        self.order[start..end].copy_from_slice(&scratch[start..end]);

        let first_child = self.nodes.len();
        self.nodes[node].first_child = first_child as u32;
        self.nodes
            .extend(std::iter::repeat_n(self.nodes[node].clone(), 4));
        let quarter = side / 4.0;
        for q in 0..4 {
            let child_centre = [
                centre[0] + if q & 1 == 1 { quarter } else { -quarter },
                centre[1] + if q & 2 == 2 { quarter } else { -quarter },
            ];
            self.build(
                first_child + q,
                offsets[q],
                offsets[q] + counts[q],
                child_centre,
                side / 2.0,
                depth + 1,
                scratch,
            );
        }
    }

    /// The repulsion on point `point` from every other point, with cells whose side seen from
    /// the point is below `theta` replaced by their centre of mass (theta 0: exact). Cells are
    /// visited in a fixed order, so the sums are reproducible.
    pub fn repulsion(&self, point: usize, theta: f64) -> Repulsion {
        let mut result = Repulsion::default();
        if self.nodes.is_empty() {
            return result;
        }
        let here = self.positions[point];
        let theta_squared = theta * theta;
        let mut add = |delta: [f64; 2], weight: f64| {
            let kernel = 1.0 / (1.0 + delta[0] * delta[0] + delta[1] * delta[1]);
            result.kernel_sum += weight * kernel;
            let scaled = weight * kernel * kernel;
            result.force[0] += scaled * delta[0];
            result.force[1] += scaled * delta[1];
        };
        let mut stack = [0u32; STACK_SIZE];
        let mut depth = 1;
        while depth > 0 {
            depth -= 1;
            let node = &self.nodes[stack[depth] as usize];
            if node.count == 0 {
                continue;
            }
            if node.first_child == 0 {
                for &other in &self.order[node.start as usize..node.end as usize] {
                    if other as usize != point {
                        let there = self.positions[other as usize];
                        add([here[0] - there[0], here[1] - there[1]], 1.0);
                    }
                }
                continue;
            }
            let delta = [
                here[0] - node.centre_of_mass[0],
                here[1] - node.centre_of_mass[1],
            ];
            let distance_squared = delta[0] * delta[0] + delta[1] * delta[1];
            if node.side * node.side < theta_squared * distance_squared {
                add(delta, node.count as f64);
            } else {
                // Pushed in reverse so that quadrant 0 is visited first.
                for q in (0..4).rev() {
                    stack[depth] = node.first_child + q;
                    depth += 1;
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(positions: &[[f64; 2]], point: usize) -> Repulsion {
        let mut result = Repulsion::default();
        for (j, there) in positions.iter().enumerate() {
            if j == point {
                continue;
            }
            let delta = [
                positions[point][0] - there[0],
                positions[point][1] - there[1],
            ];
            let kernel = 1.0 / (1.0 + delta[0] * delta[0] + delta[1] * delta[1]);
            result.kernel_sum += kernel;
            result.force[0] += kernel * kernel * delta[0];
            result.force[1] += kernel * kernel * delta[1];
        }
        result
    }

    fn scattered(n: usize) -> Vec<[f64; 2]> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                [(t * 0.37).sin() * 8.0 + t * 0.01, (t * 0.91).cos() * 5.0]
            })
            .collect()
    }

    #[test]
    fn theta_zero_is_exact() {
        let positions = scattered(200);
        let tree = QuadTree::new(&positions);
        for point in [0, 17, 199] {
            let (bh, ex) = (tree.repulsion(point, 0.0), exact(&positions, point));
            assert!((bh.kernel_sum - ex.kernel_sum).abs() < 1e-9 * ex.kernel_sum);
            for axis in 0..2 {
                assert!((bh.force[axis] - ex.force[axis]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn duplicate_points_share_a_leaf() {
        let mut positions = vec![[1.0, 1.0]; 5];
        positions.push([3.0, -2.0]);
        let tree = QuadTree::new(&positions);
        let bh = tree.repulsion(0, 0.5);
        let ex = exact(&positions, 0);
        assert!((bh.kernel_sum - ex.kernel_sum).abs() < 1e-12);
        assert_eq!(bh.force, ex.force);
    }

    #[test]
    fn every_point_is_in_exactly_one_leaf() {
        let positions = scattered(300);
        let tree = QuadTree::new(&positions);
        let mut seen = vec![0; positions.len()];
        for node in tree.nodes.iter().filter(|n| n.first_child == 0) {
            for &p in &tree.order[node.start as usize..node.end as usize] {
                seen[p as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        assert_eq!(tree.nodes[0].count, 300);
    }
}
