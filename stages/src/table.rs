//! Writing Parquet tables: one place that decides compression and row-group size, so every table
//! the stages write opens the same way in Polars, DuckDB and Arrow.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::StageError;

/// Writes `batch` to `path` as one Parquet file (snappy-compressed) and syncs it to disk.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), StageError> {
    let table_err = |message: String| StageError::Table {
        path: path.to_path_buf(),
        message,
    };
    let file = File::create(path).map_err(|e| StageError::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
        .map_err(|e| table_err(e.to_string()))?;
    writer.write(batch).map_err(|e| table_err(e.to_string()))?;
    let file = writer.into_inner().map_err(|e| table_err(e.to_string()))?;
    file.sync_all().map_err(|e| StageError::io(path, e))
}

/// Builds a record batch from columns, naming `path` in the error if the columns disagree.
pub fn batch(
    path: &Path,
    schema: Arc<Schema>,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<RecordBatch, StageError> {
    RecordBatch::try_new(schema, columns).map_err(|e| StageError::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
