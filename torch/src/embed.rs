//! Stage kind `embed`: exports the trained network's image embeddings (every image), word
//! embeddings (the whole vocabulary) and caption embeddings (the mean of a caption's word
//! embeddings) as Parquet tables with fixed-size list columns, for the tasks and for users' own
//! analysis.

use onenet_stages::specs::embed::{CAPTION_EMBEDDINGS, IMAGE_EMBEDDINGS, WORD_EMBEDDINGS};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use tch::{Kind, Tensor};

use crate::feature_table::FeatureMatrix;
use crate::runtime::Runtime;
use crate::train::TrainedModel;
use onenet_stages::captions::{CAPTIONS_TABLE, END_ID, PAD_ID, START_ID};
use onenet_stages::table::{
    batch, column, embedding_column, embedding_type, read_parquet, strings, u32_lists, u32s,
    write_parquet,
};
use onenet_stages::{input_of_kind, StageContext, StageError, StageReport};

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let device = Runtime::for_stage(ctx)?.device;
    let trained = TrainedModel::load(&input_of_kind(&ctx.inputs, "train")?.dir, device)?;
    let features = FeatureMatrix::read(&input_of_kind(&ctx.inputs, "features")?.dir, device)?;

    let images = tch::no_grad(|| trained.model.encode_images(&features.features));
    let image_dim = images.size()[1] as i32;
    write_image_embeddings(&ctx.out_dir, &features, &flatten(&images), image_dim)?;

    let words = word_matrix(&trained);
    let word_dim = trained.model.config.embed_dim as usize;
    write_word_embeddings(&ctx.out_dir, &trained, &words, word_dim as i32)?;

    let captions_path = input_of_kind(&ctx.inputs, "captions")?
        .dir
        .join(CAPTIONS_TABLE);
    let table = read_parquet(&captions_path)?;
    let tokens = u32_lists(&captions_path, &table, "tokens")?;
    let mut caption_vectors = Vec::with_capacity(tokens.len() * word_dim);
    for t in &tokens {
        caption_vectors.extend(mean_word_embedding(&words, word_dim, t));
    }
    let path = ctx.out_dir.join(CAPTION_EMBEDDINGS);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Utf8, false),
        Field::new("caption_no", DataType::UInt32, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("caption", DataType::Utf8, false),
        Field::new("embedding", embedding_type(word_dim as i32), false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(strings(
            &captions_path,
            &table,
            "image_id",
        )?)),
        Arc::new(UInt32Array::from_iter_values(u32s(
            &captions_path,
            &table,
            "caption_no",
        )?)),
        Arc::new(StringArray::from_iter_values(strings(
            &captions_path,
            &table,
            "split",
        )?)),
        Arc::new(StringArray::from_iter_values(strings(
            &captions_path,
            &table,
            "caption",
        )?)),
        embedding_column(word_dim as i32, caption_vectors).map_err(|m| table_error(&path, m))?,
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)?;

    Ok(StageReport {
        device: None,
        warnings: Vec::new(),
        notes: vec![format!(
            "{} image, {} word and {} caption embeddings",
            features.rows.len(),
            trained.vocab.len(),
            tokens.len()
        )],
    })
}

fn table_error(path: &Path, message: String) -> StageError {
    StageError::Table {
        path: path.to_path_buf(),
        message,
    }
}

/// A [N, D] tensor as a row-major f32 vector.
pub fn flatten(matrix: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(matrix.to_kind(Kind::Float).contiguous().reshape([-1])).unwrap_or_default()
}

/// The whole vocabulary's word embeddings, row-major [vocab, embed_dim].
pub fn word_matrix(trained: &TrainedModel) -> Vec<f32> {
    let ids = Tensor::arange(
        trained.vocab.len() as i64,
        (Kind::Int64, trained.model.device()),
    );
    flatten(&tch::no_grad(|| trained.model.embed_words(&ids)))
}

/// The mean of the embeddings of a caption's words (`<pad>`, `<start>` and `<end>` left out);
/// zeros for a caption without words.
pub fn mean_word_embedding(words: &[f32], dim: usize, tokens: &[u32]) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    let mut count = 0usize;
    for &t in tokens {
        if t == PAD_ID || t == START_ID || t == END_ID {
            continue;
        }
        let row = &words[t as usize * dim..(t as usize + 1) * dim];
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v;
        }
        count += 1;
    }
    if count > 0 {
        sum.iter_mut().for_each(|s| *s /= count as f32);
    }
    sum
}

fn write_image_embeddings(
    dir: &Path,
    features: &FeatureMatrix,
    vectors: &[f32],
    dim: i32,
) -> Result<(), StageError> {
    let path = dir.join(IMAGE_EMBEDDINGS);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("embedding", embedding_type(dim), false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            features.rows.iter().map(|r| &r.image_id),
        )),
        Arc::new(StringArray::from_iter_values(
            features.rows.iter().map(|r| &r.split),
        )),
        Arc::new(StringArray::from_iter_values(
            features.rows.iter().map(|r| &r.path),
        )),
        embedding_column(dim, vectors.to_vec()).map_err(|m| table_error(&path, m))?,
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

fn write_word_embeddings(
    dir: &Path,
    trained: &TrainedModel,
    vectors: &[f32],
    dim: i32,
) -> Result<(), StageError> {
    let path = dir.join(WORD_EMBEDDINGS);
    let schema = Arc::new(Schema::new(vec![
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("embedding", embedding_type(dim), false),
    ]));
    let tokens = &trained.vocab.tokens;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..tokens.len() as u32)),
        Arc::new(StringArray::from_iter_values(tokens.iter().map(|(t, _)| t))),
        Arc::new(UInt64Array::from_iter_values(
            tokens.iter().map(|(_, c)| *c),
        )),
        embedding_column(dim, vectors.to_vec()).map_err(|m| table_error(&path, m))?,
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

/// An embedding table read back: its string key columns and the row-major vectors.
pub struct EmbeddingTable {
    pub keys: Vec<Vec<String>>,
    pub vectors: Vec<f32>,
    pub dim: usize,
}

impl EmbeddingTable {
    /// Reads `path`, keeping the string columns `key_columns` and the `embedding` column.
    pub fn read(path: &Path, key_columns: &[&str]) -> Result<EmbeddingTable, StageError> {
        let table = read_parquet(path)?;
        let keys = key_columns
            .iter()
            .map(|c| strings(path, &table, c))
            .collect::<Result<Vec<_>, _>>()?;
        let list = column::<arrow::array::FixedSizeListArray>(path, &table, "embedding")?;
        let dim = list.value_length() as usize;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<arrow::array::Float32Array>()
            .ok_or_else(|| StageError::file(path, "embedding column is not list<f32>"))?;
        Ok(EmbeddingTable {
            keys,
            vectors: values.values().to_vec(),
            dim,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.first().map(Vec::len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
