//! Karpathy's split files (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`,
//! from his NeuralTalk2 `caption_datasets.zip`), which most captioning code reads: one entry per
//! image with its file name, its split and its sentences.
//!
//! ```json
//! {"images": [{"filename": "COCO_val2014_000000391895.jpg", "filepath": "val2014",
//!              "split": "test", "sentences": [{"raw": "A man riding a bike.", "tokens": ["a", …]}]}]}
//! ```
//!
//! Only `filename`, `filepath` (COCO's files have it; Flickr's have none or an empty one), `split`
//! and each sentence's `raw` are read: the captions are tokenised by the project's own tokenizer,
//! never from Karpathy's `tokens`, so every format gives the same tokens for the same text.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::json::{self, key, Entries};
use crate::StageError;

#[derive(Deserialize)]
struct File {
    #[serde(deserialize_with = "images")]
    images: Entries<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(deserialize_with = "filename")]
    filename: String,
    #[serde(default, deserialize_with = "filepath")]
    filepath: Option<String>,
    #[serde(deserialize_with = "split")]
    split: String,
    #[serde(deserialize_with = "sentences")]
    sentences: Entries<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    #[serde(deserialize_with = "raw")]
    raw: String,
}

key!(images, "images");
key!(filename, "filename");
key!(filepath, "filepath");
key!(split, "split");
key!(sentences, "sentences");
key!(raw, "raw");

/// The split values a Karpathy file uses, besides `restval`, and ours for them.
const SPLITS: [(&str, &str); 3] = [("train", "train"), ("val", "dev"), ("test", "test")];

/// One entry of a Karpathy file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KarpathyImage {
    /// The entry's index in `images`, for messages (`images[12]`).
    pub index: usize,
    pub filename: String,
    /// The folder the entry names (`val2014`), empty when it names none.
    pub filepath: String,
    /// `train`, `dev` or `test`: Karpathy's `val` is our `dev`, and his `restval` (the COCO
    /// validation images outside his val and test) is whatever `restval` says.
    pub split: &'static str,
    /// Each sentence's `raw` text, in order (its index is the caption number).
    pub sentences: Vec<String>,
}

/// Reads a Karpathy split file. `restval` is the split (`train` or `dev`) that entries marked
/// `restval` go to.
///
/// Errors: the file missing, not UTF-8 or not JSON; an entry without `filename`, `split` or
/// `sentences`, a sentence without `raw`, or a value of the wrong type (`Parse`, naming the
/// line, column and entry); an empty file name, a split value other than train, val, test and
/// restval, or a file name given by two entries (`File`, naming the entry).
pub fn read(path: &Path, restval: &'static str) -> Result<Vec<KarpathyImage>, StageError> {
    let file: File = json::read_file(path)?;
    let mut first_index: HashMap<String, usize> = HashMap::new();
    let mut images = Vec::with_capacity(file.images.0.len());
    for (index, entry) in file.images.0.into_iter().enumerate() {
        let at = |key: &str| format!("images[{index}].{key}");
        let filename = entry.filename.trim().to_string();
        if filename.is_empty() {
            return Err(json::entry_error(path, &at("filename"), "is empty"));
        }
        if let Some(first) = first_index.insert(filename.clone(), index) {
            return Err(json::entry_error(
                path,
                &at("filename"),
                format!("`{filename}` is already the file name of images[{first}]"),
            ));
        }
        let split = match entry.split.as_str() {
            "restval" => restval,
            given => SPLITS
                .iter()
                .find(|(theirs, _)| *theirs == given)
                .map(|(_, ours)| *ours)
                .ok_or_else(|| {
                    json::entry_error(
                        path,
                        &at("split"),
                        format!("{given:?} is not one of train, val, test, restval"),
                    )
                })?,
        };
        images.push(KarpathyImage {
            index,
            filename,
            filepath: entry.filepath.unwrap_or_default().trim().to_string(),
            split,
            sentences: entry.sentences.0.into_iter().map(|s| s.raw).collect(),
        });
    }
    if images.is_empty() {
        return Err(StageError::file(path, "no images: `images` is empty"));
    }
    Ok(images)
}
