//! Pretrained GloVe word vectors for a vocabulary: reads the `glove_6B_50d_emb.npy` matrix
//! (float32, column-major, one row per word) and `glove_6B_index.parquet` (the words, in row
//! order) that `make setup` installs, and picks out the rows of the vocabulary's words.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use onenet_stages::captions::Vocabulary;
use onenet_stages::table::{read_parquet, strings};
use onenet_stages::StageError;
use tch::Tensor;

pub const MATRIX_FILE: &str = onenet_stages::specs::train::GLOVE_FILES[0];
pub const INDEX_FILE: &str = onenet_stages::specs::train::GLOVE_FILES[1];

/// GloVe vectors for a vocabulary: [vocab, dim], zeros for words GloVe lacks (and the specials).
pub struct GloveVectors {
    pub table: Tensor,
    pub dim: i64,
    /// How many vocabulary words GloVe has.
    pub found: usize,
}

/// The shape and layout an `.npy` header declares, and where the data starts.
struct NpyHeader {
    rows: usize,
    cols: usize,
    fortran_order: bool,
    data_offset: u64,
}

fn read_npy_header(path: &Path, file: &mut File) -> Result<NpyHeader, StageError> {
    let bad = |m: &str| StageError::file(path, format!("not a float32 .npy matrix: {m}"));
    let mut magic = [0u8; 10];
    file.read_exact(&mut magic)
        .map_err(|e| StageError::io(path, e))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (header_len, offset) = if magic[6] == 1 {
        (u16::from_le_bytes([magic[8], magic[9]]) as usize, 10u64)
    } else {
        let mut rest = [0u8; 2];
        file.read_exact(&mut rest)
            .map_err(|e| StageError::io(path, e))?;
        (
            u32::from_le_bytes([magic[8], magic[9], rest[0], rest[1]]) as usize,
            12u64,
        )
    };
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header)
        .map_err(|e| StageError::io(path, e))?;
    let header = String::from_utf8_lossy(&header);
    if !header.contains("'descr': '<f4'") {
        return Err(bad("dtype is not little-endian float32"));
    }
    let fortran_order = header.contains("'fortran_order': True");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let [rows, cols] = dims[..] else {
        return Err(bad("not two-dimensional"));
    };
    Ok(NpyHeader {
        rows,
        cols,
        fortran_order,
        data_offset: offset + header_len as u64,
    })
}

/// The GloVe vectors of `vocab`'s words from the GloVe folder `dir`.
pub fn vectors_for(dir: &Path, vocab: &Vocabulary) -> Result<GloveVectors, StageError> {
    let index_path = dir.join(INDEX_FILE);
    let table = read_parquet(&index_path)?;
    let words = strings(&index_path, &table, "index")?;
    let wanted: HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, (token, _))| (token.as_str(), id))
        .collect();
    // (vocabulary id, GloVe row) of every vocabulary word GloVe knows.
    let pairs: Vec<(usize, usize)> = words
        .iter()
        .enumerate()
        .filter_map(|(row, w)| wanted.get(w.as_str()).map(|&id| (id, row)))
        .collect();

    let matrix_path = dir.join(MATRIX_FILE);
    let mut file = File::open(&matrix_path).map_err(|e| StageError::io(&matrix_path, e))?;
    let header = read_npy_header(&matrix_path, &mut file)?;
    if header.rows != words.len() {
        return Err(StageError::file(
            &matrix_path,
            format!(
                "{} rows, but {INDEX_FILE} lists {} words",
                header.rows,
                words.len()
            ),
        ));
    }
    let dim = header.cols;
    let mut out = vec![0f32; vocab.len() * dim];
    let mut value = [0u8; 4];
    for &(id, row) in &pairs {
        for d in 0..dim {
            let element = if header.fortran_order {
                d * header.rows + row
            } else {
                row * dim + d
            };
            file.seek(SeekFrom::Start(header.data_offset + 4 * element as u64))
                .and_then(|_| file.read_exact(&mut value))
                .map_err(|e| StageError::io(&matrix_path, e))?;
            out[id * dim + d] = f32::from_le_bytes(value);
        }
    }
    Ok(GloveVectors {
        table: Tensor::from_slice(&out).reshape([vocab.len() as i64, dim as i64]),
        dim: dim as i64,
        found: pairs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_vectors_know_common_words() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../glove");
        assert!(
            dir.join(MATRIX_FILE).is_file(),
            "{} is missing: run `make setup` (it installs the GloVe vectors)",
            dir.display()
        );
        let vocab = Vocabulary::build(["red", "blue", "red", "zzqxj"], 1);
        let glove = vectors_for(&dir, &vocab).unwrap();
        assert_eq!(glove.dim, 50);
        assert_eq!(glove.found, 2, "red and blue, not the made-up word");
        let v: Vec<f32> = Vec::try_from(glove.table.reshape([-1])).unwrap();
        let row = |id: u32| &v[id as usize * 50..(id as usize + 1) * 50];
        let norm = |r: &[f32]| r.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
        };
        let (red, blue) = (row(vocab.id("red")), row(vocab.id("blue")));
        assert!(norm(red) > 1.0 && norm(blue) > 1.0);
        // Colours are close to each other in GloVe space.
        assert!(cosine(red, blue) > 0.7, "{}", cosine(red, blue));
        assert_eq!(norm(row(vocab.id("zzqxj"))), 0.0);
    }
}
