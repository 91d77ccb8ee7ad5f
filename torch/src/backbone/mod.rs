//! Frozen ImageNet CNN backbones that turn images into feature vectors: InceptionV3 (torchvision's
//! Google weights) and EfficientNet-Lite0 (a PyTorch port of Google's TensorFlow weights).
//!
//! Weights come from PyTorch checkpoints (read without Python by [`checkpoint`]) or safetensors
//! files. A checkpoint is converted to safetensors once and cached beside it, named after the
//! checkpoint's content hash, so later loads skip the pickle and pick up a replaced file.
//! Loading is strict: every weight of the network must be in the file with its exact shape, and
//! the file may hold nothing else (except batch-norm step counters), so a wrong or truncated file
//! fails loudly instead of producing plausible-looking garbage features.

pub mod checkpoint;
pub mod efficientnet;
mod error;
pub mod inception;
mod layers;
mod pickle;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use image::imageops::{self, FilterType};
use image::RgbImage;
use tch::{nn, Device, Kind, Tensor};

use crate::precision::Precision;

pub use checkpoint::{convert_to_safetensors, read_weights, NamedTensors};
pub use efficientnet::EfficientNetLite0;
pub use error::BackboneError;
pub use inception::InceptionV3;
pub use layers::Padding;

/// The backbones there are weights for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackboneKind {
    InceptionV3,
    EfficientNetLite0,
}

impl BackboneKind {
    /// Every kind, in a fixed order.
    pub const ALL: [BackboneKind; 2] = [BackboneKind::InceptionV3, BackboneKind::EfficientNetLite0];

    /// The kind called `name` (`inception_v3` or `efficientnet_lite0`).
    pub fn from_name(name: &str) -> Result<BackboneKind, BackboneError> {
        BackboneKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| BackboneError::UnknownKind(name.to_string()))
    }

    /// The name params and file names use.
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::InceptionV3 => "inception_v3",
            BackboneKind::EfficientNetLite0 => "efficientnet_lite0",
        }
    }

    /// Side length of the square input images.
    pub fn input_size(self) -> u32 {
        match self {
            BackboneKind::InceptionV3 => inception::INPUT_SIZE,
            BackboneKind::EfficientNetLite0 => efficientnet::INPUT_SIZE,
        }
    }

    /// Width of the pooled feature vectors.
    pub fn feature_dim(self) -> i64 {
        match self {
            BackboneKind::InceptionV3 => inception::FEATURE_DIM,
            BackboneKind::EfficientNetLite0 => efficientnet::FEATURE_DIM,
        }
    }

    /// Width of the feature vectors `pooling` gives; an error when this kind lacks it.
    pub fn pooled_dim(self, pooling: Pooling) -> Result<i64, BackboneError> {
        match (self, pooling) {
            (_, Pooling::Final) => Ok(self.feature_dim()),
            (BackboneKind::EfficientNetLite0, Pooling::Multiscale) => {
                Ok(efficientnet::MULTISCALE_DIM)
            }
            (BackboneKind::EfficientNetLite0, Pooling::Grid) => Ok(efficientnet::GRID_DIM),
            (BackboneKind::InceptionV3, Pooling::Multiscale | Pooling::Grid) => {
                Err(BackboneError::UnsupportedPooling {
                    kind: self.name().to_string(),
                    pooling: pooling.name().to_string(),
                })
            }
        }
    }

    /// How pixel values must be scaled for this kind's weights.
    /// An RGB image of any size -> the `[3, S, S]` values the network takes, channel-major: the
    /// whole image resized (bilinear, aspect ratio not kept, nothing cropped away) and scaled as
    /// the weights expect. Plain Rust, so the decoding threads do it while the network runs.
    pub fn input_values(self, image: &RgbImage) -> Vec<f32> {
        let size = self.input_size();
        if image.dimensions() == (size, size) {
            self.input_scaling().values(image)
        } else {
            let resized = imageops::resize(image, size, size, FilterType::Triangle);
            self.input_scaling().values(&resized)
        }
    }

    pub fn input_scaling(self) -> InputScaling {
        match self {
            // torchvision's `transform_input=True` for the Google weights maps ImageNet-normalised
            // inputs back to x / 127.5 - 1, the scaling the TensorFlow original was trained with;
            // doing that directly skips a round trip.
            BackboneKind::InceptionV3 => InputScaling::UnitRange,
            // What TensorFlow's EfficientNet-Lite training used. Measured, not assumed: ImageNet
            // mean/std scaling also classifies the test photos correctly, but over several views
            // of them it gives the right classes clearly lower probability (see the tests).
            BackboneKind::EfficientNetLite0 => InputScaling::TfCentered,
        }
    }
}

impl FromStr for BackboneKind {
    type Err = BackboneError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        BackboneKind::from_name(name)
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which maps of the network a feature vector averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Pooling {
    /// The final map, globally averaged: what the classifier reads, and what captioning models
    /// built on ImageNet backbones usually take.
    #[default]
    Final,
    /// The final map and the last map of each later stage, each globally averaged and
    /// concatenated (EfficientNet-Lite0 only: 2024-d). The final map's channels keep little of
    /// an object's colour; the middle stages keep it, which a captioner naming colours needs.
    Multiscale,
    /// The multi-scale maps averaged over each region of a 4×4 grid, one 2024-d vector per
    /// region (EfficientNet-Lite0 only: 16 × 2024 = 32384-d), for a captioner that reads them one
    /// by one (`train` does, for grid features): a global average mixes the objects of a picture.
    Grid,
}

impl Pooling {
    pub const ALL: [Pooling; 3] = [Pooling::Final, Pooling::Multiscale, Pooling::Grid];

    /// The pooling called `name` (`final`, `multiscale` or `grid`, the `features` param's
    /// values).
    pub fn from_name(name: &str) -> Result<Pooling, BackboneError> {
        Pooling::ALL
            .into_iter()
            .find(|pooling| pooling.name() == name)
            .ok_or_else(|| BackboneError::UnknownPooling(name.to_string()))
    }

    /// Region vectors in each feature vector: 16 for `Grid` (4×4), 1 for the global poolings.
    pub fn regions(self) -> i64 {
        match self {
            Pooling::Grid => efficientnet::GRID * efficientnet::GRID,
            Pooling::Final | Pooling::Multiscale => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Final => "final",
            Pooling::Multiscale => "multiscale",
            Pooling::Grid => "grid",
        }
    }
}

/// How 8-bit pixel values `x` become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputScaling {
    /// `(x / 255 - mean) / std` per channel with the ImageNet statistics torchvision uses.
    ImageNetMeanStd,
    /// `(x - 127) / 128`: TensorFlow's EfficientNet-Lite preprocessing.
    TfCentered,
    /// `x / 127.5 - 1`, i.e. [-1, 1]: the Inception preprocessing.
    UnitRange,
}

impl InputScaling {
    /// The network's input for pixel value `value` of channel `channel` (0 red, 1 green, 2 blue).
    pub fn scale(self, channel: usize, value: u8) -> f32 {
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        let x = f32::from(value);
        match self {
            InputScaling::ImageNetMeanStd => (x / 255.0 - MEAN[channel]) / STD[channel],
            InputScaling::TfCentered => (x - 127.0) / 128.0,
            InputScaling::UnitRange => x / 127.5 - 1.0,
        }
    }

    /// An RGB image -> its `[3, H, W]` input values, channel-major.
    pub fn values(self, image: &RgbImage) -> Vec<f32> {
        let table: Vec<[f32; 256]> = (0..3)
            .map(|channel| std::array::from_fn(|v| self.scale(channel, v as u8)))
            .collect();
        let pixels = (image.width() * image.height()) as usize;
        // An image buffer may be longer than its pixels; take exactly W x H RGB values.
        let raw = &image.as_raw()[..pixels * 3];
        let mut values = vec![0f32; pixels * 3];
        let (red, rest) = values.split_at_mut(pixels);
        let (green, blue) = rest.split_at_mut(pixels);
        for (i, rgb) in raw.chunks_exact(3).enumerate() {
            red[i] = table[0][rgb[0] as usize];
            green[i] = table[1][rgb[1] as usize];
            blue[i] = table[2][rgb[2] as usize];
        }
        values
    }
}

/// The network of a backbone (boxed: the layer structs are large and differ widely in size).
enum Network {
    InceptionV3(Box<InceptionV3>),
    EfficientNetLite0(Box<EfficientNetLite0>),
}

impl Network {
    fn features(&self, xs: &Tensor) -> Tensor {
        match self {
            Network::InceptionV3(net) => net.features(xs),
            Network::EfficientNetLite0(net) => net.features(xs),
        }
    }

    /// Features pooled as `pooling` says; the kind supports it (checked by `with_pooling`).
    fn pooled(&self, xs: &Tensor, pooling: Pooling) -> Tensor {
        match (self, pooling) {
            (_, Pooling::Final) => self.features(xs),
            (Network::EfficientNetLite0(net), Pooling::Multiscale) => net.multiscale_features(xs),
            (Network::EfficientNetLite0(net), Pooling::Grid) => net.grid_features(xs),
            (Network::InceptionV3(_), Pooling::Multiscale | Pooling::Grid) => {
                unreachable!("with_pooling refuses multi-scale poolings for inception_v3")
            }
        }
    }

    fn logits(&self, features: &Tensor) -> Tensor {
        match self {
            Network::InceptionV3(net) => net.logits(features),
            Network::EfficientNetLite0(net) => net.logits(features),
        }
    }
}

/// A frozen backbone in inference mode.
pub struct Backbone {
    kind: BackboneKind,
    pooling: Pooling,
    precision: Precision,
    device: Device,
    network: Network,
    /// Owns the weights the network's tensors share.
    weights: nn::VarStore,
}

impl Backbone {
    /// Builds `kind` on `device` with the weights in `weights`: a torch checkpoint (`.pth`, zip or
    /// legacy layout) or a `.safetensors` file. `None` leaves random weights, which only tests
    /// and explicit "random" baselines want.
    pub fn load(
        kind: BackboneKind,
        weights: Option<&Path>,
        device: Device,
    ) -> Result<Backbone, BackboneError> {
        let mut store = nn::VarStore::new(device);
        let network = match kind {
            BackboneKind::InceptionV3 => {
                Network::InceptionV3(Box::new(InceptionV3::new(&store.root())))
            }
            BackboneKind::EfficientNetLite0 => {
                Network::EfficientNetLite0(Box::new(EfficientNetLite0::new(&store.root())))
            }
        };
        if let Some(path) = weights {
            let (tensors, _) = load_weights_cached(path)?;
            assign_weights(&store, &tensors, path, kind.name())?;
        }
        store.freeze();
        Ok(Backbone {
            kind,
            pooling: Pooling::Final,
            precision: Precision::F32,
            device,
            network,
            weights: store,
        })
    }

    pub fn kind(&self) -> BackboneKind {
        self.kind
    }

    /// This backbone giving features pooled as `pooling` says (`Final` when not called); an
    /// error when its kind lacks that pooling.
    pub fn with_pooling(mut self, pooling: Pooling) -> Result<Backbone, BackboneError> {
        self.kind.pooled_dim(pooling)?;
        self.pooling = pooling;
        Ok(self)
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// This backbone computing in `precision` (`F32` when not called). Call it before the
    /// first batch: the batch-norm folding happens then, in the weights' precision.
    pub fn with_precision(mut self, precision: Precision) -> Backbone {
        if precision == Precision::Bf16 {
            self.weights.bfloat16();
        }
        self.precision = precision;
        self
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Side length of the square inputs: 224 or 299.
    pub fn input_size(&self) -> u32 {
        self.kind.input_size()
    }

    /// Width of the features [`Backbone::features`] gives: 1280 or 2048 (`Final` pooling), 2024
    /// (`Multiscale`).
    pub fn feature_dim(&self) -> i64 {
        self.kind
            .pooled_dim(self.pooling)
            .unwrap_or_else(|_| self.kind.feature_dim())
    }

    /// An RGB image of any size -> the `[3, S, S]` f32 CPU tensor the network takes (see
    /// [`BackboneKind::input_values`]).
    pub fn preprocess(&self, image: &RgbImage) -> Tensor {
        let side = i64::from(self.input_size());
        Tensor::from_slice(&self.kind.input_values(image)).view([3, side, side])
    }

    /// A `[N, 3, S, S]` batch from the concatenated input values of N images.
    pub fn batch(&self, values: &[f32]) -> Tensor {
        let side = i64::from(self.input_size());
        Tensor::from_slice(values).view([-1, 3, side, side])
    }

    /// `[N, 3, S, S]` preprocessed images -> `[N, D]` features pooled as [`Backbone::pooling`]
    /// says, on the backbone's device.
    pub fn features(&self, batch: &Tensor) -> Tensor {
        self.check_batch(batch);
        tch::no_grad(|| {
            self.pooled_features(batch, self.pooling)
                .to_kind(Kind::Float)
        })
    }

    /// `[N, 3, S, S]` preprocessed images -> `[N, 1000]` ImageNet logits, on the backbone's device.
    pub fn classify(&self, batch: &Tensor) -> Tensor {
        self.check_batch(batch);
        tch::no_grad(|| {
            self.network
                .logits(&self.pooled_features(batch, Pooling::Final))
                .to_kind(Kind::Float)
        })
    }

    /// The network's features of `batch`, run channels-last: the convolution kernels libtorch
    /// picks for that layout (depthwise ones above all) are much faster on the CPU than those for
    /// the default layout, and every layer keeps the layout it is given. (The folded weights are
    /// channels-last too, see [`layers::ConvBn`].)
    fn pooled_features(&self, batch: &Tensor, pooling: Pooling) -> Tensor {
        self.network
            .pooled(&layers::channels_last(&self.to_device(batch)), pooling)
    }

    fn to_device(&self, batch: &Tensor) -> Tensor {
        batch.to_device(self.device).to_kind(self.precision.kind())
    }

    /// A wrongly shaped batch is a bug in the caller; say so plainly instead of letting libtorch
    /// fail deep inside a convolution.
    fn check_batch(&self, batch: &Tensor) {
        let size = batch.size();
        assert!(
            size.len() == 4 && size[1] == 3,
            "{} expects a [N, 3, {s}, {s}] batch, got {size:?}",
            self.kind,
            s = self.input_size()
        );
    }
}

/// Where [`load_weights_cached`] found the tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WeightsSource {
    /// The file given (a safetensors file, or a checkpoint that could not be cached).
    Given,
    /// The safetensors cache of the checkpoint, which was already there.
    Cache(PathBuf),
    /// The checkpoint, just converted into this new cache file.
    Converted(PathBuf),
}

/// The cache file of checkpoint `pth` whose content hash is `hash`:
/// `<dir>/<stem>.<16 hex digits>.safetensors`.
fn cache_path(pth: &Path, hash: &str) -> PathBuf {
    let stem = pth
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".to_string());
    pth.with_file_name(format!("{stem}.{hash}.safetensors"))
}

/// The first 16 hex digits of the BLAKE3 hash of the file at `path`.
fn short_hash(path: &Path) -> Result<String, BackboneError> {
    let file = std::fs::File::open(path).map_err(|e| BackboneError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| BackboneError::io(path, e))?;
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

/// Reads the tensors of a weights file. A torch checkpoint is converted to safetensors beside it
/// on first use (if its folder is writable) and read from there afterwards.
fn load_weights_cached(path: &Path) -> Result<(NamedTensors, WeightsSource), BackboneError> {
    if checkpoint::is_safetensors(path) {
        return Ok((checkpoint::read_safetensors(path)?, WeightsSource::Given));
    }
    let cache = cache_path(path, &short_hash(path)?);
    // The cache is read only when its bytes are those it was written with (its sidecar records
    // their hash): the key covers the checkpoint, not this derived file, so a damaged or edited
    // cache must not change the features. An unverified or unreadable one is rebuilt.
    if cache_is_intact(&cache) {
        if let Ok(tensors) = checkpoint::read_safetensors(&cache) {
            return Ok((tensors, WeightsSource::Cache(cache)));
        }
    }
    let tensors = checkpoint::read_pth(path)?;
    if write_cache(&tensors, &cache) {
        Ok((tensors, WeightsSource::Converted(cache)))
    } else {
        Ok((tensors, WeightsSource::Given))
    }
}

/// The file beside cache file `cache` that records the BLAKE3 hex of its bytes.
fn cache_hash_path(cache: &Path) -> PathBuf {
    let mut name = cache.as_os_str().to_owned();
    name.push(".blake3");
    PathBuf::from(name)
}

/// Whether `cache` exists and hashes to what its sidecar recorded when it was written.
fn cache_is_intact(cache: &Path) -> bool {
    let Ok(recorded) = std::fs::read_to_string(cache_hash_path(cache)) else {
        return false;
    };
    onenet_stages::hash_file(cache).is_ok_and(|hash| hash == recorded.trim())
}

/// Writes the cache file through a temporary file and a rename, so that a concurrent reader
/// never sees half a file, and then the sidecar with its hash (a cache without one is not
/// trusted, so a crash in between only costs a rebuild). Failure (a read-only folder) only
/// means no cache: returns false.
fn write_cache(tensors: &[(String, Tensor)], cache: &Path) -> bool {
    let Some(name) = cache.file_name() else {
        return false;
    };
    // Unique per process and per call, so that concurrent loads never share a temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let temp = cache.with_file_name(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let hash_file = cache_hash_path(cache);
    let hash_temp = temp.with_extension("blake3.tmp");
    let written = checkpoint::write_safetensors(tensors, &temp).is_ok()
        && onenet_stages::hash_file(&temp)
            .is_ok_and(|hash| std::fs::write(&hash_temp, hash).is_ok())
        && std::fs::rename(&temp, cache).is_ok()
        && std::fs::rename(&hash_temp, &hash_file).is_ok();
    if !written {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&hash_temp);
    }
    written
}

/// Copies `tensors` into the variables of `store`, checking that the two match exactly.
fn assign_weights(
    store: &nn::VarStore,
    tensors: &[(String, Tensor)],
    path: &Path,
    model: &'static str,
) -> Result<(), BackboneError> {
    let variables = store.variables();
    let mut by_name: HashMap<&str, &Tensor> = HashMap::new();
    for (name, tensor) in tensors {
        if checkpoint::is_num_batches_tracked(name) {
            continue;
        }
        if !variables.contains_key(name) {
            return Err(BackboneError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                found: tensor.size(),
                model,
            });
        }
        by_name.insert(name, tensor);
    }
    // Sorted, so that the error for a file with several problems is always the same one.
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    for name in &names {
        let expected = variables[*name].size();
        match by_name.get(name.as_str()) {
            None => {
                return Err(BackboneError::MissingTensor {
                    path: path.to_path_buf(),
                    name: (*name).clone(),
                    expected,
                })
            }
            Some(tensor) if tensor.size() != expected => {
                return Err(BackboneError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: (*name).clone(),
                    expected,
                    found: tensor.size(),
                })
            }
            Some(_) => {}
        }
    }
    tch::no_grad(|| {
        for name in names {
            let mut variable = variables[name].shallow_clone();
            variable
                .f_copy_(by_name[name.as_str()])
                .map_err(|e| BackboneError::torch(path, e))?;
        }
        Ok(())
    })
}
