//! The `features` stage kind as the engine sees it: params, inputs, the weights file it reads,
//! and the files it writes (names, columns, the writer and the row reader: the stage, the stages
//! that read its matrix and the task commands go through these). It runs in the libtorch worker
//! (`onenet-torch`), which reads the matrix itself into a tensor.

use std::path::{Path, PathBuf};

use crate::table::{read_parquet, required, string_column, strings, u32_column, write_columns};
use crate::{
    Effect, InputRule, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageError,
    StageInput, StageKind,
};

pub const KIND: StageKind = StageKind {
    name: "features",
    version: 4,
    about: "Pooled features of every image from a frozen CNN backbone",
    params: PARAMS,
    inputs: InputRule {
        kinds: &["images"],
        min: 1,
        max: 1,
    },
    sources,
    device: crate::DeviceUse::Best,
    run: crate::worker::run_in_worker,
    shards: Some(&SHARDS),
    files_root: None,
};

/// Sharded by image content: each shard computes the features of its images, and the merge puts
/// them in the images table's order. An image's features do not depend on which other images
/// share its batch (every batch is run at full size, see the worker), so a sharded run writes the
/// same bytes as a whole one, and `shard_images` is not part of the key.
pub const SHARDS: crate::ShardSpec = crate::ShardSpec {
    param: "shard_images",
    items: shard_items,
    merge: merge_shards,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "backbone",
        ty: ParamType::Choice(&["efficientnet_lite0", "inception_v3"]),
        default: ParamDefault::Str("efficientnet_lite0"),
        effect: Effect::Output,
        help: "CNN: efficientnet_lite0 (224 px, 1280-d) or inception_v3 (299 px, 2048-d)",
    },
    ParamSpec {
        name: "pooling",
        ty: ParamType::Choice(&["final", "multiscale", "grid"]),
        default: ParamDefault::Str("final"),
        effect: Effect::Output,
        help: "final: the last map, globally averaged (1280-d or 2048-d); multiscale \
               (efficientnet_lite0 only): also the last map of each stage from 40 channels on, \
               2024-d, which keeps the colours of objects the final map mostly discards; grid \
               (efficientnet_lite0 only): the multiscale maps averaged over each region of a \
               4x4 grid, 16 x 2024-d, region after region, which `train` reads region by \
               region, keeping the objects of a picture apart",
    },
    ParamSpec {
        name: "precision",
        ty: ParamType::Choice(&["f32", "bf16"]),
        default: ParamDefault::Str("f32"),
        effect: Effect::Output,
        help: "f32, or bf16: the network about twice as fast (the stage about 1.4x) on CPUs with \
               AVX-512 BF16 or AMX, slow on others; features close to the f32 ones (cosine \
               >= 0.995 on photos; on the demo's flat-coloured pictures 0.97-0.98 on average, 0.83 \
               at worst)",
    },
    ParamSpec {
        name: "weights",
        ty: ParamType::Path {
            what: PathKind::File,
            words: &["random"],
        },
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "ImageNet weights: a .pth or .safetensors file, or \"random\" (tests only)",
    },
    ParamSpec::seed(
        0,
        "Seed of the initial weights when weights = \"random\"",
    ),
    ParamSpec {
        name: "batch_size",
        ty: ParamType::Int { min: 1, max: 4096 },
        default: ParamDefault::Int(8),
        effect: Effect::Output,
        help: "Images per forward pass (4-8 is fastest on two CPU cores). Part of the cache key: \
               libtorch picks its convolution kernels by batch shape, which can change the features in \
               their last bits",
    },
    ParamSpec {
        name: "shard_images",
        ty: ParamType::Int {
            min: 0,
            max: 10_000_000,
        },
        default: ParamDefault::Int(0),
        effect: Effect::SpeedOnly,
        help: "Images per shard (0: one piece). Each shard is cached on its own, keyed by its \
               images' content, and can run as a task of a cluster's array job (`[executor] kind = \
               \"slurm\"`); adding images computes only a new shard. Same features either way",
    },
    ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP),
];

/// Every image of the images table, with its content hash.
fn shard_items(
    _params: &Params,
    inputs: &[StageInput],
) -> Result<Vec<crate::ShardItem>, StageError> {
    let images = crate::input_of_kind(inputs, crate::images::KIND.name)?;
    Ok(
        read_row_columns(&images.dir.join(crate::images::IMAGES_TABLE))?
            .into_iter()
            .map(|row| crate::ShardItem {
                id: row.image_id,
                hash: row.hash,
            })
            .collect(),
    )
}

/// The whole feature matrix from the shards' matrices: each image's row is the row of its
/// content hash in whichever shard computed it.
fn merge_shards(
    ctx: &crate::StageContext,
    shards: &[PathBuf],
) -> Result<crate::StageReport, StageError> {
    let images = crate::input_of_kind(&ctx.inputs, crate::images::KIND.name)?;
    let rows = read_row_columns(&images.dir.join(crate::images::IMAGES_TABLE))?;
    let mut dim = 0;
    let mut by_hash: std::collections::HashMap<String, (usize, usize)> = Default::default();
    let mut matrices = Vec::with_capacity(shards.len());
    for (s, dir) in shards.iter().enumerate() {
        let (values, shape) = read_f32_safetensors(&dir.join(FEATURES_FILE), FEATURES_TENSOR)?;
        if s > 0 && shape[1] != dim {
            return Err(StageError::file(
                dir.join(FEATURES_FILE),
                format!("{} columns where the other shards have {dim}", shape[1]),
            ));
        }
        dim = shape[1];
        for (r, row) in read_rows(dir)?.into_iter().enumerate() {
            by_hash.entry(row.hash).or_insert((s, r));
        }
        matrices.push(values);
    }
    let mut values = vec![0f32; rows.len() * dim];
    for (i, row) in rows.iter().enumerate() {
        let &(s, r) = by_hash.get(&row.hash).ok_or_else(|| {
            StageError::Input(format!(
                "no shard holds the features of {} ({})",
                row.image_id, row.hash
            ))
        })?;
        values[i * dim..(i + 1) * dim].copy_from_slice(&matrices[s][r * dim..(r + 1) * dim]);
    }
    write_matrix(&ctx.out_dir, &rows, &values, dim)?;
    if let Some(first) = shards.first() {
        let from = first.join(EXTRACTOR_FILE);
        let to = ctx.out_dir.join(EXTRACTOR_FILE);
        std::fs::copy(&from, &to).map_err(|e| StageError::io(&from, e))?;
    }
    Ok(crate::StageReport {
        notes: vec![format!(
            "{} images × {dim}, put together from {} shard(s)",
            rows.len(),
            shards.len()
        )],
        ..Default::default()
    })
}

/// The f32 matrix `name` of a safetensors file: its values, row-major, and its shape.
fn read_f32_safetensors(path: &Path, name: &str) -> Result<(Vec<f32>, [usize; 2]), StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| StageError::file(path, format!("not a safetensors file: {e}")))?;
    let tensor = tensors
        .tensor(name)
        .map_err(|e| StageError::file(path, format!("no tensor `{name}`: {e}")))?;
    let shape = tensor.shape();
    if tensor.dtype() != safetensors::Dtype::F32 || shape.len() != 2 {
        return Err(StageError::file(
            path,
            format!(
                "`{name}` is not a 2-d f32 matrix ({:?} {shape:?})",
                tensor.dtype()
            ),
        ));
    }
    let values = tensor
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((values, [shape[0], shape[1]]))
}

/// The weights file named by the params, or None for explicit random weights.
pub fn weights_path(params: &Params, base_dir: &Path) -> Result<Option<PathBuf>, StageError> {
    match params.opt_str("weights") {
        None => Err(StageError::Param {
            name: "weights".into(),
            message: "is not set: give the path of the backbone's ImageNet weights \
                      (`make setup` installs EfficientNet-Lite0's as weights/efficientnet-lite0-57934424.pth), \
                      or \"random\" to use untrained weights on purpose"
                .into(),
        }),
        Some("random") => Ok(None),
        Some(path) => {
            let path = base_dir.join(path);
            if !path.is_file() {
                return Err(StageError::file(
                    &path,
                    "weights file not found (for EfficientNet-Lite0, `make setup` installs it)",
                ));
            }
            Ok(Some(path))
        }
    }
}

fn sources(
    params: &Params,
    _inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    Ok(weights_path(params, base_dir)?
        .map(|path| Source::param_file("weights", path))
        .into_iter()
        .collect())
}

/// The feature matrix: a safetensors file holding one [N, D] f32 tensor, `FEATURES_TENSOR`.
pub const FEATURES_FILE: &str = "features.safetensors";
/// The tensor name inside `FEATURES_FILE`.
pub const FEATURES_TENSOR: &str = "features";
/// The matrix's rows: which image each row describes.
pub const ROWS_TABLE: &str = "rows.parquet";
/// Which backbone and weights computed the features (JSON), so that a later run knows what it
/// may reuse.
pub const EXTRACTOR_FILE: &str = "extractor.json";

/// The columns of `ROWS_TABLE`, in order. All but `row` are the images table's columns of the
/// same name, copied.
pub mod rows_columns {
    pub const ROW: &str = "row";
    pub const IMAGE_ID: &str = "image_id";
    pub const HASH: &str = "hash";
    pub const SPLIT: &str = "split";
    pub const PATH: &str = "path";
}

/// One image's row in the feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub image_id: String,
    pub hash: String,
    pub split: String,
    pub path: String,
}

/// The rows of the matrix a `features` stage wrote into `dir`, in row order.
pub fn read_rows(dir: &Path) -> Result<Vec<FeatureRow>, StageError> {
    read_row_columns(&dir.join(ROWS_TABLE))
}

/// The image_id, hash, split and path columns of the table `path` as rows: the rows table, or
/// the images table they are copied from.
pub fn read_row_columns(path: &Path) -> Result<Vec<FeatureRow>, StageError> {
    use rows_columns::*;
    let table = read_parquet(path)?;
    let column = |name| strings(path, &table, name);
    Ok(column(IMAGE_ID)?
        .into_iter()
        .zip(column(HASH)?)
        .zip(column(SPLIT)?)
        .zip(column(PATH)?)
        .map(|(((image_id, hash), split), path)| FeatureRow {
            image_id,
            hash,
            split,
            path,
        })
        .collect())
}

/// Writes `rows` and their features, row-major `values` of width `dim`, into `dir`. The
/// safetensors file is written straight from `values`, without a second in-memory copy.
pub fn write_matrix(
    dir: &Path,
    rows: &[FeatureRow],
    values: &[f32],
    dim: usize,
) -> Result<(), StageError> {
    use rows_columns::*;
    write_f32_safetensors(
        &dir.join(FEATURES_FILE),
        FEATURES_TENSOR,
        values,
        [rows.len(), dim],
    )?;
    let column = |get: fn(&FeatureRow) -> &str| string_column(rows.iter().map(get));
    write_columns(
        &dir.join(ROWS_TABLE),
        vec![
            required(ROW, u32_column(0..rows.len() as u32)),
            required(IMAGE_ID, column(|r| &r.image_id)),
            required(HASH, column(|r| &r.hash)),
            required(SPLIT, column(|r| &r.split)),
            required(PATH, column(|r| &r.path)),
        ],
    )
}

/// Writes one f32 matrix as a safetensors file: an 8-byte header length, the JSON header
/// (padded with spaces to a multiple of 8), then the little-endian data.
fn write_f32_safetensors(
    path: &Path,
    name: &str,
    values: &[f32],
    shape: [usize; 2],
) -> Result<(), StageError> {
    use std::io::Write;
    if shape[0] * shape[1] != values.len() {
        return Err(StageError::file(
            path,
            format!("{} values do not fill shape {shape:?}", values.len()),
        ));
    }
    let bytes = values.len() * 4;
    let mut header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,{bytes}]}}}}"#,
        shape[0], shape[1]
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let io = |e| StageError::io(path, e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header.as_bytes()).map_err(io)?;
    for chunk in values.chunks(8192) {
        let mut buf = Vec::with_capacity(chunk.len() * 4);
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf).map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_and_the_matrix_is_little_endian_f32() {
        let dir = tempfile::tempdir().unwrap();
        let row = |id: &str| FeatureRow {
            image_id: id.into(),
            hash: format!("hash of {id}"),
            split: "train".into(),
            path: format!("pictures/{id}"),
        };
        let rows = [row("a.jpg"), row("b.jpg")];
        write_matrix(dir.path(), &rows, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3).unwrap();
        assert_eq!(read_rows(dir.path()).unwrap(), rows);
        let bytes = std::fs::read(dir.path().join(FEATURES_FILE)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        assert_eq!(header[FEATURES_TENSOR]["shape"], serde_json::json!([2, 3]));
        assert_eq!(bytes.len(), 8 + header_len + 6 * 4);
        assert_eq!(bytes[8 + header_len..][20..24], 6f32.to_le_bytes());

        let err = write_matrix(dir.path(), &rows, &[1.0], 3).unwrap_err();
        assert!(err.to_string().contains(FEATURES_FILE), "{err}");
    }
}
