//! The output format of the `features` stage, shared by every stage that reads it: a safetensors
//! matrix `features` [N, D] (f32) and `rows.parquet` giving, for each row, the image it describes.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use tch::{Device, Tensor};

use onenet_stages::table::{batch, read_parquet, strings, write_parquet};
use onenet_stages::StageError;

pub const FEATURES_FILE: &str = "features.safetensors";
pub const ROWS_TABLE: &str = "rows.parquet";
/// The tensor name inside `FEATURES_FILE`.
pub const FEATURES_TENSOR: &str = "features";

/// One image's row in the feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub image_id: String,
    pub hash: String,
    pub split: String,
    pub path: String,
}

/// The features of every image, in row order.
pub struct FeatureMatrix {
    pub rows: Vec<FeatureRow>,
    /// [N, D] f32.
    pub features: Tensor,
}

impl FeatureMatrix {
    /// Reads the matrix a `features` stage wrote into `dir`, onto `device`.
    pub fn read(dir: &Path, device: Device) -> Result<FeatureMatrix, StageError> {
        let rows_path = dir.join(ROWS_TABLE);
        let table = read_parquet(&rows_path)?;
        let ids = strings(&rows_path, &table, "image_id")?;
        let hashes = strings(&rows_path, &table, "hash")?;
        let splits = strings(&rows_path, &table, "split")?;
        let paths = strings(&rows_path, &table, "path")?;
        let rows: Vec<FeatureRow> = ids
            .into_iter()
            .zip(hashes)
            .zip(splits)
            .zip(paths)
            .map(|(((image_id, hash), split), path)| FeatureRow {
                image_id,
                hash,
                split,
                path,
            })
            .collect();
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

    /// Writes `rows` and their features, row-major `values` of width `dim`, into `dir`. The
    /// safetensors file is written straight from `values`, without a second in-memory copy.
    pub fn write(
        dir: &Path,
        rows: &[FeatureRow],
        values: &[f32],
        dim: usize,
    ) -> Result<(), StageError> {
        let features_path = dir.join(FEATURES_FILE);
        write_f32_safetensors(&features_path, FEATURES_TENSOR, values, [rows.len(), dim])?;
        let rows_path = dir.join(ROWS_TABLE);
        let schema = Arc::new(Schema::new(vec![
            Field::new("row", DataType::UInt32, false),
            Field::new("image_id", DataType::Utf8, false),
            Field::new("hash", DataType::Utf8, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(0..rows.len() as u32)),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.image_id),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.hash))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.split))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.path))),
        ];
        write_parquet(&rows_path, &batch(&rows_path, schema, columns)?)
    }

    /// Row index of each image id.
    pub fn row_of(&self) -> std::collections::HashMap<&str, usize> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.image_id.as_str(), i))
            .collect()
    }
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
