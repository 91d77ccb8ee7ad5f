//! Stage kind `features`: runs a frozen CNN backbone over every usable image and writes the
//! pooled features as a safetensors matrix with the table giving its row order.
//!
//! Decoding and resizing run in parallel (rayon) on a producer thread while the backbone runs on
//! the previous batch, through a channel that holds at most two batches: memory stays flat
//! however many images there are. Features are reused per image content hash from this stage's
//! previous output when the backbone and weights are the same, so adding ten images to a folder
//! computes ten.
//!
//! The files it writes, and how to write and read them, are `onenet_stages::specs::features`;
//! [`FeatureMatrix`] reads them into a tensor for the stages and tasks that run the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use image::imageops::{self, FilterType};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::backbone::{Backbone, BackboneKind, Pooling};
use crate::precision::Precision;
use crate::runtime::Runtime;
use onenet_stages::image_file;
use onenet_stages::images::IMAGES_TABLE;
use onenet_stages::specs::features::{
    read_row_columns, read_rows, weights_path, write_matrix, FeatureRow, EXTRACTOR_FILE,
    FEATURES_FILE, FEATURES_TENSOR, KIND, ROWS_TABLE,
};
use onenet_stages::{Params, StageContext, StageError, StageReport};

/// The features of every image, in row order, as the stages that read a `features` output use
/// them.
pub struct FeatureMatrix {
    pub rows: Vec<FeatureRow>,
    /// [N, D] f32.
    pub features: Tensor,
}

impl FeatureMatrix {
    /// Reads the matrix a `features` stage wrote into `dir`, onto `device`.
    pub fn read(dir: &Path, device: Device) -> Result<FeatureMatrix, StageError> {
        let rows = read_rows(dir)?;
        let features_path = dir.join(FEATURES_FILE);
        let tensors = Tensor::read_safetensors(&features_path)
            .map_err(|e| StageError::file(&features_path, e.to_string()))?;
        let features = tensors
            .into_iter()
            .find(|(name, _)| name == FEATURES_TENSOR)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                StageError::file(
                    &features_path,
                    format!("no tensor named `{FEATURES_TENSOR}`"),
                )
            })?;
        let size = features.size();
        if size.len() != 2 || size[0] != rows.len() as i64 {
            return Err(StageError::file(
                &features_path,
                format!(
                    "shape {size:?} does not match the {} rows of {ROWS_TABLE}",
                    rows.len()
                ),
            ));
        }
        Ok(FeatureMatrix {
            rows,
            features: features.to_device(device),
        })
    }

    /// Row index of each image id.
    pub fn row_of(&self) -> HashMap<&str, usize> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.image_id.as_str(), i))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extractor {
    backbone: String,
    /// BLAKE3 of the weights file, or "random, seed N".
    weights: String,
    /// Absent from the files of versions before pooling was a choice: they pooled the final map.
    #[serde(default = "final_pooling")]
    pooling: String,
    /// Absent from the files of versions before precision was a choice: they computed in f32.
    #[serde(default = "f32_precision")]
    precision: String,
    version: u32,
}

impl Extractor {
    /// The description a `features` stage wrote into its output `dir`, and the file's path.
    fn read(dir: &Path) -> Result<(PathBuf, Extractor), StageError> {
        let path = dir.join(EXTRACTOR_FILE);
        let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        let recorded = serde_json::from_slice(&bytes)
            .map_err(|e| StageError::file(&path, format!("not a backbone description: {e}")))?;
        Ok((path, recorded))
    }

    /// The recorded pooling; `path` names the file in the error of an unknown one.
    fn pooling(&self, path: &Path) -> Result<Pooling, StageError> {
        Pooling::from_name(&self.pooling).map_err(|e| StageError::file(path, e.to_string()))
    }
}

/// How the features a `features` stage wrote into `dir` were pooled (from its `extractor.json`):
/// what tells the caption model how many region vectors each feature vector holds.
pub fn pooling_of_output(dir: &Path) -> Result<Pooling, StageError> {
    let (path, recorded) = Extractor::read(dir)?;
    recorded.pooling(&path)
}

/// How `extractor.json` names random weights, before their seed.
const RANDOM_WEIGHTS: &str = "random, seed ";

fn final_pooling() -> String {
    Pooling::Final.name().to_string()
}

fn f32_precision() -> String {
    Precision::F32.name().to_string()
}

/// The backbone a `features` stage's params describe. The stage and the task commands (which
/// compute features of new pictures as the pipeline did) both build theirs from it.
#[derive(Debug, Clone)]
pub struct BackboneSettings {
    pub kind: BackboneKind,
    /// The weights file, resolved against the project folder; `None`: random weights drawn
    /// from the stage's `seed`.
    pub weights: Option<PathBuf>,
    pub seed: i64,
    pub pooling: Pooling,
    pub precision: Precision,
}

impl BackboneSettings {
    /// Reads `backbone`, `weights`, `seed`, `pooling` and `precision` (each error names its
    /// param; a missing weights file names the file).
    pub fn of_params(params: &Params, base_dir: &Path) -> Result<BackboneSettings, StageError> {
        let kind =
            BackboneKind::from_name(params.str("backbone")?).map_err(|e| StageError::Param {
                name: "backbone".into(),
                message: e.to_string(),
            })?;
        let pooling = Pooling::from_name(params.str("pooling")?)?;
        kind.pooled_dim(pooling)?;
        Ok(BackboneSettings {
            kind,
            weights: weights_path(params, base_dir)?,
            seed: params.int("seed")?,
            pooling,
            precision: Precision::of_params(params)?,
        })
    }

    /// The backbone that computed the features in `dir` (a `features` output): the kind, pooling
    /// and precision its `extractor.json` records, with the weights `params` name (resolved
    /// against `base_dir`) when they are the recorded ones. A task command computing features of
    /// new pictures so uses the run it reads (a variant chosen with `--exp` or `--key` included),
    /// not whatever the pipeline file says now. Errors: the file unreadable, or the weights
    /// file's content not the one the features were computed with.
    pub fn of_output(
        dir: &Path,
        params: &Params,
        base_dir: &Path,
    ) -> Result<BackboneSettings, StageError> {
        let (path, recorded) = Extractor::read(dir)?;
        let bad = |message: String| StageError::file(&path, message);
        let mut settings = BackboneSettings::of_params(params, base_dir)?;
        settings.kind =
            BackboneKind::from_name(&recorded.backbone).map_err(|e| bad(e.to_string()))?;
        settings.pooling = recorded.pooling(&path)?;
        settings.precision =
            Precision::from_name(&recorded.precision).map_err(|e| bad(e.to_string()))?;
        if let Some(seed) = recorded.weights.strip_prefix(RANDOM_WEIGHTS) {
            settings.weights = None;
            settings.seed = seed
                .parse()
                .map_err(|_| bad(format!("unreadable seed in {:?}", recorded.weights)))?;
        } else if settings.weights_id()? != recorded.weights {
            return Err(StageError::Input(format!(
                "the features in {} were computed with other weights than {}: give the \
                 `features` stage the weights file it ran with",
                dir.display(),
                settings
                    .weights
                    .as_deref()
                    .map_or("random ones".into(), |w| w.display().to_string())
            )));
        }
        Ok(settings)
    }

    /// What identifies the weights in `extractor.json`: the BLAKE3 of the file, or
    /// "random, seed N".
    fn weights_id(&self) -> Result<String, StageError> {
        match &self.weights {
            Some(path) => onenet_stages::hash_file(path),
            None => Ok(format!("{RANDOM_WEIGHTS}{}", self.seed)),
        }
    }

    /// Width of the features this backbone computes.
    pub fn dim(&self) -> i64 {
        // `of_params` checked that the kind has this pooling.
        self.kind.pooled_dim(self.pooling).unwrap_or(0)
    }

    /// The backbone, ready to run on `device`.
    pub fn load(&self, device: Device) -> Result<Backbone, StageError> {
        // Random weights (a baseline) come from the seed, so every load draws the same ones.
        tch::manual_seed(self.seed);
        Ok(Backbone::load(self.kind, self.weights.as_deref(), device)
            .map_err(|e| StageError::Param {
                name: "weights".into(),
                message: e.to_string(),
            })?
            .with_pooling(self.pooling)?
            .with_precision(self.precision))
    }
}

/// One image to run through the backbone.
struct Pending {
    /// Index in the output matrix.
    row: usize,
    /// Where the file is on this machine.
    path: PathBuf,
    /// The content hash the images table recorded: the bytes read must match it.
    hash: String,
}

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let p = &ctx.params;
    let device = Runtime::for_stage(ctx)?.device;
    let settings = BackboneSettings::of_params(p, &ctx.base_dir)?;
    let dim = settings.dim();
    let extractor = Extractor {
        backbone: settings.kind.name().to_string(),
        weights: settings.weights_id()?,
        pooling: settings.pooling.name().to_string(),
        precision: settings.precision.name().to_string(),
        version: KIND.version,
    };
    let batch_size = p.int("batch_size")? as usize;

    // Each image's row: its columns of the images table, copied.
    let images = crate::input_dir(ctx, &onenet_stages::images::KIND)?;
    let mut rows = read_row_columns(&images.join(IMAGES_TABLE))?;
    // One shard of a sharded run: its images only, one row per distinct content.
    if let Some(hashes) = &ctx.shard {
        let mut wanted: std::collections::HashSet<&str> =
            hashes.iter().map(String::as_str).collect();
        rows.retain(|row| wanted.remove(row.hash.as_str()));
        if !wanted.is_empty() {
            return Err(StageError::Input(format!(
                "{} image(s) of the shard are not in the images table",
                wanted.len()
            )));
        }
    }
    if rows.is_empty() {
        return Err(StageError::Input(
            "the images table has no usable image".into(),
        ));
    }

    let mut matrix = vec![0f32; rows.len() * dim as usize];
    let reused = reuse_previous(
        ctx.previous.as_deref(),
        &extractor,
        &rows,
        &mut matrix,
        dim as usize,
    );
    let pending: Vec<Pending> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !reused[*i])
        .map(|(row, r)| {
            Ok(Pending {
                row,
                path: ctx.file_path(&r.path)?,
                hash: r.hash.clone(),
            })
        })
        .collect::<Result<_, StageError>>()?;

    let mut rate = f64::NAN;
    if !pending.is_empty() {
        let backbone = settings.load(device)?;
        let start = Instant::now();
        ctx.progress
            .start(pending.len() as u64, "extracting features");
        extract(
            &backbone,
            &pending,
            batch_size,
            &mut matrix,
            dim as usize,
            |done| {
                ctx.progress.inc(done as u64);
            },
        )?;
        rate = pending.len() as f64 / start.elapsed().as_secs_f64();
    }

    write_matrix(&ctx.out_dir, &rows, &matrix, dim as usize)?;
    let extractor_path = ctx.out_dir.join(EXTRACTOR_FILE);
    std::fs::write(
        &extractor_path,
        serde_json::to_vec_pretty(&extractor).unwrap_or_default(),
    )
    .map_err(|e| StageError::io(&extractor_path, e))?;

    let reused_count = reused.iter().filter(|r| **r).count();
    let mut notes = vec![format!(
        "{} images × {dim} ({}, {} pooling, {}): {} computed, {reused_count} reused from the \
         previous output",
        rows.len(),
        settings.kind.name(),
        settings.pooling.name(),
        settings.precision.name(),
        pending.len()
    )];
    if rate.is_finite() {
        notes.push(format!("{rate:.1} images/s at batch size {batch_size}"));
    }
    Ok(StageReport {
        device: None,
        metrics: Default::default(),
        warnings: Vec::new(),
        notes,
    })
}

/// Copies rows of the previous output whose image content is unchanged into `matrix`; returns
/// which rows were filled.
fn reuse_previous(
    previous: Option<&Path>,
    extractor: &Extractor,
    rows: &[FeatureRow],
    matrix: &mut [f32],
    dim: usize,
) -> Vec<bool> {
    let mut filled = vec![false; rows.len()];
    let Some(previous) = previous else {
        return filled;
    };
    let same_extractor = std::fs::read(previous.join(EXTRACTOR_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Extractor>(&b).ok())
        .is_some_and(|e| e == *extractor);
    if !same_extractor {
        return filled;
    }
    let Ok(old) = FeatureMatrix::read(previous, Device::Cpu) else {
        return filled;
    };
    if old.features.size()[1] != dim as i64 {
        return filled;
    }
    let old_values: Vec<f32> =
        Vec::try_from(old.features.to_kind(Kind::Float).reshape([-1])).unwrap_or_default();
    let by_hash: HashMap<&str, usize> = old
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.hash.as_str(), i))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        if let Some(&j) = by_hash.get(row.hash.as_str()) {
            matrix[i * dim..(i + 1) * dim].copy_from_slice(&old_values[j * dim..(j + 1) * dim]);
            filled[i] = true;
        }
    }
    filled
}

/// Decodes and resizes `pending` images in parallel on a producer thread, batch by batch, while
/// this thread runs the backbone; writes each image's features into its row of `matrix`.
fn extract(
    backbone: &Backbone,
    pending: &[Pending],
    batch_size: usize,
    matrix: &mut [f32],
    dim: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<(), StageError> {
    let kind = backbone.kind();
    let size = backbone.input_size();
    // Two batches in flight: one being decoded, one waiting; never the whole dataset. Each is
    // the batch's rows and its input values, ready for the network: the network's thread only
    // runs the network.
    let (tx, rx) = mpsc::sync_channel::<Result<(Vec<usize>, Vec<f32>), StageError>>(2);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for chunk in pending.chunks(batch_size) {
                let decoded: Result<Vec<Vec<f32>>, StageError> = chunk
                    .par_iter()
                    .map(|p| {
                        decode_resized(&p.path, &p.hash, size)
                            .map(|image| kind.input_values(&image))
                    })
                    .collect();
                // Every batch runs at full size (a short last batch is padded with copies of
                // its last image): libtorch picks its kernels by batch shape, so an image's
                // features then do not depend on how many images share its batch, and a
                // sharded run writes the same bytes as a whole one.
                let decoded = decoded.map(|mut values| {
                    if let Some(last) = values.last().cloned() {
                        values.resize(batch_size, last);
                    }
                    values
                });
                let message =
                    decoded.map(|values| (chunk.iter().map(|p| p.row).collect(), values.concat()));
                let failed = message.is_err();
                if tx.send(message).is_err() || failed {
                    break;
                }
            }
        });
        for message in rx {
            let (rows, values) = message?;
            let features = backbone
                .features(&backbone.batch(&values))
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            let values: Vec<f32> = Vec::try_from(features.reshape([-1])).unwrap_or_default();
            for (k, &row) in rows.iter().enumerate() {
                matrix[row * dim..(row + 1) * dim].copy_from_slice(&values[k * dim..(k + 1) * dim]);
            }
            on_batch(rows.len());
        }
        Ok(())
    })
}

/// An image file read with the project's reader (`onenet_stages::image_file`: format from the
/// content, EXIF orientation applied, alpha on white) and resized to `size`×`size`. Its bytes
/// must hash to `hash` (what the images table recorded), or nothing is computed from them.
pub fn decode_resized(path: &Path, hash: &str, size: u32) -> Result<RgbImage, StageError> {
    let bytes = onenet_stages::files::read_checked(path, hash)?;
    let picture = image_file::decode(&bytes)
        .map_err(|e| StageError::file(path, format!("cannot read image: {e}")))?;
    Ok(resized(picture.rgb, size))
}

/// `image` resized to `size`×`size`: the whole picture, squeezed, no crop.
pub fn resized(image: RgbImage, size: u32) -> RgbImage {
    if image.dimensions() == (size, size) {
        image
    } else {
        imageops::resize(&image, size, size, FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onenet_stages::ParamValue;
    use std::collections::BTreeMap;

    fn params(given: &[(&str, &str)]) -> Params {
        let given: BTreeMap<String, ParamValue> = given
            .iter()
            .map(|(k, v)| (k.to_string(), ParamValue::Str(v.to_string())))
            .collect();
        Params::with_defaults(KIND.params, given)
    }

    fn record(dir: &Path, extractor: &Extractor) {
        std::fs::write(
            dir.join(EXTRACTOR_FILE),
            serde_json::to_vec(extractor).unwrap(),
        )
        .unwrap();
    }

    /// What an EfficientNet-Lite0 run with these settings records.
    fn extractor(weights: &str, pooling: &str, precision: &str) -> Extractor {
        Extractor {
            backbone: "efficientnet_lite0".into(),
            weights: weights.into(),
            pooling: pooling.into(),
            precision: precision.into(),
            version: KIND.version,
        }
    }

    /// A task command rebuilds the backbone its run used, whatever the pipeline file says now.
    #[test]
    fn the_backbone_of_an_output_is_the_recorded_one() {
        let out = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        // The file now says f32 and the final map; the run was bf16, multi-scale, random seed 3.
        let file_params = params(&[("weights", "random")]);
        record(
            out.path(),
            &extractor("random, seed 3", "multiscale", "bf16"),
        );
        let settings =
            BackboneSettings::of_output(out.path(), &file_params, project.path()).unwrap();
        assert_eq!(settings.kind, BackboneKind::EfficientNetLite0);
        assert_eq!(settings.pooling, Pooling::Multiscale);
        assert_eq!(settings.precision, Precision::Bf16);
        assert_eq!((settings.weights.clone(), settings.seed), (None, 3));
        assert_eq!(settings.dim(), 2024);

        // A weights file whose content is not the recorded one is an error naming it.
        std::fs::write(project.path().join("w.pth"), b"other weights").unwrap();
        record(out.path(), &extractor("0123abcd", "final", "f32"));
        let error = BackboneSettings::of_output(
            out.path(),
            &params(&[("weights", "w.pth")]),
            project.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("other weights") && error.contains("w.pth"),
            "{error}"
        );
        // The recorded hash of that very file: accepted, with the file's path.
        record(
            out.path(),
            &extractor(
                &onenet_stages::hash_file(&project.path().join("w.pth")).unwrap(),
                "final",
                "f32",
            ),
        );
        let settings = BackboneSettings::of_output(
            out.path(),
            &params(&[("weights", "w.pth")]),
            project.path(),
        )
        .unwrap();
        assert_eq!(settings.weights, Some(project.path().join("w.pth")));
        assert_eq!(settings.precision, Precision::F32);

        // An unreadable description names its file.
        std::fs::write(out.path().join(EXTRACTOR_FILE), b"{").unwrap();
        let error = BackboneSettings::of_output(out.path(), &file_params, project.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains(EXTRACTOR_FILE), "{error}");
    }
}
