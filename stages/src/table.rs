//! Writing Parquet tables: one place that decides compression and row-group size, so every table
//! the stages write opens the same way in Polars, DuckDB and Arrow.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
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

/// Reads a whole Parquet file into one record batch.
pub fn read_parquet(path: &Path) -> Result<RecordBatch, StageError> {
    let table_err = |message: String| StageError::File {
        path: path.to_path_buf(),
        message: format!("reading table: {message}"),
    };
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| table_err(e.to_string()))?
        .build()
        .map_err(|e| table_err(e.to_string()))?;
    let schema = arrow::array::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| table_err(e.to_string()))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| table_err(e.to_string()))
}

/// A column of a table read by `read_parquet`, as the Arrow array type `A`, or an error naming
/// the file and column.
pub fn column<'a, A: 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a A, StageError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| StageError::File {
            path: path.to_path_buf(),
            message: format!(
                "column `{name}` is missing or not of type {}",
                std::any::type_name::<A>()
            ),
        })
}

/// A string column as owned strings.
pub fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<String>, StageError> {
    let array = column::<arrow::array::StringArray>(path, batch, name)?;
    Ok(array
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// A u32 column.
pub fn u32s(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<u32>, StageError> {
    Ok(column::<arrow::array::UInt32Array>(path, batch, name)?
        .values()
        .to_vec())
}

/// A list column whose values are arrays of type `A`, each row's values converted by `convert`;
/// `what` names the expected type in the error.
fn lists<A: 'static, T>(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
    what: &str,
    convert: impl Fn(&A) -> Vec<T>,
) -> Result<Vec<Vec<T>>, StageError> {
    let lists = column::<arrow::array::ListArray>(path, batch, name)?;
    (0..lists.len())
        .map(|i| {
            let values = lists.value(i);
            values
                .as_any()
                .downcast_ref::<A>()
                .map(&convert)
                .ok_or_else(|| StageError::file(path, format!("column `{name}` is not {what}")))
        })
        .collect()
}

/// A list<u32> column.
pub fn u32_lists(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<Vec<Vec<u32>>, StageError> {
    lists(
        path,
        batch,
        name,
        "list<u32>",
        |values: &arrow::array::UInt32Array| values.values().to_vec(),
    )
}

/// A list<utf8> column holding `lists`, one list per row.
pub fn string_list_column(lists: &[Vec<String>]) -> arrow::array::ArrayRef {
    let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
    for list in lists {
        for value in list {
            builder.values().append_value(value);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

/// A list<utf8> column (as `string_list_column` writes it).
pub fn string_lists(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<Vec<Vec<String>>, StageError> {
    lists(
        path,
        batch,
        name,
        "list<utf8>",
        |values: &arrow::array::StringArray| {
            values
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect()
        },
    )
}

/// A fixed-size-list<f32> column of `dim`-wide vectors, as one flat row-major vector.
pub fn embedding_column(dim: i32, values: Vec<f32>) -> Result<arrow::array::ArrayRef, String> {
    let field = Arc::new(arrow::datatypes::Field::new(
        "item",
        arrow::datatypes::DataType::Float32,
        false,
    ));
    let array = arrow::array::FixedSizeListArray::try_new(
        field,
        dim,
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(array))
}

/// The Arrow type of an embedding column of width `dim`.
pub fn embedding_type(dim: i32) -> arrow::datatypes::DataType {
    arrow::datatypes::DataType::FixedSizeList(
        Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float32,
            false,
        )),
        dim,
    )
}

/// A fixed-size-list<f32> column (as `embedding_column` writes it) read back as one flat
/// row-major vector, with the width of each row.
pub fn embedding_rows(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<(Vec<f32>, usize), StageError> {
    let list = column::<arrow::array::FixedSizeListArray>(path, batch, name)?;
    let dim = list.value_length() as usize;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .ok_or_else(|| {
            StageError::file(path, format!("column `{name}` is not fixed-size list<f32>"))
        })?;
    // A fixed-size list's values are sliced along with it, so they are exactly its rows.
    if values.len() != list.len() * dim {
        return Err(StageError::file(
            path,
            format!(
                "column `{name}` holds {} values for {} rows of {dim}",
                values.len(),
                list.len()
            ),
        ));
    }
    Ok((values.values().to_vec(), dim))
}

/// A u64 column.
pub fn u64s(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<u64>, StageError> {
    Ok(column::<arrow::array::UInt64Array>(path, batch, name)?
        .values()
        .to_vec())
}

/// An f64 column.
pub fn f64s(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<f64>, StageError> {
    Ok(column::<arrow::array::Float64Array>(path, batch, name)?
        .values()
        .to_vec())
}

/// A boolean column (nulls read as false).
pub fn bools(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<bool>, StageError> {
    Ok(column::<arrow::array::BooleanArray>(path, batch, name)?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect())
}

/// A u32 column that may hold nulls.
pub fn opt_u32s(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<Vec<Option<u32>>, StageError> {
    Ok(column::<arrow::array::UInt32Array>(path, batch, name)?
        .iter()
        .collect())
}

/// A utf8 column of `values`.
pub fn string_column<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> ArrayRef {
    Arc::new(arrow::array::StringArray::from_iter_values(values))
}

/// A u32 column of `values`.
pub fn u32_column(values: impl IntoIterator<Item = u32>) -> ArrayRef {
    Arc::new(arrow::array::UInt32Array::from_iter_values(values))
}

/// A boolean column of `values`.
pub fn bool_column(values: impl IntoIterator<Item = bool>) -> ArrayRef {
    Arc::new(arrow::array::BooleanArray::from_iter(
        values.into_iter().map(Some),
    ))
}

/// A u64 column of `values`.
pub fn u64_column(values: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(arrow::array::UInt64Array::from_iter_values(values))
}

/// An f64 column of `values`.
pub fn f64_column(values: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(arrow::array::Float64Array::from_iter_values(values))
}

/// A list<u32> column holding `lists`, one list per row (the list's items are not nullable).
pub fn u32_list_column<'a>(lists: impl IntoIterator<Item = &'a [u32]>) -> ArrayRef {
    let lists: Vec<&[u32]> = lists.into_iter().collect();
    let item = Arc::new(Field::new_list_field(DataType::UInt32, false));
    let offsets = arrow::buffer::OffsetBuffer::from_lengths(lists.iter().map(|l| l.len()));
    let values = arrow::array::UInt32Array::from_iter_values(lists.into_iter().flatten().copied());
    Arc::new(arrow::array::ListArray::new(
        item,
        offsets,
        Arc::new(values),
        None,
    ))
}

/// A column that never holds nulls, named `name`, of the type of `values`.
pub fn required(name: &str, values: ArrayRef) -> (Field, ArrayRef) {
    (Field::new(name, values.data_type().clone(), false), values)
}

/// A column that may hold nulls, named `name`, of the type of `values`.
pub fn nullable(name: &str, values: ArrayRef) -> (Field, ArrayRef) {
    (Field::new(name, values.data_type().clone(), true), values)
}

/// Writes `columns` (from [`required`] and [`nullable`]), in order, as the table `path`.
pub fn write_columns(path: &Path, columns: Vec<(Field, ArrayRef)>) -> Result<(), StageError> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    write_parquet(path, &batch(path, Arc::new(Schema::new(fields)), arrays)?)
}
