//! Stage kind `captions`: parses a Flickr8k caption file, tokenises every caption, builds the
//! vocabulary from the train split and writes captions, vocabulary and skipped lines as Parquet.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, ListArray, StringArray, UInt32Array, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};

use crate::flickr::{self, CaptionFile, Splits};
use crate::table::{batch, write_parquet};
use crate::{
    Effect, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageContext, StageError,
    StageInput, StageKind, StageReport,
};

pub const KIND: StageKind = StageKind {
    name: "captions",
    version: 1,
    about: "Tokenise Flickr8k captions and build a vocabulary from the train split",
    params: PARAMS,
    inputs: flickr::DATASET_INPUTS,
    sources,
    device: crate::DeviceUse::NoLibtorch,
    run,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "root",
        ty: ParamType::Path {
            what: PathKind::Folder,
            words: &[],
        },
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "Dataset folder in the Flickr8k layout (instead of an upstream demo_data stage)",
    },
    ParamSpec {
        name: "variant",
        ty: ParamType::Choice(&["raw", "lemma"]),
        default: ParamDefault::Str("raw"),
        effect: Effect::Output,
        help: "Caption file to read: raw (Flickr8k.token.txt) or lemma (Flickr8k.lemma.token.txt)",
    },
    ParamSpec {
        name: "min_count",
        ty: ParamType::Int {
            min: 1,
            max: i64::MAX,
        },
        default: ParamDefault::Int(1),
        effect: Effect::Output,
        help: "Train-split words seen fewer times than this become <unk>",
    },
];

/// Output file names.
pub const CAPTIONS_TABLE: &str = "captions.parquet";
pub const VOCAB_TABLE: &str = "vocab.parquet";
pub const SKIPPED_TABLE: &str = "skipped.parquet";

/// The special tokens, at fixed ids: every vocabulary starts with them in this order.
pub const PAD: &str = "<pad>";
pub const START: &str = "<start>";
pub const END: &str = "<end>";
pub const UNK: &str = "<unk>";
pub const SPECIAL_TOKENS: [&str; 4] = [PAD, START, END, UNK];
pub const PAD_ID: u32 = 0;
pub const START_ID: u32 = 1;
pub const END_ID: u32 = 2;
pub const UNK_ID: u32 = 3;

/// The caption file of the chosen `variant`.
fn caption_path(params: &Params, root: &Path) -> Result<PathBuf, StageError> {
    let file = match params.str("variant")? {
        "raw" => flickr::TOKEN_FILE,
        "lemma" => flickr::LEMMA_FILE,
        other => {
            return Err(StageError::Param {
                name: "variant".to_string(),
                message: format!("{other:?} is not one of raw, lemma"),
            })
        }
    };
    Ok(flickr::text_file(root, file))
}

fn sources(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    let Some(root) = flickr::external_root(params, inputs, base_dir)? else {
        return Ok(Vec::new());
    };
    let mut files = vec![caption_path(params, &root)?];
    files.extend(flickr::split_paths(&root));
    Ok(files
        .into_iter()
        .map(|path| Source::in_param_folder("root", &root, path))
        .collect())
}

/// The words of a caption: lower-cased runs of `[a-z0-9']`, everything else separates words, and
/// runs of apostrophes alone (quotes) are dropped. Keeping apostrophes inside words keeps the
/// dataset's `'s` tokens (`woman 's`) as words of their own.
pub fn words(caption: &str) -> Vec<String> {
    caption
        .to_lowercase()
        .split(|c: char| !matches!(c, 'a'..='z' | '0'..='9' | '\''))
        .filter(|word| !word.is_empty() && !word.chars().all(|c| c == '\''))
        .map(str::to_string)
        .collect()
}

/// The caption as stored: trimmed, without the dataset's trailing " ." (which every other
/// caption has and which carries no meaning).
pub fn clean_caption(text: &str) -> &str {
    let text = text.trim();
    text.strip_suffix(" .").map(str::trim_end).unwrap_or(text)
}

/// Token ids by word, with each word's train-split count.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    /// Tokens in id order, specials first; counts are 0 for specials.
    pub tokens: Vec<(String, u64)>,
    ids: HashMap<String, u32>,
}

impl Vocabulary {
    /// Builds the vocabulary from the words of the train-split captions: the specials, then every
    /// word seen at least `min_count` times, most frequent first, ties alphabetical (so the ids
    /// do not depend on caption order).
    pub fn build<'a>(train_words: impl IntoIterator<Item = &'a str>, min_count: u64) -> Self {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for word in train_words {
            *counts.entry(word).or_default() += 1;
        }
        let mut kept: Vec<(&str, u64)> = counts
            .into_iter()
            .filter(|&(_, count)| count >= min_count)
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let tokens: Vec<(String, u64)> = SPECIAL_TOKENS
            .iter()
            .map(|special| (special.to_string(), 0))
            .chain(
                kept.into_iter()
                    .map(|(word, count)| (word.to_string(), count)),
            )
            .collect();
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(id, (token, _))| (token.clone(), id as u32))
            .collect();
        Vocabulary { tokens, ids }
    }

    /// The id of `word`, `UNK_ID` if it is not in the vocabulary.
    pub fn id(&self, word: &str) -> u32 {
        self.ids.get(word).copied().unwrap_or(UNK_ID)
    }

    /// `<start>`, the ids of `words`, `<end>`.
    pub fn encode(&self, words: &[String]) -> Vec<u32> {
        std::iter::once(START_ID)
            .chain(words.iter().map(|word| self.id(word)))
            .chain(std::iter::once(END_ID))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let root = flickr::dataset_root(&ctx.params, &ctx.inputs, &ctx.base_dir)?;
    let min_count = ctx.params.int("min_count")?;
    let min_count = u64::try_from(min_count)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| StageError::Param {
            name: "min_count".to_string(),
            message: format!("{min_count} is out of range: expected integer >= 1"),
        })?;
    let caption_file_path = caption_path(&ctx.params, &root)?;
    // Split lists first: a missing one is a setup error worth reporting before a long parse.
    let splits = Splits::read(&root)?;
    let file = flickr::read_caption_file(&caption_file_path, ctx.progress)?;

    let caption_splits: Vec<&'static str> = file
        .captions
        .iter()
        .map(|caption| splits.split_of(&caption.image))
        .collect();
    let caption_words: Vec<Vec<String>> = file
        .captions
        .iter()
        .map(|caption| words(clean_caption(&caption.text)))
        .collect();
    let train_words = caption_words
        .iter()
        .zip(&caption_splits)
        .filter(|(_, split)| **split == "train")
        .flat_map(|(words, _)| words.iter().map(String::as_str));
    let vocab = Vocabulary::build(train_words, min_count);
    let tokens: Vec<Vec<u32>> = caption_words.iter().map(|w| vocab.encode(w)).collect();

    write_captions(&ctx.out_dir, &file, &caption_splits, &tokens)?;
    write_vocab(&ctx.out_dir, &vocab)?;
    write_skipped(&ctx.out_dir, &file)?;

    let mut report = StageReport::default();
    report.warnings.extend(file.skip_summary());
    report.warnings.extend(split_warnings(&file, &splits));
    let image_count = file.image_names().len();
    let max_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let train_captions = caption_splits.iter().filter(|&&s| s == "train").count();
    report.notes.push(format!(
        "{} captions of {image_count} images ({train_captions} in the train split)",
        file.captions.len()
    ));
    report.notes.push(format!(
        "vocabulary {} tokens (4 special, min_count {min_count})",
        vocab.len()
    ));
    report.notes.push(format!(
        "longest caption {max_len} tokens with <start> and <end>"
    ));
    Ok(report)
}

/// Warnings about images the captions and split lists disagree on: captioned images no list
/// names (they get split "none"), and listed images without captions (they will be missing from
/// training and evaluation).
fn split_warnings(file: &CaptionFile, splits: &Splits) -> Vec<String> {
    let mut warnings = Vec::new();
    let captioned = file.image_names();
    let unsplit: Vec<&str> = captioned
        .iter()
        .copied()
        .filter(|image| splits.split_of(image) == flickr::NO_SPLIT)
        .collect();
    if !unsplit.is_empty() {
        warnings.push(format!(
            "{}: {} captioned images are in no split list (split \"none\"): {}",
            file.label(),
            unsplit.len(),
            flickr::preview_names(&unsplit, unsplit.len())
        ));
    }
    let captioned: HashSet<&str> = captioned.into_iter().collect();
    let mut uncaptioned: Vec<&str> = splits
        .images()
        .filter(|image| !captioned.contains(image))
        .collect();
    if !uncaptioned.is_empty() {
        uncaptioned.sort_unstable();
        warnings.push(format!(
            "{}: {} images in the split lists have no caption: {}",
            file.label(),
            uncaptioned.len(),
            flickr::preview_names(&uncaptioned, uncaptioned.len())
        ));
    }
    warnings
}

fn utf8_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn write_captions(
    out_dir: &Path,
    file: &CaptionFile,
    splits: &[&str],
    tokens: &[Vec<u32>],
) -> Result<(), StageError> {
    let path = out_dir.join(CAPTIONS_TABLE);
    let item = Arc::new(Field::new_list_field(DataType::UInt32, false));
    let schema = Arc::new(Schema::new(vec![
        utf8_field("image_id"),
        Field::new("caption_no", DataType::UInt32, false),
        utf8_field("caption"),
        Field::new("tokens", DataType::List(item.clone()), false),
        utf8_field("split"),
    ]));
    let captions = &file.captions;
    let token_lists = ListArray::try_new(
        item,
        OffsetBuffer::from_lengths(tokens.iter().map(Vec::len)),
        Arc::new(UInt32Array::from(tokens.concat())),
        None,
    )
    .map_err(|e| StageError::Table {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            captions.iter().map(|c| c.image.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            captions.iter().map(|c| c.number),
        )),
        Arc::new(StringArray::from_iter_values(
            captions.iter().map(|c| clean_caption(&c.text)),
        )),
        Arc::new(token_lists),
        Arc::new(StringArray::from_iter_values(splits.iter().copied())),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

fn write_vocab(out_dir: &Path, vocab: &Vocabulary) -> Result<(), StageError> {
    let path = out_dir.join(VOCAB_TABLE);
    let schema = Arc::new(Schema::new(vec![
        Field::new("token_id", DataType::UInt32, false),
        utf8_field("token"),
        Field::new("count", DataType::UInt64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..vocab.len() as u32)),
        Arc::new(StringArray::from_iter_values(
            vocab.tokens.iter().map(|(token, _)| token.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            vocab.tokens.iter().map(|(_, count)| *count),
        )),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

fn write_skipped(out_dir: &Path, file: &CaptionFile) -> Result<(), StageError> {
    let path = out_dir.join(SKIPPED_TABLE);
    let schema = Arc::new(Schema::new(vec![
        utf8_field("file"),
        Field::new("line", DataType::UInt64, false),
        utf8_field("reason"),
        utf8_field("text"),
    ]));
    let label = file.label();
    let skipped = &file.skipped;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            skipped.iter().map(|_| label.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            skipped.iter().map(|s| s.line as u64),
        )),
        Arc::new(StringArray::from_iter_values(
            skipped.iter().map(|s| s.reason.code()),
        )),
        Arc::new(StringArray::from_iter_values(
            skipped.iter().map(|s| s.text.as_str()),
        )),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

/// A word as the caption metrics (BLEU, CIDEr-D, ROUGE-L) compare generated captions with their
/// references: the references' own words, and for a generated caption its words with `<unk>` as
/// [`CaptionWord::Unknown`]. References are made of [`CaptionWord::Word`]s only
/// ([`reference_words`]), so a generated `<unk>` matches nothing, not even a reference word that
/// the vocabulary turned into `<unk>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaptionWord {
    Word(String),
    Unknown,
}

/// The words of a reference caption (its text, as the captions table stores it), by [`words`].
pub fn reference_words(caption: &str) -> Vec<CaptionWord> {
    words(caption).into_iter().map(CaptionWord::Word).collect()
}

/// The reference words of every caption in the captions table at `path`, by image id and
/// caption number.
///
/// # Errors
/// If the table cannot be read or lacks the `image_id`, `caption_no` or `caption` column.
pub fn read_reference_words(
    path: &Path,
) -> Result<HashMap<(String, u32), Vec<CaptionWord>>, StageError> {
    let table = crate::table::read_parquet(path)?;
    let ids = crate::table::strings(path, &table, "image_id")?;
    let numbers = crate::table::u32s(path, &table, "caption_no")?;
    let captions = crate::table::strings(path, &table, "caption")?;
    Ok(ids
        .into_iter()
        .zip(numbers)
        .zip(captions)
        .map(|(key, caption)| (key, reference_words(&caption)))
        .collect())
}

impl Vocabulary {
    /// Reads the vocabulary table this stage writes.
    pub fn read(path: &Path) -> Result<Vocabulary, StageError> {
        let table = crate::table::read_parquet(path)?;
        let tokens = crate::table::strings(path, &table, "token")?;
        let counts = crate::table::column::<UInt64Array>(path, &table, "count")?;
        let ids_column = crate::table::u32s(path, &table, "token_id")?;
        if ids_column
            .iter()
            .enumerate()
            .any(|(i, &id)| id as usize != i)
            || tokens.get(..SPECIAL_TOKENS.len()) != Some(&SPECIAL_TOKENS.map(String::from)[..])
        {
            return Err(StageError::file(
                path,
                "not a vocabulary table: ids must be 0..n with the special tokens first",
            ));
        }
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        Ok(Vocabulary {
            tokens: tokens
                .into_iter()
                .zip(counts.values().iter().copied())
                .collect(),
            ids,
        })
    }

    /// Whether `word` has an id of its own (is not `<unk>`).
    pub fn contains(&self, word: &str) -> bool {
        self.ids.contains_key(word)
    }

    /// The token of `id`, `<unk>` for ids out of range.
    pub fn token(&self, id: u32) -> &str {
        self.tokens
            .get(id as usize)
            .map(|(t, _)| t.as_str())
            .unwrap_or(UNK)
    }

    /// `<start>` + the ids of the words of `text` + `<end>`, and the words not in the
    /// vocabulary (which become `<unk>`).
    pub fn encode_text(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let words = words(text);
        let unknown = words
            .iter()
            .filter(|w| !self.contains(w))
            .cloned()
            .collect();
        (self.encode(&words), unknown)
    }

    /// The words of `ids`, specials left out, joined by spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&id| id != PAD_ID && id != START_ID && id != END_ID)
            .map(|&id| self.token(id))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The words of a generated caption's `ids` as the caption metrics see them: specials left
    /// out, `<unk>` (and any id outside the vocabulary) as [`CaptionWord::Unknown`].
    pub fn caption_words(&self, ids: &[u32]) -> Vec<CaptionWord> {
        ids.iter()
            .filter(|&&id| id != PAD_ID && id != START_ID && id != END_ID)
            .map(|&id| match self.tokens.get(id as usize) {
                Some((token, _)) if id != UNK_ID => CaptionWord::Word(token.clone()),
                _ => CaptionWord::Unknown,
            })
            .collect()
    }

    /// BLAKE3 of the tokens in id order: ties a trained model to the vocabulary it was trained on.
    pub fn hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for (token, _) in &self.tokens {
            hasher.update(&(token.len() as u64).to_le_bytes());
            hasher.update(token.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::flickr::testing::{
        column_names, read_parquet, run_on_root, strings, u32_lists, u32s, u64s, write_text_files,
    };
    use crate::ParamValue;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/flickr8k-text")
            .join(name)
    }

    #[test]
    fn words_are_lowercase_alphanumeric_runs_with_apostrophes() {
        assert_eq!(
            words("A man 's  \"quoted\" T-shirt, 2 dogs ' '' café."),
            ["a", "man", "'s", "quoted", "t", "shirt", "2", "dogs", "caf"]
        );
        assert!(words(" . , ").is_empty());
    }

    #[test]
    fn clean_caption_trims_and_drops_the_trailing_period() {
        assert_eq!(clean_caption("  A dog runs .  "), "A dog runs");
        assert_eq!(clean_caption("A dog runs."), "A dog runs.");
        assert_eq!(clean_caption("A dog runs"), "A dog runs");
    }

    #[test]
    fn real_token_file_parses_completely() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("flickr");
        let train_list = fs::read_to_string(fixture("Flickr_8k.trainImages.txt")).unwrap();
        // The real list ends its last name without a newline: 6,000 names in 5,999 newlines.
        assert_eq!(train_list.matches('\n').count(), 5999);
        assert!(train_list.ends_with(".jpg"));
        let tokens = fs::read_to_string(fixture("Flickr8k.token.txt")).unwrap();
        write_text_files(&root, &tokens, [&train_list, "", ""]);
        let splits = Splits::read(&root).unwrap();
        assert_eq!(splits.count("train"), 6000);

        let out = dir.path().join("out");
        let report = run_on_root(&KIND, &root, &[], &out).unwrap();

        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(captions.num_rows(), 40_460);
        let images = strings(&captions, "image_id");
        let distinct: HashSet<&str> = images.iter().map(String::as_str).collect();
        assert_eq!(distinct.len(), 8_092);
        let split = strings(&captions, "split");
        let odd = "2258277193_586949ec62.jpg.1";
        let odd_rows: Vec<usize> = (0..images.len()).filter(|&i| images[i] == odd).collect();
        assert_eq!(odd_rows.len(), 5);
        assert!(odd_rows.iter().all(|&i| split[i] == "none"));
        let train_images: HashSet<&str> = (0..images.len())
            .filter(|&i| split[i] == "train")
            .map(|i| images[i].as_str())
            .collect();
        assert_eq!(train_images.len(), 6_000);
        assert_eq!(
            (0..images.len()).filter(|&i| split[i] == "train").count(),
            30_000
        );
        assert_eq!(u32s(&captions, "caption_no")[..5], [0, 1, 2, 3, 4]);
        assert_eq!(
            strings(&captions, "caption")[0],
            "A child in a pink dress is climbing up a set of stairs in an entry way"
        );

        let skipped = read_parquet(&out.join(SKIPPED_TABLE));
        assert_eq!(skipped.num_rows(), 0);
        assert_eq!(column_names(&skipped), ["file", "line", "reason", "text"]);
        // Only the split warning: the dev and test lists are empty here.
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("2092 captioned images are in no split list"));

        let vocab = read_parquet(&out.join(VOCAB_TABLE));
        let counts = u64s(&vocab, "count");
        let tokens = u32_lists(&captions, "tokens");
        let max_len = tokens.iter().map(Vec::len).max().unwrap();
        println!(
            "real token file: {} captions, {} images, vocabulary {}, longest {} tokens, {:?}",
            captions.num_rows(),
            distinct.len(),
            vocab.num_rows(),
            max_len,
            report.notes
        );
        // Every train-split word occurrence is counted once in the vocabulary.
        let train_word_count: u64 = (0..tokens.len())
            .filter(|&i| split[i] == "train")
            .map(|i| tokens[i].len() as u64 - 2)
            .sum();
        assert_eq!(counts.iter().sum::<u64>(), train_word_count);
    }

    /// A small dataset whose vocabulary is easy to work out by hand.
    fn small_root(dir: &Path) -> PathBuf {
        let root = dir.join("small");
        let captions = "a.jpg#0\tA dog runs .\n\
                        a.jpg#1\ta dog sits\n\
                        b.jpg#0\tThe dog runs\n\
                        c.jpg#0\tA cat flies .\n";
        write_text_files(&root, captions, ["a.jpg\nb.jpg\n", "c.jpg\n", ""]);
        root
    }

    fn vocab_table(out: &Path) -> Vec<(u32, String, u64)> {
        let vocab = read_parquet(&out.join(VOCAB_TABLE));
        assert_eq!(column_names(&vocab), ["token_id", "token", "count"]);
        let ids = u32s(&vocab, "token_id");
        let tokens = strings(&vocab, "token");
        let counts = u64s(&vocab, "count");
        (0..ids.len())
            .map(|i| (ids[i], tokens[i].clone(), counts[i]))
            .collect()
    }

    fn entry(id: u32, token: &str, count: u64) -> (u32, String, u64) {
        (id, token.to_string(), count)
    }

    #[test]
    fn vocabulary_comes_from_train_with_fixed_specials_and_min_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        let out = dir.path().join("min2");
        let report = run_on_root(&KIND, &root, &[("min_count", ParamValue::Int(2))], &out).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(
            vocab_table(&out),
            [
                entry(PAD_ID, "<pad>", 0),
                entry(START_ID, "<start>", 0),
                entry(END_ID, "<end>", 0),
                entry(UNK_ID, "<unk>", 0),
                entry(4, "dog", 3),
                entry(5, "a", 2),
                entry(6, "runs", 2),
            ]
        );
        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(
            column_names(&captions),
            ["image_id", "caption_no", "caption", "tokens", "split"]
        );
        assert_eq!(
            u32_lists(&captions, "tokens"),
            [
                vec![1, 5, 4, 6, 2],
                vec![1, 5, 4, 3, 2],
                vec![1, 3, 4, 6, 2],
                // "cat" and "flies" are only in a dev caption: unknown.
                vec![1, 5, 3, 3, 2],
            ]
        );
        assert_eq!(
            strings(&captions, "split"),
            ["train", "train", "train", "dev"]
        );
        assert_eq!(
            strings(&captions, "caption"),
            ["A dog runs", "a dog sits", "The dog runs", "A cat flies"]
        );

        let out = dir.path().join("min1");
        run_on_root(&KIND, &root, &[], &out).unwrap();
        let vocab = vocab_table(&out);
        // Ties are alphabetical; dev-only words never enter.
        assert_eq!(
            vocab[4..],
            [
                entry(4, "dog", 3),
                entry(5, "a", 2),
                entry(6, "runs", 2),
                entry(7, "sits", 1),
                entry(8, "the", 1),
            ]
        );
    }

    #[test]
    fn metrics_see_reference_words_and_never_match_a_generated_unk() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        let out = dir.path().join("min2");
        run_on_root(&KIND, &root, &[("min_count", ParamValue::Int(2))], &out).unwrap();
        let references = read_reference_words(&out.join(CAPTIONS_TABLE)).unwrap();
        let word = |w: &str| CaptionWord::Word(w.to_string());
        // "sits", "the", "cat" and "flies" are <unk> in the vocabulary, but not in the references.
        assert_eq!(
            references[&("c.jpg".to_string(), 0)],
            [word("a"), word("cat"), word("flies")]
        );
        assert_eq!(
            references[&("a.jpg".to_string(), 1)],
            [word("a"), word("dog"), word("sits")]
        );
        let vocab = Vocabulary::read(&out.join(VOCAB_TABLE)).unwrap();
        assert_eq!(
            vocab.caption_words(&[START_ID, 5, UNK_ID, 4, 999, END_ID, PAD_ID]),
            [
                word("a"),
                CaptionWord::Unknown,
                word("dog"),
                CaptionWord::Unknown
            ]
        );
    }

    #[test]
    fn malformed_lines_are_skipped_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("messy");
        let captions = "a.jpg#0\tA dog .\r\n\
                        a.jpg#1 A dog without a tab\r\n\
                        \r\n\
                        a.jpg#one\tA dog with a bad number\r\n\
                        a.jpg#2\t \r\n\
                        a.jpg#0\tA duplicate dog\r\n\
                        b.jpg#0\tA cat\r\n";
        write_text_files(&root, captions, ["a.jpg\nb.jpg\n", "", ""]);
        let out = dir.path().join("out");
        let report = run_on_root(&KIND, &root, &[], &out).unwrap();
        assert_eq!(
            report.warnings,
            [
                "Flickr8k.token.txt: skipped 4 lines: 1 without a tab (line 2), \
              1 without a #<n> caption number (line 4), 1 with an empty caption (line 5), \
              1 repeating an earlier image and caption number (line 6)"
            ]
        );
        let skipped = read_parquet(&out.join(SKIPPED_TABLE));
        assert_eq!(u64s(&skipped, "line"), [2, 4, 5, 6]);
        assert_eq!(
            strings(&skipped, "reason"),
            ["no tab", "bad caption number", "empty caption", "duplicate"]
        );
        assert_eq!(strings(&skipped, "file"), vec![TOKEN_FILE_NAME; 4]);
        assert_eq!(strings(&skipped, "text")[0], "a.jpg#1 A dog without a tab");
        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(strings(&captions, "caption"), ["A dog", "A cat"]);
    }

    const TOKEN_FILE_NAME: &str = flickr::TOKEN_FILE;

    #[test]
    fn empty_caption_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("empty");
        write_text_files(&root, "", ["", "", ""]);
        let err = run_on_root(&KIND, &root, &[], &dir.path().join("out")).unwrap_err();
        assert!(
            matches!(&err, StageError::File { path, .. } if path.ends_with(TOKEN_FILE_NAME)),
            "{err}"
        );
    }

    #[test]
    fn missing_split_list_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        let test_list = flickr::text_file(&root, "Flickr_8k.testImages.txt");
        fs::remove_file(&test_list).unwrap();
        let err = run_on_root(&KIND, &root, &[], &dir.path().join("out")).unwrap_err();
        assert!(
            err.to_string().contains("Flickr_8k.testImages.txt"),
            "{err}"
        );
    }

    #[test]
    fn lemma_variant_reads_the_lemma_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        fs::write(
            flickr::text_file(&root, flickr::LEMMA_FILE),
            "a.jpg#0\ta dog run .\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        let variant = ("variant", ParamValue::Str("lemma".into()));
        let report = run_on_root(&KIND, &root, &[variant], &out).unwrap();
        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(strings(&captions, "caption"), ["a dog run"]);
        // b.jpg and c.jpg are listed but have no lemma caption.
        assert!(report.warnings[0].contains("2 images in the split lists have no caption"));
    }

    #[test]
    fn sources_are_the_caption_file_and_split_lists_unless_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        let mut given = std::collections::BTreeMap::new();
        given.insert("root".to_string(), ParamValue::Str("small".into()));
        given.insert("variant".to_string(), ParamValue::Str("lemma".into()));
        let params = Params::with_defaults(KIND.params, given);
        let files = (KIND.sources)(&params, &[], dir.path()).unwrap();
        let labels: Vec<String> = files.iter().map(Source::label).collect();
        assert_eq!(
            labels,
            [
                "root/Flickr8k_text/Flickr8k.lemma.token.txt",
                "root/Flickr8k_text/Flickr_8k.trainImages.txt",
                "root/Flickr8k_text/Flickr_8k.devImages.txt",
                "root/Flickr8k_text/Flickr_8k.testImages.txt"
            ]
        );
        assert!(files
            .iter()
            .all(|f| f.path.is_absolute() && f.path.starts_with(&root)));

        let upstream = [StageInput {
            name: "demo".into(),
            kind: "demo_data".into(),
            dir: root.clone(),
        }];
        let defaults = Params::with_defaults(KIND.params, Default::default());
        assert!((KIND.sources)(&defaults, &upstream, dir.path())
            .unwrap()
            .is_empty());
        assert!((KIND.sources)(&defaults, &[], dir.path()).is_err());
    }
}
