//! Reading the JSON files of caption datasets (Karpathy's split files, COCO's annotations) with
//! errors that say where: a missing key or a value of the wrong type is reported with its JSON
//! path (`images[12].sentences[3].raw`) as well as the line and column serde_json saw, because
//! these files are usually a single line tens of megabytes long.
//!
//! The readers declare their entries as plain structs; each field the project uses goes through
//! `field` (by `deserialize_with`) and each array through `Entries`, which add their part of the
//! path to an error on its way out. Keys the project does not use (Karpathy's `tokens`, COCO's
//! `license`) are skipped without being stored.

use std::fmt::Display;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{DeserializeOwned, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::flickr::read_text;
use crate::StageError;

/// A JSON array whose elements' errors name their index (`[12]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Entries<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArrayVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrayVisitor<T> {
            type Value = Entries<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries<T>, A::Error> {
                // Capped: the hint comes from the file, which may lie.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                loop {
                    match seq.next_element::<T>() {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => return Ok(Entries(items)),
                        Err(e) => {
                            return Err(A::Error::custom(at(&format!("[{}]", items.len()), e)))
                        }
                    }
                }
            }
        }

        deserializer.deserialize_seq(ArrayVisitor(PhantomData))
    }
}

/// `segment` put in front of an error message, which may already start with a path (`.raw`,
/// `[3]`): paths are built from the inside out as the error unwinds.
fn at(segment: &str, error: impl Display) -> String {
    let inner = error.to_string();
    if inner.starts_with(['.', '[']) {
        format!("{segment}{inner}")
    } else {
        format!("{segment}: {inner}")
    }
}

/// Deserialises the value of key `name`, naming the key in an error (`.name`). Readers call it
/// from a one-line function per key, given to `#[serde(deserialize_with)]`.
pub fn field<'de, D, T>(deserializer: D, name: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map_err(|e| D::Error::custom(at(&format!(".{name}"), e)))
}

/// Defines `fn $name(deserializer) -> Result<T, _>` reading key `$key` through `field`, for
/// `#[serde(deserialize_with = "$name")]`.
macro_rules! key {
    ($name:ident, $key:literal) => {
        fn $name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
        where
            D: serde::Deserializer<'de>,
            T: serde::Deserialize<'de>,
        {
            $crate::datasets::json::field(deserializer, $key)
        }
    };
}
pub(crate) use key;

/// Reads and parses a whole JSON file as `T`. A file that is missing or not UTF-8 is reported as
/// `read_text` reports it; JSON that does not parse, or lacks a key `T` needs, is a `Parse`
/// error naming the line, the column and, where it lies inside an entry, the entry's path.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| parse_error(path, &e))
}

/// A serde_json error as a `Parse` error: the message without serde's own "at line L column C"
/// suffix, the path without its leading dot, and the column in words.
fn parse_error(path: &Path, error: &serde_json::Error) -> StageError {
    let text = error.to_string();
    let message = match text.rsplit_once(" at line ") {
        Some((message, _)) if error.line() > 0 => message,
        _ => text.as_str(),
    };
    let message = message.strip_prefix('.').unwrap_or(message);
    StageError::Parse {
        path: path.to_path_buf(),
        line: error.line(),
        message: format!("{message} (column {})", error.column()),
    }
}

/// An error about one entry of a JSON file that parsed: `images[12].split: …`.
pub fn entry_error(path: &Path, entry: &str, message: impl Display) -> StageError {
    StageError::file(path, format!("{entry}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "items")]
        items: Entries<Item>,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        #[serde(deserialize_with = "name")]
        name: String,
        #[serde(default, deserialize_with = "parts")]
        parts: Option<Entries<Part>>,
    }

    #[derive(Debug, Deserialize)]
    struct Part {
        #[serde(deserialize_with = "text")]
        text: String,
    }

    key!(items, "items");
    key!(name, "name");
    key!(parts, "parts");
    key!(text, "text");

    fn error_of(json: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        std::fs::write(&path, json).unwrap();
        read_file::<Doc>(&path).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_entry_key_line_and_column() {
        let err = error_of(r#"{"items": [{"name": "a"}, {"nom": "b"}]}"#);
        assert!(
            err.ends_with("doc.json:1: items[1]: missing field `name` (column 38)"),
            "{err}"
        );
        let json = "{\"items\": [\n{\"name\": \"a\"},\n{\"name\": \"b\", \"parts\": [{\"text\": \"x\"}, {\"text\": 5}]}]}";
        let err = error_of(json);
        assert!(
            err.ends_with(
                "doc.json:3: items[1].parts[1].text: invalid type: integer `5`, expected a string \
                 (column 49)"
            ),
            "{err}"
        );
        let err = error_of(r#"{"items": {"name": "a"}}"#);
        assert!(
            err.contains("items: invalid type: map, expected an array"),
            "{err}"
        );
        let err = error_of(r#"{"items": [{"name": "a"}"#);
        assert!(
            err.contains("doc.json:1: items[1]: EOF while parsing"),
            "{err}"
        );
        let err = error_of(r#"{}"#);
        assert!(err.contains("missing field `items`"), "{err}");
    }

    #[test]
    fn unused_keys_are_skipped_and_optional_ones_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        let json = r#"{"info": [1, {"x": null}], "items": [{"name": "a", "tokens": ["a"]},
                       {"name": "b", "parts": [{"text": "t", "id": 3}]}]}"#;
        std::fs::write(&path, json).unwrap();
        let doc: Doc = read_file(&path).unwrap();
        assert_eq!(doc.items.0.len(), 2);
        assert_eq!(doc.items.0[1].name, "b");
        assert!(doc.items.0[0].parts.is_none());
        assert_eq!(doc.items.0[1].parts.as_ref().unwrap().0[0].text, "t");
    }
}
