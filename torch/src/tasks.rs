//! The four tasks the trained network serves, over the outputs of the `features`, `train` and
//! `embed` stages: caption an image, similar images, similar words and captions, and images for
//! a caption by inverting the captioner.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tch::{Device, Tensor};

use crate::backbone::Backbone;
use crate::embed::{flatten, mean_word_embedding, word_matrix};
use crate::features::{resized, BackboneSettings};
use crate::model::{invert, rank_by_likelihood_batch};
use crate::train::TrainedModel;
use onenet_stages::captions::Vocabulary;
use onenet_stages::image_file;
use onenet_stages::metrics::SimilarityIndex;
use onenet_stages::specs::embed::{CaptionEmbeddings, ImageEmbeddings, WordEmbeddings};
use onenet_stages::{Params, StageError};

/// One retrieved item with its similarity.
#[derive(Debug, Clone, Serialize)]
pub struct Match {
    pub rank: usize,
    /// Image id, word, or the image id of the caption.
    pub id: String,
    /// Image path or caption text.
    pub detail: String,
    pub score: f32,
}

/// A generated caption for one image file, or for a dataset image named by its id.
#[derive(Debug, Clone, Serialize)]
pub struct Captioned {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub caption: String,
}

/// An image file a task was given that could not be read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub path: String,
    pub error: String,
}

/// The image files a task was given, read with the project's reader (`image_file`).
#[derive(Debug, Default)]
pub struct ReadFiles {
    /// The readable ones, in the order given: path and picture as displayed.
    pub pictures: Vec<(String, RgbImage)>,
    pub unreadable: Vec<Unreadable>,
    /// Files read despite a flaw: truncated ones (their missing part is grey).
    pub warnings: Vec<String>,
}

/// Reads every file of `paths`, keeping the readable ones and saying why the others are not.
pub fn read_files(paths: &[PathBuf]) -> ReadFiles {
    let mut read = ReadFiles::default();
    for path in paths {
        let label = path.display().to_string();
        match image_file::read(path) {
            Ok(picture) => {
                if let Some(why) = &picture.truncated {
                    read.warnings.push(format!(
                        "{label}: truncated ({why}); its missing part reads as grey"
                    ));
                }
                read.pictures.push((label, picture.rgb));
            }
            Err(e) => read.unreadable.push(Unreadable {
                path: label,
                error: e.to_string(),
            }),
        }
    }
    read
}

/// Ranked `(row, score)` pairs as matches, with each row's id and detail.
fn matches(
    ranked: impl IntoIterator<Item = (usize, f32)>,
    id: impl Fn(usize) -> String,
    detail: impl Fn(usize) -> String,
) -> Vec<Match> {
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, (row, score))| Match {
            rank: i + 1,
            id: id(row),
            detail: detail(row),
            score,
        })
        .collect()
}

/// A file a table names `name` as the user should see it: its path on this machine when the
/// folder it is relative to is known, else the name itself.
pub fn shown_path(files_root: Option<&Path>, name: &str) -> String {
    files_root
        .and_then(|root| onenet_stages::files::resolve(root, name).ok())
        .map_or_else(|| name.to_string(), |path| path.display().to_string())
}

/// The image embeddings of every image, searchable by cosine, with ids and paths.
pub struct ImageIndex {
    /// By image id.
    pub index: SimilarityIndex,
    /// Each image's file as shown to the user: on this machine when the files root is known,
    /// else as the table names it (relative to the dataset folder).
    pub paths: Vec<String>,
    /// The embeddings as the model made them (not normalised): what the captioner reads.
    pub raw: Vec<f32>,
}

impl ImageIndex {
    /// The image embeddings an `embed` stage wrote into `embed_dir`; `files_root` is the folder
    /// its file names are relative to on this machine, if known.
    pub fn read(embed_dir: &Path, files_root: Option<&Path>) -> Result<ImageIndex, StageError> {
        let table = ImageEmbeddings::read(embed_dir)?;
        let raw = table.vectors.values.clone();
        Ok(ImageIndex {
            index: table.vectors.into_index(table.image_ids),
            paths: table
                .paths
                .iter()
                .map(|name| shown_path(files_root, name))
                .collect(),
            raw,
        })
    }

    /// The `k` images nearest `query` by cosine, leaving out row `exclude`.
    pub fn nearest(&self, query: &[f32], k: usize, exclude: Option<usize>) -> Vec<Match> {
        self.matches(self.index.nearest(query, k, exclude))
    }

    /// Ranked `(row, score)` pairs as matches.
    fn matches(&self, ranked: impl IntoIterator<Item = (usize, f32)>) -> Vec<Match> {
        matches(
            ranked,
            |row| self.index.id(row).to_string(),
            |row| self.paths[row].clone(),
        )
    }

    pub fn row_of(&self, image_id: &str) -> Option<usize> {
        self.index.row_of(image_id)
    }

    /// Row `row`'s embedding, L2-normalised.
    pub fn vector(&self, row: usize) -> &[f32] {
        self.index.vector(row)
    }
}

/// The backbone a pipeline's features were computed with.
pub struct FeatureExtractor {
    pub backbone: Backbone,
}

impl FeatureExtractor {
    /// Loads the backbone that computed the `features` output in `dir`, with the weights file
    /// its stage's `params` name (`base_dir`: the project folder that path is relative to); see
    /// [`BackboneSettings::of_output`].
    pub fn load(
        dir: &Path,
        params: &Params,
        base_dir: &Path,
    ) -> Result<FeatureExtractor, StageError> {
        let backbone = BackboneSettings::of_output(dir, params, base_dir)?.load(Device::Cpu)?;
        Ok(FeatureExtractor { backbone })
    }

    /// CNN features [N, D] of pictures, resized as the `features` stage resizes them.
    pub fn features<'a>(&self, pictures: impl IntoIterator<Item = &'a RgbImage>) -> Tensor {
        let size = self.backbone.input_size();
        let inputs: Vec<Tensor> = pictures
            .into_iter()
            .map(|picture| self.backbone.preprocess(&resized(picture.clone(), size)))
            .collect();
        self.backbone.features(&Tensor::stack(&inputs, 0))
    }
}

/// Captions of images given by their CNN features [N, D], in order: greedy, or beam search when
/// `beam` > 1.
pub fn caption_features(trained: &TrainedModel, features: &Tensor, beam: usize) -> Vec<String> {
    let embedding = tch::no_grad(|| trained.model.encode_images(features));
    let max_length = trained.info.max_length;
    let tokens: Vec<Vec<u32>> = if beam > 1 {
        trained
            .model
            .beam_search_batch(&embedding, beam, max_length, &mut |_| {})
    } else {
        trained.model.greedy(&embedding, max_length)
    };
    tokens.iter().map(|t| trained.vocab.decode(t)).collect()
}

/// The image embedding of a picture, as the trained model computes it.
pub fn embed_picture(
    trained: &TrainedModel,
    extractor: &FeatureExtractor,
    picture: &RgbImage,
) -> Vec<f32> {
    let features = extractor.features([picture]);
    flatten(&tch::no_grad(|| trained.model.encode_images(&features)))
}

/// The `k` words nearest `word` by cosine of their embeddings. `word` is split as captions are
/// (`tokenize::words`) and read through `vocab` (its lemma for a vocabulary of lemmas). Errors
/// if it is not exactly one word or has no token.
pub fn similar_words(
    embed_dir: &Path,
    vocab: &Vocabulary,
    word: &str,
    k: usize,
) -> Result<Vec<Match>, StageError> {
    let table = WordEmbeddings::read(embed_dir)?;
    let words = table.vectors.into_index(table.tokens);
    let split = onenet_stages::tokenize::words(word);
    let [query] = split.as_slice() else {
        return Err(StageError::Input(format!(
            "{word:?} is {} words: give one word",
            split.len()
        )));
    };
    let row = vocab
        .token_of(query)
        .and_then(|token| words.row_of(token))
        .ok_or_else(|| {
            StageError::Input(format!("unknown word {word:?}: not in the vocabulary"))
        })?;
    // Special tokens (the first token ids) are not words anyone asks about.
    let specials = onenet_stages::captions::SPECIAL_TOKENS.len();
    Ok(matches(
        words.neighbours(row, k, |other| other >= specials),
        |r| words.id(r).to_string(),
        |_| String::new(),
    ))
}

/// The `k` captions nearest `text` by cosine of caption embeddings (mean word embeddings), and
/// the words of `text` not in the vocabulary. Errors if no word of `text` is known.
pub fn similar_captions(
    trained: &TrainedModel,
    embed_dir: &Path,
    text: &str,
    k: usize,
) -> Result<(Vec<Match>, Vec<String>), StageError> {
    let (tokens, unknown) = trained.vocab.encode_text(text);
    let known = tokens.len() - 2 - unknown.len();
    if known == 0 {
        return Err(StageError::Input(format!(
            "no word of {text:?} is in the vocabulary (unknown: {})",
            unknown.join(", ")
        )));
    }
    // Unknown words would all share <unk>'s embedding: leave them out of the mean.
    let tokens: Vec<u32> = tokens
        .into_iter()
        .filter(|&t| t != onenet_stages::captions::UNK_ID)
        .collect();
    let dim = trained.model.config.embed_dim as usize;
    let query = mean_word_embedding(&word_matrix(trained), dim, &tokens);
    let table = CaptionEmbeddings::read(embed_dir)?;
    let captions = table.vectors.into_index(table.image_ids);
    let found = matches(
        captions.nearest(&query, k, None),
        |r| captions.id(r).to_string(),
        |r| table.captions[r].clone(),
    );
    Ok((found, unknown))
}

/// The images found for one caption, and its words not in the vocabulary.
pub struct FoundImages {
    pub matches: Vec<Match>,
    pub unknown: Vec<String>,
}

/// For each caption, `k` images found by inverting the captioner (all captions and restarts
/// optimised as one batch): the images nearest the embedding found, by cosine; with `rerank` > 0,
/// the `max(rerank, k)` nearest re-ordered by the caption's likelihood under the captioner, whose
/// mean log-likelihood per token is then the score. Also each caption's unknown words. A caption
/// with no known word is an error naming it.
#[allow(clippy::too_many_arguments)]
pub fn find_images(
    trained: &TrainedModel,
    index: &ImageIndex,
    texts: &[String],
    k: usize,
    steps: usize,
    restarts: usize,
    learning_rate: f64,
    rerank: usize,
) -> Result<Vec<FoundImages>, StageError> {
    let mut encoded = Vec::with_capacity(texts.len());
    let mut unknowns = Vec::with_capacity(texts.len());
    for text in texts {
        let (tokens, unknown) = trained.vocab.encode_text(text);
        if tokens.len() - 2 == unknown.len() {
            return Err(StageError::Input(format!(
                "no word of {text:?} is in the vocabulary"
            )));
        }
        encoded.push(tokens);
        unknowns.push(unknown);
    }
    let slices: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
    let (z, _) = invert(&trained.model, &slices, steps, restarts, learning_rate);
    let z = flatten(&z);
    // What the captioner scores candidates on; only needed when re-ordering.
    let dim = index.index.dim();
    let embeddings = (rerank > 0).then(|| {
        Tensor::from_slice(&index.raw)
            .view([-1, dim as i64])
            .to_device(trained.model.device())
    });
    let found = |q: usize| &z[q * dim..(q + 1) * dim];
    // Every query's nearest images re-ordered together, in one pass of the captioner.
    let reranked = match &embeddings {
        Some(embeddings) => {
            let nearest: Vec<Vec<usize>> = (0..slices.len())
                .map(|q| {
                    index
                        .index
                        .nearest(found(q), rerank.max(k), None)
                        .into_iter()
                        .map(|(row, _)| row)
                        .collect()
                })
                .collect();
            let queries: Vec<(&[u32], &[usize])> = slices
                .iter()
                .zip(&nearest)
                .map(|(caption, rows)| (*caption, rows.as_slice()))
                .collect();
            rank_by_likelihood_batch(&trained.model, &queries, embeddings)
        }
        None => Vec::new(),
    };
    let mut reranked = reranked.into_iter();
    Ok(unknowns
        .into_iter()
        .enumerate()
        .map(|(q, unknown)| {
            let matches = match reranked.next() {
                Some(ranked) => {
                    index.matches(ranked.into_iter().take(k).map(|(r, s)| (r, s as f32)))
                }
                None => index.nearest(found(q), k, None),
            };
            FoundImages { matches, unknown }
        })
        .collect())
}
