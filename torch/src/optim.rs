//! Adam with gradient-norm clipping, written out here so that its state (the step count and both
//! moment estimates of every weight) can be saved with a training checkpoint: libtorch's own Adam
//! keeps that state where tch cannot reach it, and a training resumed without it restarts its
//! moments and takes different steps from an uninterrupted one. The update is libtorch's (and
//! PyTorch's) Adam without weight decay or AMSGrad.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Tensor};

use onenet_stages::StageError;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// The optimiser over every trainable weight of a var store.
pub struct Adam {
    learning_rate: f64,
    /// (name in the var store, weight), sorted by name.
    weights: Vec<(String, Tensor)>,
    /// Moving averages of each weight's gradient and squared gradient.
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Updates taken so far (the bias corrections depend on it).
    steps: i64,
}

impl Adam {
    pub fn new(vs: &nn::VarStore, learning_rate: f64) -> Adam {
        let mut weights: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = || -> Vec<Tensor> {
            weights
                .iter()
                .map(|(_, w)| tch::no_grad(|| w.zeros_like()))
                .collect()
        };
        let (first, second) = (zeros(), zeros());
        Adam {
            learning_rate,
            weights,
            first,
            second,
            steps: 0,
        }
    }

    /// The step size of the next updates (a learning-rate schedule changes it between epochs).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// Updates taken so far.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Back-propagates `loss`, scales the gradients down to a total L2 norm of at most
    /// `max_norm` (as PyTorch's `clip_grad_norm_` does), and takes one Adam step.
    pub fn backward_step_clip_norm(&mut self, loss: &Tensor, max_norm: f64) {
        for (_, weight) in &mut self.weights {
            weight.zero_grad();
        }
        loss.backward();
        tch::no_grad(|| {
            // A weight the loss does not reach has no gradient; it is left alone.
            let gradients: Vec<Option<Tensor>> = self
                .weights
                .iter()
                .map(|(_, w)| Some(w.grad()).filter(Tensor::defined))
                .collect();
            let norms: Vec<Tensor> = gradients.iter().flatten().map(|g| g.norm()).collect();
            if norms.is_empty() {
                return;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let clip = max_norm / (total + 1e-6);
            self.steps += 1;
            let correction1 = 1.0 - BETA1.powi(self.steps as i32);
            let correction2 = 1.0 - BETA2.powi(self.steps as i32);
            let step_size = self.learning_rate / correction1;
            for (i, gradient) in gradients.into_iter().enumerate() {
                let Some(mut gradient) = gradient else {
                    continue;
                };
                if clip < 1.0 {
                    let _ = gradient.g_mul_scalar_(clip);
                }
                let first = &mut self.first[i];
                let _ = first.g_mul_scalar_(BETA1);
                let _ = first.g_add_(&(&gradient * (1.0 - BETA1)));
                let second = &mut self.second[i];
                let _ = second.g_mul_scalar_(BETA2);
                let _ = second.g_add_(&(&gradient * &gradient * (1.0 - BETA2)));
                let denominator = second.sqrt() / correction2.sqrt() + EPSILON;
                let _ = self.weights[i]
                    .1
                    .g_sub_(&(&*first / denominator * step_size));
            }
        });
    }

    /// Writes the moment estimates to `path` (safetensors, `first.<weight>` and
    /// `second.<weight>`); the step count goes with the checkpoint's other numbers.
    pub fn save(&self, path: &Path) -> Result<(), StageError> {
        let mut named: Vec<(String, &Tensor)> = Vec::with_capacity(2 * self.weights.len());
        for (i, (name, _)) in self.weights.iter().enumerate() {
            named.push((format!("first.{name}"), &self.first[i]));
            named.push((format!("second.{name}"), &self.second[i]));
        }
        Tensor::write_safetensors(&named, path)
            .map_err(|e| StageError::file(path, format!("saving the optimiser state: {e}")))
    }

    /// Restores what [`Adam::save`] wrote and the step count saved beside it; an error names the
    /// file and the weight whose state is missing or has the wrong shape.
    pub fn load(&mut self, path: &Path, steps: i64) -> Result<(), StageError> {
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| StageError::file(path, format!("reading the optimiser state: {e}")))?
            .into_iter()
            .collect();
        tch::no_grad(|| {
            for (i, (name, weight)) in self.weights.iter().enumerate() {
                for (kind, moments) in [("first", &mut self.first), ("second", &mut self.second)] {
                    let key = format!("{kind}.{name}");
                    let value = saved.get(&key).filter(|t| t.size() == weight.size());
                    let Some(value) = value else {
                        return Err(StageError::file(
                            path,
                            format!("no state `{key}` of shape {:?}", weight.size()),
                        ));
                    };
                    moments[i] = value.to_device(weight.device()).to_kind(weight.kind());
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind};

    /// A small regression problem: weights, a loss over them.
    fn problem(seed: i64) -> (nn::VarStore, Tensor, Tensor) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "layer", 4, 3, Default::default());
        let inputs = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let targets = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
        (vs, inputs, targets)
    }

    fn loss(vs: &nn::VarStore, inputs: &Tensor, targets: &Tensor) -> Tensor {
        let vars = vs.variables();
        let prediction = inputs.linear(&vars["layer.weight"], Some(&vars["layer.bias"]));
        (prediction - targets).square().mean(Kind::Float)
    }

    fn weights(vs: &nn::VarStore) -> Vec<f32> {
        let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
            .iter()
            .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
            .collect()
    }

    #[test]
    fn takes_the_same_steps_as_libtorchs_adam() {
        let (ours, inputs, targets) = problem(1);
        let (theirs, _, _) = problem(1);
        let mut adam = Adam::new(&ours, 0.05);
        let mut reference = nn::Adam::default().build(&theirs, 0.05).unwrap();
        for _ in 0..30 {
            adam.backward_step_clip_norm(&loss(&ours, &inputs, &targets), 0.5);
            reference.backward_step_clip_norm(&loss(&theirs, &inputs, &targets), 0.5);
        }
        assert_eq!(adam.steps(), 30);
        for (a, b) in weights(&ours).iter().zip(weights(&theirs)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_saved_and_restored_state_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("adam.safetensors");
        let (straight, inputs, targets) = problem(2);
        let mut adam = Adam::new(&straight, 0.05);
        for _ in 0..10 {
            adam.backward_step_clip_norm(&loss(&straight, &inputs, &targets), 1.0);
        }
        adam.save(&state).unwrap();
        let (resumed, _, _) = problem(3);
        tch::no_grad(|| {
            for (name, mut weight) in resumed.variables() {
                weight.copy_(&straight.variables()[&name]);
            }
        });
        let mut restored = Adam::new(&resumed, 0.05);
        restored.load(&state, adam.steps()).unwrap();
        for _ in 0..10 {
            adam.backward_step_clip_norm(&loss(&straight, &inputs, &targets), 1.0);
            restored.backward_step_clip_norm(&loss(&resumed, &inputs, &targets), 1.0);
        }
        assert_eq!(weights(&straight), weights(&resumed));

        // A state from another model is refused, naming what is missing.
        let other = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(other.root() / "other", 4, 3, Default::default());
        let err = Adam::new(&other, 0.05)
            .load(&state, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first.other."), "{err}");
    }
}
