//! COCO's caption annotations (`annotations/captions_train2014.json`, `captions_val2014.json`, as
//! the COCO site ships them): the images, each with a numeric id and a file name, and the
//! captions, each naming its image by that id.
//!
//! ```json
//! {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", "width": 640}],
//!  "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man riding a bike."}]}
//! ```
//!
//! Only `images[].id`, `images[].file_name`, `annotations[].image_id` and
//! `annotations[].caption` are read. A file's name gives its set (`captions_val2014.json` →
//! `val2014`), which names the folder its images are in and, unless a Karpathy file says
//! otherwise, their split.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::json::{self, key, Entries};
use crate::StageError;

#[derive(Deserialize)]
struct File {
    #[serde(deserialize_with = "images")]
    images: Entries<Image>,
    #[serde(deserialize_with = "annotations")]
    annotations: Entries<Annotation>,
}

#[derive(Deserialize)]
struct Image {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(deserialize_with = "file_name")]
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    #[serde(deserialize_with = "image_id")]
    image_id: u64,
    #[serde(deserialize_with = "caption")]
    caption: String,
}

key!(images, "images");
key!(annotations, "annotations");
key!(id, "id");
key!(file_name, "file_name");
key!(image_id, "image_id");
key!(caption, "caption");

/// The prefix and suffix of a caption annotation file's name; what lies between is its set.
pub const FILE_PREFIX: &str = "captions_";
pub const FILE_SUFFIX: &str = ".json";

/// One annotation file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoFile {
    /// `val2014` for `captions_val2014.json`.
    pub set: String,
    /// (id, file name) of each entry of `images`, in file order.
    pub images: Vec<(u64, String)>,
    /// (image id, caption) of each entry of `annotations`, in file order (the index is the
    /// entry's, for messages: `annotations[17]`).
    pub annotations: Vec<(u64, String)>,
}

/// The set a caption annotation file's name gives (`captions_val2014.json` → `val2014`), if it
/// is named like one.
pub fn set_of(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(FILE_PREFIX)?
        .strip_suffix(FILE_SUFFIX)
        .filter(|set| !set.is_empty())
}

/// Our split for a set, from the word its name holds: `train…` → train, `val…` → dev,
/// `test…` → test. `None` when it holds none of them or more than one (`trainval`).
pub fn split_of_set(set: &str) -> Option<&'static str> {
    let set = set.to_lowercase();
    let found: Vec<&'static str> = [("train", "train"), ("val", "dev"), ("test", "test")]
        .into_iter()
        .filter(|(word, _)| set.contains(word))
        .map(|(_, split)| split)
        .collect();
    match found[..] {
        [split] => Some(split),
        _ => None,
    }
}

/// Reads one caption annotation file.
///
/// Errors: the file missing, not UTF-8 or not JSON; an image without `id` or `file_name`, an
/// annotation without `image_id` or `caption`, or a value of the wrong type (`Parse`, naming
/// the line, column and entry); an empty file name, or an id or file name given by two images
/// (`File`, naming the entry). Annotations naming an id no image has are kept here and skipped
/// by the caller, which records them.
pub fn read(path: &Path) -> Result<CocoFile, StageError> {
    let label = crate::flickr::file_label(path);
    let set = set_of(&label)
        .ok_or_else(|| {
            StageError::file(
                path,
                format!(
                    "not named like a caption annotation file ({FILE_PREFIX}<set>{FILE_SUFFIX})"
                ),
            )
        })?
        .to_string();
    let file: File = json::read_file(path)?;
    let mut ids: HashMap<u64, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, image) in file.images.0.iter().enumerate() {
        let at = |key: &str| format!("images[{index}].{key}");
        let name = image.file_name.trim();
        if name.is_empty() {
            return Err(json::entry_error(path, &at("file_name"), "is empty"));
        }
        if let Some(first) = ids.insert(image.id, index) {
            return Err(json::entry_error(
                path,
                &at("id"),
                format!("{} is already the id of images[{first}]", image.id),
            ));
        }
        if let Some(first) = names.insert(name, index) {
            return Err(json::entry_error(
                path,
                &at("file_name"),
                format!("`{name}` is already the file name of images[{first}]"),
            ));
        }
    }
    let images = file
        .images
        .0
        .into_iter()
        .map(|image| (image.id, image.file_name.trim().to_string()))
        .collect();
    let annotations = file
        .annotations
        .0
        .into_iter()
        .map(|a| (a.image_id, a.caption))
        .collect();
    Ok(CocoFile {
        set,
        images,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_split_come_from_the_file_name() {
        assert_eq!(set_of("captions_val2014.json"), Some("val2014"));
        assert_eq!(set_of("captions_.json"), None);
        assert_eq!(set_of("instances_val2014.json"), None);
        assert_eq!(split_of_set("train2014"), Some("train"));
        assert_eq!(split_of_set("val2014"), Some("dev"));
        assert_eq!(split_of_set("Test"), Some("test"));
        assert_eq!(split_of_set("trainval"), None);
        assert_eq!(split_of_set("2017"), None);
    }
}
