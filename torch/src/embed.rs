//! Stage kind `embed`: exports the trained network's image embeddings (every image), word
//! embeddings (the whole vocabulary) and caption embeddings (the mean of a caption's word
//! embeddings) as Parquet tables with fixed-size list columns, for the tasks and for users' own
//! analysis. The tables, their writers and their one reader are `onenet_stages::specs::embed`.

use tch::{Kind, Tensor};

use crate::features::FeatureMatrix;
use crate::input_dir;
use crate::runtime::Runtime;
use crate::train::TrainedModel;
use onenet_stages::captions::{self, CAPTIONS_TABLE, END_ID, PAD_ID, START_ID};
use onenet_stages::specs;
use onenet_stages::specs::embed::{CaptionEmbeddings, ImageEmbeddings, Vectors, WordEmbeddings};
use onenet_stages::table::{read_parquet, strings, u32_lists, u32s};
use onenet_stages::{StageContext, StageError, StageReport};

pub fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let device = Runtime::for_stage(ctx)?.device;
    let trained = TrainedModel::load(input_dir(ctx, &specs::train::KIND)?, device)?;
    let features = FeatureMatrix::read(input_dir(ctx, &specs::features::KIND)?, device)?;

    let images = tch::no_grad(|| trained.model.encode_images(&features.features));
    let rows = &features.rows;
    ImageEmbeddings {
        image_ids: rows.iter().map(|r| r.image_id.clone()).collect(),
        splits: rows.iter().map(|r| r.split.clone()).collect(),
        paths: rows.iter().map(|r| r.path.clone()).collect(),
        hashes: rows.iter().map(|r| r.hash.clone()).collect(),
        vectors: Vectors {
            values: flatten(&images),
            dim: images.size()[1] as usize,
        },
    }
    .write(&ctx.out_dir)?;

    let words = word_matrix(&trained);
    let word_dim = trained.model.config.embed_dim as usize;
    let tokens = &trained.vocab.tokens;
    WordEmbeddings {
        tokens: tokens.iter().map(|(t, _)| t.clone()).collect(),
        counts: tokens.iter().map(|(_, c)| *c).collect(),
        vectors: Vectors {
            values: words.clone(),
            dim: word_dim,
        },
    }
    .write(&ctx.out_dir)?;

    // One row per caption of the captions table, in its order.
    let captions_path = input_dir(ctx, &captions::KIND)?.join(CAPTIONS_TABLE);
    let table = read_parquet(&captions_path)?;
    let caption_tokens = u32_lists(&captions_path, &table, "tokens")?;
    let mut caption_vectors = Vec::with_capacity(caption_tokens.len() * word_dim);
    for t in &caption_tokens {
        caption_vectors.extend(mean_word_embedding(&words, word_dim, t));
    }
    CaptionEmbeddings {
        image_ids: strings(&captions_path, &table, "image_id")?,
        caption_nos: u32s(&captions_path, &table, "caption_no")?,
        splits: strings(&captions_path, &table, "split")?,
        captions: strings(&captions_path, &table, "caption")?,
        vectors: Vectors {
            values: caption_vectors,
            dim: word_dim,
        },
    }
    .write(&ctx.out_dir)?;

    Ok(StageReport {
        device: None,
        metrics: Default::default(),
        warnings: Vec::new(),
        notes: vec![format!(
            "{} image, {} word and {} caption embeddings",
            features.rows.len(),
            trained.vocab.len(),
            caption_tokens.len()
        )],
    })
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
