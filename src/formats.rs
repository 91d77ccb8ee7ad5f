//! The file formats the engine checks before committing an artifact and describes in `show`:
//! Parquet (its footer must parse) and safetensors (its header must parse and account for every
//! byte). Other files are committed as they are.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};

/// What `show` prints about one output file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileSummary {
    Table {
        rows: i64,
        /// (column name, Arrow type) pairs.
        columns: Vec<(String, String)>,
    },
    Tensors {
        /// (tensor name, dtype, shape) triples.
        tensors: Vec<(String, String, Vec<u64>)>,
    },
    Other,
}

/// Checks that `path` is a complete file of the format its extension says, and summarises it.
pub fn inspect(path: &Path) -> Result<FileSummary, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => inspect_parquet(path),
        Some("safetensors") => inspect_safetensors(path),
        _ => Ok(FileSummary::Other),
    }
}

fn inspect_parquet(path: &Path) -> Result<FileSummary, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("not a Parquet file: {e}"))?;
    let meta = reader.metadata().file_metadata();
    let schema =
        parquet::arrow::parquet_to_arrow_schema(meta.schema_descr(), meta.key_value_metadata())
            .map_err(|e| format!("Parquet schema: {e}"))?;
    Ok(FileSummary::Table {
        rows: meta.num_rows(),
        columns: schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect(),
    })
}

fn inspect_safetensors(path: &Path) -> Result<FileSummary, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| "safetensors: file shorter than its header length".to_string())?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > size {
        return Err(format!(
            "safetensors: header length {header_len} does not fit in {size} bytes"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.seek(SeekFrom::Start(8)).map_err(|e| e.to_string())?;
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("safetensors header: {e}"))?;
    let mut tensors = Vec::new();
    let mut data_end = 0u64;
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap_or("?").to_string();
        let shape: Vec<u64> = entry["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
            .unwrap_or_default();
        let end = entry["data_offsets"]
            .as_array()
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| format!("safetensors: tensor {name} has no data_offsets"))?;
        data_end = data_end.max(end);
        tensors.push((name.clone(), dtype, shape));
    }
    if 8 + header_len + data_end != size {
        return Err(format!(
            "safetensors: header accounts for {} bytes, file has {size}",
            8 + header_len + data_end
        ));
    }
    tensors.sort();
    Ok(FileSummary::Tensors { tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors_bytes(data_len: usize, declared_end: usize) -> Vec<u8> {
        let header =
            format!(r#"{{"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,{declared_end}]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        bytes
    }

    #[test]
    fn safetensors_must_account_for_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("m.safetensors");
        std::fs::write(&good, safetensors_bytes(8, 8)).unwrap();
        assert_eq!(
            inspect(&good).unwrap(),
            FileSummary::Tensors {
                tensors: vec![("w".into(), "F32".into(), vec![2])]
            }
        );
        let truncated = dir.path().join("t.safetensors");
        std::fs::write(&truncated, safetensors_bytes(5, 8)).unwrap();
        assert!(inspect(&truncated).unwrap_err().contains("accounts for"));
    }

    #[test]
    fn a_truncated_parquet_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        assert!(inspect(&path).unwrap_err().contains("not a Parquet file"));
        let other = dir.path().join("x.txt");
        std::fs::write(&other, b"hello").unwrap();
        assert_eq!(inspect(&other).unwrap(), FileSummary::Other);
    }
}
