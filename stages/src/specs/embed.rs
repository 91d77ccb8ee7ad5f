//! The `embed` stage kind as the engine sees it, and the tables it writes (names, columns, writers
//! and the one reader: the stage, t-SNE, the report and the task commands go through these); it
//! runs in the libtorch worker.
//!
//! Each table holds one embedding per row in a fixed-size list<f32> column `embedding`, beside
//! the columns that say what the row is.

use std::path::Path;

use arrow::array::{ArrayRef, RecordBatch};

use crate::metrics::SimilarityIndex;
use crate::table::{
    embedding_column, embedding_rows, read_parquet, required, string_column, strings, u32_column,
    u32s, u64_column, u64s, write_columns,
};
use crate::{InputRule, ParamSpec, StageError, StageKind};

pub const KIND: StageKind = StageKind {
    name: "embed",
    // 2: the image table holds each picture's content hash.
    version: 2,
    about: "Export image, word and caption embeddings of the trained network as Parquet",
    params: &[ParamSpec::threads(crate::params::LIBTORCH_THREADS_HELP)],
    inputs: InputRule {
        kinds: &["train", "features", "captions"],
        min: 3,
        max: 3,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::Cpu,
    run: crate::worker::run_in_worker,
    shards: None,
    files_root: None,
};

/// Every image's embedding.
pub const IMAGE_EMBEDDINGS: &str = "image_embeddings.parquet";
/// Every vocabulary word's embedding.
pub const WORD_EMBEDDINGS: &str = "word_embeddings.parquet";
/// Every caption's embedding: the mean of its words' embeddings.
pub const CAPTION_EMBEDDINGS: &str = "caption_embeddings.parquet";

/// The column of every embedding table that holds the vectors.
pub const EMBEDDING: &str = "embedding";

/// The columns of `IMAGE_EMBEDDINGS`, in order.
pub mod image_columns {
    pub const IMAGE_ID: &str = "image_id";
    pub const SPLIT: &str = "split";
    /// The picture's file, relative to the dataset folder (as the images table names it).
    pub const PATH: &str = "path";
    /// BLAKE3 of the picture's file (as the images table records it): whoever opens the file
    /// checks its bytes against it.
    pub const HASH: &str = "hash";
    pub use super::EMBEDDING;
}

/// The columns of `WORD_EMBEDDINGS`, in order.
pub mod word_columns {
    pub const TOKEN_ID: &str = "token_id";
    pub const TOKEN: &str = "token";
    pub const COUNT: &str = "count";
    pub use super::EMBEDDING;
}

/// The columns of `CAPTION_EMBEDDINGS`, in order.
pub mod caption_columns {
    pub const IMAGE_ID: &str = "image_id";
    pub const CAPTION_NO: &str = "caption_no";
    pub const SPLIT: &str = "split";
    pub const CAPTION: &str = "caption";
    pub use super::EMBEDDING;
}

/// Row-major vectors of one width: the `embedding` column of an embedding table.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    pub values: Vec<f32>,
    pub dim: usize,
}

impl Vectors {
    /// How many vectors there are.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.dim..(row + 1) * self.dim]
    }

    /// The vectors as a cosine similarity index, row `i` named `ids[i]`.
    pub fn into_index(self, ids: Vec<String>) -> SimilarityIndex {
        SimilarityIndex::new(ids, self.values, self.dim)
    }

    /// The `embedding` column of `table` (the file `path`): every vector as long as the column
    /// declares, and not of width 0 (which would leave nothing to compare), or an error naming
    /// the file.
    fn read(path: &Path, table: &RecordBatch) -> Result<Vectors, StageError> {
        let (values, dim) = embedding_rows(path, table, EMBEDDING)?;
        if dim == 0 && table.num_rows() > 0 {
            return Err(StageError::file(path, "the embeddings have width 0"));
        }
        Ok(Vectors { values, dim })
    }

    /// The vectors as the `embedding` column of the table `path`.
    fn column(&self, path: &Path) -> Result<(arrow::datatypes::Field, ArrayRef), StageError> {
        let dim = i32::try_from(self.dim)
            .map_err(|_| StageError::file(path, format!("embedding width {}", self.dim)))?;
        let array =
            embedding_column(dim, self.values.clone()).map_err(|message| StageError::Table {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(required(EMBEDDING, array))
    }
}

/// The image embeddings table: one row per image of the `features` matrix, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEmbeddings {
    pub image_ids: Vec<String>,
    pub splits: Vec<String>,
    /// Each picture's file, relative to the dataset folder.
    pub paths: Vec<String>,
    /// Each picture's content hash.
    pub hashes: Vec<String>,
    pub vectors: Vectors,
}

impl ImageEmbeddings {
    /// Reads the table an `embed` stage wrote into `dir`.
    pub fn read(dir: &Path) -> Result<ImageEmbeddings, StageError> {
        use image_columns::*;
        let path = dir.join(IMAGE_EMBEDDINGS);
        let table = read_parquet(&path)?;
        Ok(ImageEmbeddings {
            image_ids: strings(&path, &table, IMAGE_ID)?,
            splits: strings(&path, &table, SPLIT)?,
            paths: strings(&path, &table, PATH)?,
            hashes: strings(&path, &table, HASH)?,
            vectors: Vectors::read(&path, &table)?,
        })
    }

    /// Writes the table into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), StageError> {
        use image_columns::*;
        let path = dir.join(IMAGE_EMBEDDINGS);
        write_columns(
            &path,
            vec![
                required(IMAGE_ID, string_column(&self.image_ids)),
                required(SPLIT, string_column(&self.splits)),
                required(PATH, string_column(&self.paths)),
                required(HASH, string_column(&self.hashes)),
                self.vectors.column(&path)?,
            ],
        )
    }
}

/// The word embeddings table: one row per vocabulary word, in token-id order.
#[derive(Debug, Clone, PartialEq)]
pub struct WordEmbeddings {
    /// The words; a word's token id is its index.
    pub tokens: Vec<String>,
    /// How often each word occurs in the training captions.
    pub counts: Vec<u64>,
    pub vectors: Vectors,
}

impl WordEmbeddings {
    /// Reads the table an `embed` stage wrote into `dir`.
    pub fn read(dir: &Path) -> Result<WordEmbeddings, StageError> {
        use word_columns::*;
        let path = dir.join(WORD_EMBEDDINGS);
        let table = read_parquet(&path)?;
        Ok(WordEmbeddings {
            tokens: strings(&path, &table, TOKEN)?,
            counts: u64s(&path, &table, COUNT)?,
            vectors: Vectors::read(&path, &table)?,
        })
    }

    /// Writes the table into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), StageError> {
        use word_columns::*;
        let path = dir.join(WORD_EMBEDDINGS);
        write_columns(
            &path,
            vec![
                required(TOKEN_ID, u32_column(0..self.tokens.len() as u32)),
                required(TOKEN, string_column(&self.tokens)),
                required(COUNT, u64_column(self.counts.iter().copied())),
                self.vectors.column(&path)?,
            ],
        )
    }
}

/// The caption embeddings table: one row per caption of the captions table, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionEmbeddings {
    pub image_ids: Vec<String>,
    pub caption_nos: Vec<u32>,
    pub splits: Vec<String>,
    pub captions: Vec<String>,
    pub vectors: Vectors,
}

impl CaptionEmbeddings {
    /// Reads the table an `embed` stage wrote into `dir`.
    pub fn read(dir: &Path) -> Result<CaptionEmbeddings, StageError> {
        use caption_columns::*;
        let path = dir.join(CAPTION_EMBEDDINGS);
        let table = read_parquet(&path)?;
        Ok(CaptionEmbeddings {
            image_ids: strings(&path, &table, IMAGE_ID)?,
            caption_nos: u32s(&path, &table, CAPTION_NO)?,
            splits: strings(&path, &table, SPLIT)?,
            captions: strings(&path, &table, CAPTION)?,
            vectors: Vectors::read(&path, &table)?,
        })
    }

    /// Writes the table into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), StageError> {
        use caption_columns::*;
        let path = dir.join(CAPTION_EMBEDDINGS);
        write_columns(
            &path,
            vec![
                required(IMAGE_ID, string_column(&self.image_ids)),
                required(CAPTION_NO, u32_column(self.caption_nos.iter().copied())),
                required(SPLIT, string_column(&self.splits)),
                required(CAPTION, string_column(&self.captions)),
                self.vectors.column(&path)?,
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn tables_read_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageEmbeddings {
            image_ids: vec!["a.jpg".into(), "b.jpg".into()],
            splits: vec!["train".into(), "test".into()],
            paths: vec!["pics/a.jpg".into(), "pics/b.jpg".into()],
            hashes: vec!["11".into(), "22".into()],
            vectors: Vectors {
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                dim: 3,
            },
        };
        images.write(dir.path()).unwrap();
        assert_eq!(ImageEmbeddings::read(dir.path()).unwrap(), images);
        assert_eq!(images.vectors.len(), 2);
        assert_eq!(images.vectors.row(1), [4.0, 5.0, 6.0]);

        let words = WordEmbeddings {
            tokens: vec!["<pad>".into(), "dog".into()],
            counts: vec![0, 7],
            vectors: Vectors {
                values: vec![0.0, 1.0, 1.0, 0.0],
                dim: 2,
            },
        };
        words.write(dir.path()).unwrap();
        assert_eq!(WordEmbeddings::read(dir.path()).unwrap(), words);

        let captions = CaptionEmbeddings {
            image_ids: vec!["a.jpg".into()],
            caption_nos: vec![3],
            splits: vec!["train".into()],
            captions: vec!["a dog".into()],
            vectors: Vectors {
                values: vec![0.5, 0.5],
                dim: 2,
            },
        };
        captions.write(dir.path()).unwrap();
        assert_eq!(CaptionEmbeddings::read(dir.path()).unwrap(), captions);
    }

    #[test]
    fn a_table_whose_vectors_do_not_fill_their_rows_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ragged = ImageEmbeddings {
            image_ids: vec!["a.jpg".into(), "b.jpg".into()],
            splits: vec!["train".into(), "test".into()],
            paths: vec!["a.jpg".into(), "b.jpg".into()],
            hashes: vec!["11".into(), "22".into()],
            vectors: Vectors {
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0],
                dim: 3,
            },
        };
        let err = ragged.write(dir.path()).unwrap_err().to_string();
        assert!(err.contains(IMAGE_EMBEDDINGS), "{err}");

        // One word with a vector of width 0: nothing to compare.
        let item = Arc::new(arrow::datatypes::Field::new_list_field(
            arrow::datatypes::DataType::Float32,
            false,
        ));
        let no_values = Arc::new(arrow::array::Float32Array::from(Vec::<f32>::new()));
        let width_0 = arrow::array::FixedSizeListArray::try_new(
            item,
            0,
            no_values,
            Some(arrow::buffer::NullBuffer::new_valid(1)),
        )
        .unwrap();
        use word_columns::*;
        write_columns(
            &dir.path().join(WORD_EMBEDDINGS),
            vec![
                required(TOKEN_ID, u32_column([0])),
                required(TOKEN, string_column(["dog"])),
                required(COUNT, u64_column([1])),
                required(EMBEDDING, Arc::new(width_0)),
            ],
        )
        .unwrap();
        let err = WordEmbeddings::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(WORD_EMBEDDINGS) && err.contains("width 0"),
            "{err}"
        );
    }
}
