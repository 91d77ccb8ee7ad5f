//! Stage kind `captions`: reads the captions of a dataset (Flickr8k, Karpathy or COCO format:
//! see `datasets`), tokenises every caption (`tokenize`), builds the vocabulary from the train
//! split and writes captions, vocabulary and skipped entries as Parquet; for the lemma variant
//! also the word → lemma table that lets queries written in plain words find the lemmas.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, ListArray, StringArray, UInt32Array, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};

use crate::datasets::{self, Caption, Dataset, Location, Options, Skipped};
use crate::flickr::{self, CaptionFile, SkipReason};
use crate::table::{batch, write_parquet};
use crate::tokenize;
pub use crate::tokenize::words;
use crate::{
    Effect, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageContext, StageError,
    StageInput, StageKind, StageReport,
};

pub const KIND: StageKind = StageKind {
    name: "captions",
    version: kind_version(tokenize::VERSION),
    about: "Tokenise a dataset's captions (Flickr8k, Karpathy or COCO format) and build a \
            vocabulary from the train split",
    params: PARAMS,
    inputs: flickr::DATASET_INPUTS,
    sources,
    device: crate::DeviceUse::NoLibtorch,
    run,
    shards: None,
    files_root: None,
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
        help: "Dataset folder in the Flickr8k, Karpathy or COCO layout (instead of an upstream \
               demo_data stage)",
    },
    datasets::params::FORMAT,
    ParamSpec {
        name: "variant",
        ty: ParamType::Choice(&["raw", "lemma"]),
        default: ParamDefault::Str("raw"),
        effect: Effect::Output,
        help: "Captions to read: raw, or lemma (Flickr8k.lemma.token.txt, which only Flickr8k \
               has)",
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
    datasets::params::KARPATHY,
    datasets::params::RESTVAL,
    datasets::params::DEV_FRACTION,
    datasets::params::TEST_FRACTION,
    datasets::params::SEED,
];

/// The version of this stage's own logic; the kind's version combines it with the tokenizer's.
const LOGIC_VERSION: u32 = 3;

/// The kind's version for a tokenizer version: both enter the cache key, so a new tokenizer
/// re-runs the stage (tokenizer versions stay below 100).
const fn kind_version(tokenizer: u32) -> u32 {
    assert!(tokenizer < 100);
    LOGIC_VERSION * 100 + tokenizer
}

/// Output file names.
pub const CAPTIONS_TABLE: &str = "captions.parquet";
pub const VOCAB_TABLE: &str = "vocab.parquet";
pub const SKIPPED_TABLE: &str = "skipped.parquet";
/// Word → lemma, learned from the raw and lemmatised caption files (`variant = "lemma"` only).
pub const LEMMA_TABLE: &str = "lemmas.parquet";

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

fn sources(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    let mut sources = datasets::stage_sources(params, inputs, base_dir, false)?;
    let Some(root) = flickr::external_root(params, inputs, base_dir)? else {
        return Ok(sources);
    };
    let options = Options::from_params(params, base_dir)?;
    if options.lemma {
        // The lemma table is learned from the raw captions too.
        sources.push(Source::in_param_folder(
            "root",
            &root,
            flickr::text_file(&root, flickr::TOKEN_FILE),
        ));
    }
    // An image that a `<name>.1` caption key is read as changes the output: hash it too. (An
    // unreadable caption file is left to `run`, which reports it.)
    let token_file = flickr::text_file(
        &root,
        if options.lemma {
            flickr::LEMMA_FILE
        } else {
            flickr::TOKEN_FILE
        },
    );
    if let Ok(text) = flickr::read_text(&token_file) {
        sources.extend(
            numbered_copy_targets(&text, &flickr::image_dir(&root))
                .into_iter()
                .map(|path| Source::in_param_folder("root", &root, path)),
        );
    }
    Ok(sources)
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
    /// Word → lemma, for a vocabulary of lemmas (empty otherwise): how query words find their
    /// token. Not part of `hash`, which is about the tokens alone.
    lemmas: HashMap<String, String>,
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
        Vocabulary {
            tokens,
            ids,
            lemmas: HashMap::new(),
        }
    }

    /// How many words the word → lemma map holds (0 for a vocabulary of words).
    pub fn lemma_count(&self) -> usize {
        self.lemmas.len()
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
    let options = Options::from_params(&ctx.params, &ctx.base_dir)?;
    let mut dataset = Dataset::read(&root, &options, ctx.progress)?;
    let caption_words = take_words(&mut dataset)?;
    let lemmas = if options.lemma {
        let raw_path = flickr::text_file(&root, flickr::TOKEN_FILE);
        let mut raw = flickr::read_caption_file(&raw_path, ctx.progress)?;
        read_numbered_copies(&mut raw, &flickr::image_dir(&root));
        Some(LemmaTable::learn(
            raw.captions
                .iter()
                .map(|c| (c.image.as_str(), c.number, c.text.as_str())),
            dataset
                .captions
                .iter()
                .map(|c| (c.image.as_str(), c.number)),
            &caption_words,
        ))
    } else {
        None
    };

    let caption_splits: Vec<&'static str> = dataset
        .captions
        .iter()
        .map(|caption| dataset.split_of(&caption.image))
        .collect();
    let train_words = caption_words
        .iter()
        .zip(&caption_splits)
        .filter(|(_, split)| **split == "train")
        .flat_map(|(words, _)| words.iter().map(String::as_str));
    let vocab = Vocabulary::build(train_words, min_count);
    let tokens: Vec<Vec<u32>> = caption_words.iter().map(|w| vocab.encode(w)).collect();

    write_captions(&ctx.out_dir, &dataset.captions, &caption_splits, &tokens)?;
    write_vocab(&ctx.out_dir, &vocab)?;
    write_skipped(&ctx.out_dir, &dataset.skipped)?;
    if let Some(lemmas) = &lemmas {
        lemmas.write(&ctx.out_dir.join(LEMMA_TABLE))?;
    }

    let mut report = StageReport::default();
    report.warnings.extend(dataset.skip_summaries());
    report.warnings.extend(dataset.split_warnings());
    let image_count = dataset.captioned_images();
    let max_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let train_captions = caption_splits.iter().filter(|&&s| s == "train").count();
    report.notes.push(format!(
        "{} captions of {image_count} images ({train_captions} in the train split)",
        dataset.captions.len()
    ));
    report.notes.push(format!(
        "vocabulary {} tokens (4 special, min_count {min_count})",
        vocab.len()
    ));
    report.notes.push(format!(
        "longest caption {max_len} tokens with <start> and <end>"
    ));
    report.notes.push(format!(
        "tokenizer version {} (NFKC, lower case, Unicode word boundaries)",
        tokenize::VERSION
    ));
    if let Some(lemmas) = &lemmas {
        report.notes.push(format!(
            "lemma table {} words, learned from {} of {} captions aligned word by word with {}",
            lemmas.entries.len(),
            lemmas.aligned,
            lemmas.paired,
            flickr::TOKEN_FILE
        ));
    }
    report.notes.push(dataset.description.clone());
    let renamed = &dataset.renamed;
    if !renamed.is_empty() {
        let names: Vec<String> = renamed
            .iter()
            .map(|(from, to)| format!("{from} as {to}"))
            .collect();
        report.notes.push(format!(
            "read captions of {} numbered copies as the image file they copy, \
             which has no captions of its own: {}",
            renamed.len(),
            flickr::preview_names(&names, names.len())
        ));
    }
    Ok(report)
}

/// The image a caption key like `<name>.jpg.1` (a numbered copy, as real Flickr8k has) stands
/// for: `<name>.jpg`. `None` for every other name.
fn numbered_copy_of(image: &str) -> Option<&str> {
    let (stem, number) = image.rsplit_once('.')?;
    let numbered = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    (numbered && stem.contains('.')).then_some(stem)
}

/// The image files that numbered copies in a caption file's text may be read as: those present
/// in `image_dir`.
fn numbered_copy_targets(text: &str, image_dir: &Path) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = flickr::numbered_lines(text)
        .filter_map(|(_, line)| line.split_once('\t')?.0.trim().rsplit_once('#'))
        .filter_map(|(image, _)| numbered_copy_of(image.trim()))
        .map(|stem| image_dir.join(stem))
        .filter(|path| path.is_file())
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

/// Reads the captions of a numbered copy `<name>.jpg.1` as captions of `<name>.jpg` when the
/// image folder has that file, has no `<name>.jpg.1` file, and `<name>.jpg` has no captions of
/// its own: the copy's captions then describe that image. Returns the (copy, image) pairs read
/// this way, sorted.
pub(crate) fn read_numbered_copies(
    file: &mut CaptionFile,
    image_dir: &Path,
) -> Vec<(String, String)> {
    let captioned: HashSet<String> = file.image_names().into_iter().map(String::from).collect();
    let mut renamed: Vec<(String, String)> = captioned
        .iter()
        .filter_map(|image| Some((image, numbered_copy_of(image)?)))
        .filter(|(image, stem)| {
            !captioned.contains(*stem)
                && image_dir.join(stem).is_file()
                && !image_dir.join(image).exists()
        })
        .map(|(image, stem)| (image.clone(), stem.to_string()))
        .collect();
    renamed.sort();
    let by_copy: HashMap<&str, &str> = renamed
        .iter()
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect();
    for caption in &mut file.captions {
        if let Some(stem) = by_copy.get(caption.image.as_str()) {
            caption.image = stem.to_string();
        }
    }
    renamed
}

/// The words of every caption of `dataset`, in order. Captions without a word (only
/// punctuation, symbols or emoji) are moved to the skipped entries (located by their image and
/// number), since they would train nothing and leave an image with a caption that says nothing.
/// An error if no caption has a word.
fn take_words(dataset: &mut Dataset) -> Result<Vec<Vec<String>>, StageError> {
    let mut kept = Vec::with_capacity(dataset.captions.len());
    let mut kept_words = Vec::with_capacity(dataset.captions.len());
    let file = dataset.caption_label().to_string();
    for caption in std::mem::take(&mut dataset.captions) {
        let caption_words = words(clean_caption(&caption.text));
        if caption_words.is_empty() {
            dataset.skipped.push(Skipped {
                file: file.clone(),
                location: Location::Entry(format!("{}#{}", caption.image, caption.number)),
                reason: SkipReason::NoWords,
                text: caption.text,
            });
        } else {
            kept.push(caption);
            kept_words.push(caption_words);
        }
    }
    dataset.captions = kept;
    if dataset.captions.is_empty() {
        return Err(StageError::Input(format!(
            "{file}: no caption has a word ({} entries skipped)",
            dataset.skipped.len()
        )));
    }
    Ok(kept_words)
}

/// Word → lemma, learned from a dataset's raw and lemmatised captions of the same keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LemmaTable {
    /// (word, lemma, how often the word was aligned with that lemma), sorted by word.
    pub entries: Vec<(String, String, u64)>,
    /// Captions whose raw and lemma words could be aligned (same number of words).
    pub aligned: usize,
    /// Captions present in both files.
    pub paired: usize,
}

impl LemmaTable {
    /// Aligns each lemma caption with the raw caption of the same image and number, word by
    /// word, where both have the same number of words (the lemmatiser changes words, not their
    /// number, so other captions were written differently and are left out). Each raw word maps
    /// to the lemma it was aligned with most often; ties go to the alphabetically first lemma.
    pub fn learn<'a>(
        raw: impl IntoIterator<Item = (&'a str, u32, &'a str)>,
        lemma: impl IntoIterator<Item = (&'a str, u32)>,
        lemma_words: &[Vec<String>],
    ) -> Self {
        let raw_by_key: HashMap<(&str, u32), &str> = raw
            .into_iter()
            .map(|(image, number, text)| ((image, number), text))
            .collect();
        let mut pairs: HashMap<(String, String), u64> = HashMap::new();
        let (mut paired, mut aligned) = (0, 0);
        for (key, lemma_words) in lemma.into_iter().zip(lemma_words) {
            let Some(raw_text) = raw_by_key.get(&key) else {
                continue;
            };
            paired += 1;
            let raw_words = words(clean_caption(raw_text));
            if raw_words.len() != lemma_words.len() {
                continue;
            }
            aligned += 1;
            for (word, lemma) in raw_words.into_iter().zip(lemma_words) {
                *pairs.entry((word, lemma.clone())).or_default() += 1;
            }
        }
        let mut best: HashMap<String, (String, u64)> = HashMap::new();
        for ((word, lemma), count) in pairs {
            match best.get_mut(&word) {
                Some(chosen) if count > chosen.1 || (count == chosen.1 && lemma < chosen.0) => {
                    *chosen = (lemma, count)
                }
                Some(_) => {}
                None => {
                    best.insert(word, (lemma, count));
                }
            }
        }
        let mut entries: Vec<(String, String, u64)> = best
            .into_iter()
            .map(|(word, (lemma, count))| (word, lemma, count))
            .collect();
        entries.sort();
        LemmaTable {
            entries,
            aligned,
            paired,
        }
    }

    /// Writes the table: columns `word`, `lemma` (UTF-8) and `count` (u64), sorted by word.
    fn write(&self, path: &Path) -> Result<(), StageError> {
        let schema = Arc::new(Schema::new(vec![
            utf8_field("word"),
            utf8_field("lemma"),
            Field::new("count", DataType::UInt64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                self.entries.iter().map(|(word, _, _)| word.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                self.entries.iter().map(|(_, lemma, _)| lemma.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                self.entries.iter().map(|(_, _, count)| *count),
            )),
        ];
        write_parquet(path, &batch(path, schema, columns)?)
    }

    /// Reads the word → lemma map of a table `write` wrote.
    fn read_map(path: &Path) -> Result<HashMap<String, String>, StageError> {
        let table = crate::table::read_parquet(path)?;
        let words = crate::table::strings(path, &table, "word")?;
        let lemmas = crate::table::strings(path, &table, "lemma")?;
        Ok(words.into_iter().zip(lemmas).collect())
    }
}

fn utf8_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn write_captions(
    out_dir: &Path,
    captions: &[Caption],
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

/// Writes the skipped entries: a line-oriented file's have a `line`, a JSON file's an `entry`
/// (its JSON path); the other column is null.
fn write_skipped(out_dir: &Path, skipped: &[Skipped]) -> Result<(), StageError> {
    let path = out_dir.join(SKIPPED_TABLE);
    let schema = Arc::new(Schema::new(vec![
        utf8_field("file"),
        Field::new("line", DataType::UInt64, true),
        Field::new("entry", DataType::Utf8, true),
        utf8_field("reason"),
        utf8_field("text"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            skipped.iter().map(|s| s.file.as_str()),
        )),
        Arc::new(UInt64Array::from_iter(
            skipped.iter().map(|s| s.location.line()),
        )),
        Arc::new(StringArray::from_iter(
            skipped.iter().map(|s| s.location.entry()),
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
    /// Reads the vocabulary table this stage writes, with the lemma table beside it
    /// (`LEMMA_TABLE` in the same folder) when there is one. Errors name the file that is
    /// missing or not such a table.
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
        let lemma_path = path.with_file_name(LEMMA_TABLE);
        let lemmas = if lemma_path.is_file() {
            LemmaTable::read_map(&lemma_path)?
        } else {
            HashMap::new()
        };
        Ok(Vocabulary {
            tokens: tokens
                .into_iter()
                .zip(counts.values().iter().copied())
                .collect(),
            ids,
            lemmas,
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

    /// The token a query word stands for: its lemma when the lemma map has one that is in the
    /// vocabulary, else the word itself when it is in the vocabulary; `None` when neither is.
    pub fn token_of<'a>(&'a self, word: &'a str) -> Option<&'a str> {
        self.lemmas
            .get(word)
            .map(String::as_str)
            .filter(|lemma| self.contains(lemma))
            .or_else(|| self.contains(word).then_some(word))
    }

    /// `<start>` + the ids of the words of `text` (split by `tokenize::words`, each read as its
    /// lemma when the vocabulary has a lemma map) + `<end>`, and the words that have no token
    /// (which become `<unk>`), as written in `text` after tokenising.
    pub fn encode_text(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let mut ids = vec![START_ID];
        let mut unknown = Vec::new();
        for word in words(text) {
            match self.token_of(&word) {
                Some(token) => ids.push(self.id(token)),
                None => {
                    ids.push(UNK_ID);
                    unknown.push(word);
                }
            }
        }
        ids.push(END_ID);
        (ids, unknown)
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
    use std::collections::HashSet;
    use std::fs;
    use std::path::PathBuf;

    use super::*;
    use crate::flickr::testing::{
        column_names, read_parquet, run_on_root, strings, u32_lists, u32s, u64s, write_text_files,
    };
    use crate::flickr::Splits;
    use crate::ParamValue;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/flickr8k-text")
            .join(name)
    }

    #[test]
    fn captions_split_with_the_tokenizer() {
        assert_eq!(
            words(clean_caption(
                "A man 's  \"quoted\" T-shirt, 2 dogs ' '' café ."
            )),
            ["a", "man", "'s", "quoted", "t", "shirt", "2", "dogs", "café"]
        );
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
        assert_eq!(
            column_names(&skipped),
            ["file", "line", "entry", "reason", "text"]
        );
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

    #[test]
    fn captions_without_a_word_are_skipped_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wordless");
        let captions = "a.jpg#0\tA dog .\n\
                        a.jpg#1\t... !!! ?\n\
                        a.jpg#2\t🐶 🎉\n\
                        b.jpg#0\tUn café près de la fenêtre\n";
        write_text_files(&root, captions, ["a.jpg\nb.jpg\n", "", ""]);
        let out = dir.path().join("out");
        let report = run_on_root(&KIND, &root, &[], &out).unwrap();
        assert_eq!(
            report.warnings,
            ["Flickr8k.token.txt: skipped 2 entries: 2 without a word \
              (only punctuation, symbols or emoji) (first at a.jpg#1)"]
        );
        let skipped = read_parquet(&out.join(SKIPPED_TABLE));
        assert_eq!(strings(&skipped, "entry"), ["a.jpg#1", "a.jpg#2"]);
        assert_eq!(strings(&skipped, "reason"), ["no words", "no words"]);
        assert_eq!(strings(&skipped, "text"), ["... !!! ?", "🐶 🎉"]);
        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(u32s(&captions, "caption_no"), [0, 0]);
        let vocab: Vec<String> = vocab_table(&out).into_iter().map(|(_, t, _)| t).collect();
        assert!(vocab.contains(&"café".to_string()), "{vocab:?}");
        assert!(vocab.contains(&"fenêtre".to_string()), "{vocab:?}");
    }

    #[test]
    fn a_file_of_wordless_captions_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wordless");
        write_text_files(&root, "a.jpg#0\t. . .\n", ["a.jpg\n", "", ""]);
        let err = run_on_root(&KIND, &root, &[], &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("no caption has a word"), "{err}");
    }

    #[test]
    fn kind_version_follows_the_tokenizer_version() {
        assert_eq!(KIND.version, kind_version(tokenize::VERSION));
        assert_ne!(
            kind_version(tokenize::VERSION),
            kind_version(tokenize::VERSION + 1)
        );
        // Before the Unicode tokenizer the kind was at version 1.
        assert_ne!(KIND.version, 1);
    }

    #[test]
    fn numbered_copies_are_read_as_the_image_they_copy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("copies");
        let captions = "a.jpg.1#0\tA dog .\n\
                        b.jpg.1#0\tA cat .\n\
                        b.jpg#0\tA cat of its own .\n\
                        c.jpg.1#0\tA bird .\n";
        write_text_files(&root, captions, ["a.jpg\nb.jpg\n", "", ""]);
        // a.jpg exists and has no captions: read as a.jpg. b.jpg has captions of its own, and
        // c.jpg is not in the image folder: both stay as named.
        for image in ["a.jpg", "b.jpg"] {
            fs::write(flickr::image_dir(&root).join(image), b"jpeg").unwrap();
        }
        let out = dir.path().join("out");
        let report = run_on_root(&KIND, &root, &[], &out).unwrap();
        let captions = read_parquet(&out.join(CAPTIONS_TABLE));
        assert_eq!(
            strings(&captions, "image_id"),
            ["a.jpg", "b.jpg.1", "b.jpg", "c.jpg.1"]
        );
        assert_eq!(strings(&captions, "split")[0], "train");
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("1 numbered copies") && n.contains("a.jpg.1 as a.jpg")),
            "{:?}",
            report.notes
        );
        // The image the copy is read as is a source: replacing it re-runs the stage.
        let defaults = Params::with_defaults(
            KIND.params,
            [("root".to_string(), ParamValue::Str("copies".into()))].into(),
        );
        let sources = (KIND.sources)(&defaults, &[], dir.path()).unwrap();
        let labels: Vec<String> = sources.iter().map(Source::label).collect();
        assert!(
            labels.contains(&"root/Flicker8k_Dataset/a.jpg".to_string()),
            "{labels:?}"
        );
        assert!(!labels.iter().any(|l| l.ends_with("c.jpg")), "{labels:?}");
    }

    #[test]
    fn lemma_table_is_learned_from_aligned_captions() {
        let dir = tempfile::tempdir().unwrap();
        let root = small_root(dir.path());
        fs::write(
            flickr::text_file(&root, flickr::LEMMA_FILE),
            "a.jpg#0\ta dog run .\n\
             a.jpg#1\ta dog sit\n\
             b.jpg#0\tthe dog run extra words\n\
             c.jpg#0\ta cat fly .\n\
             d.jpg#0\ta bird .\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        let variant = ("variant", ParamValue::Str("lemma".into()));
        let report = run_on_root(&KIND, &root, &[variant], &out).unwrap();
        let table = read_parquet(&out.join(LEMMA_TABLE));
        assert_eq!(column_names(&table), ["word", "lemma", "count"]);
        // b.jpg#0 has more lemma words than raw words: not aligned. d.jpg has no raw caption.
        assert_eq!(
            strings(&table, "word"),
            ["a", "cat", "dog", "flies", "runs", "sits"]
        );
        assert_eq!(
            strings(&table, "lemma"),
            ["a", "cat", "dog", "fly", "run", "sit"]
        );
        assert_eq!(u64s(&table, "count"), [3, 1, 2, 1, 1, 1]);
        assert!(
            report.notes.iter().any(|n| n
                == "lemma table 6 words, learned from 3 of 4 captions aligned \
                              word by word with Flickr8k.token.txt"),
            "{:?}",
            report.notes
        );

        // The vocabulary read back carries the table: raw query words find their lemmas.
        let vocab = Vocabulary::read(&out.join(VOCAB_TABLE)).unwrap();
        assert_eq!(vocab.lemma_count(), 6);
        let (ids, unknown) = vocab.encode_text("A dog runs past a zebra");
        assert_eq!(unknown, ["past", "zebra"]);
        assert_eq!(
            vocab.decode(&ids),
            "a dog run <unk> a <unk>",
            "runs is read as run"
        );
        // A raw vocabulary has no table and does not know "runs" as "run".
        let raw_out = dir.path().join("raw");
        run_on_root(&KIND, &root, &[], &raw_out).unwrap();
        assert!(!raw_out.join(LEMMA_TABLE).exists());
        let raw_vocab = Vocabulary::read(&raw_out.join(VOCAB_TABLE)).unwrap();
        assert_eq!(raw_vocab.lemma_count(), 0);
        assert_eq!(raw_vocab.encode_text("runs").1, Vec::<String>::new());
        assert_eq!(raw_vocab.encode_text("run").1, ["run"]);
    }

    #[test]
    fn lemma_ties_go_to_the_alphabetically_first_lemma() {
        let caption = |image: &str, text: &str| flickr::CaptionLine {
            line: 1,
            image: image.to_string(),
            number: 0,
            text: text.to_string(),
        };
        let file = |captions| CaptionFile {
            path: PathBuf::from("f"),
            captions,
            skipped: Vec::new(),
        };
        let raw = file(vec![caption("a", "saw"), caption("b", "saw")]);
        let lemma = file(vec![caption("b", "see"), caption("a", "saw")]);
        let lemma_words = vec![words("see"), words("saw")];
        let table = LemmaTable::learn(
            raw.captions
                .iter()
                .map(|c| (c.image.as_str(), c.number, c.text.as_str())),
            lemma.captions.iter().map(|c| (c.image.as_str(), c.number)),
            &lemma_words,
        );
        assert_eq!(table.entries, [("saw".to_string(), "saw".to_string(), 1)]);
    }

    #[test]
    fn real_lemma_file_gives_a_table_of_common_lemmas() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("flickr");
        let train_list = fs::read_to_string(fixture("Flickr_8k.trainImages.txt")).unwrap();
        let tokens = fs::read_to_string(fixture("Flickr8k.token.txt")).unwrap();
        write_text_files(&root, &tokens, [&train_list, "", ""]);
        fs::copy(
            fixture(flickr::LEMMA_FILE),
            flickr::text_file(&root, flickr::LEMMA_FILE),
        )
        .unwrap();
        let out = dir.path().join("out");
        let variant = ("variant", ParamValue::Str("lemma".into()));
        let report = run_on_root(&KIND, &root, &[variant], &out).unwrap();
        let table = read_parquet(&out.join(LEMMA_TABLE));
        let words = strings(&table, "word");
        let lemmas = strings(&table, "lemma");
        let lemma_of = |word: &str| {
            let i = words.iter().position(|w| w == word).unwrap();
            lemmas[i].as_str()
        };
        assert_eq!(lemma_of("runs"), "run");
        assert_eq!(lemma_of("dogs"), "dog");
        assert_eq!(lemma_of("is"), "be");
        assert_eq!(lemma_of("'s"), "'s");
        println!(
            "real lemma file: {} table words, {:?}",
            words.len(),
            report.notes
        );
        let vocab = Vocabulary::read(&out.join(VOCAB_TABLE)).unwrap();
        let (_, unknown) = vocab.encode_text("Two dogs are running through the grass");
        assert!(unknown.is_empty(), "{unknown:?}");
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
                "root/Flickr8k_text/Flickr_8k.testImages.txt",
                "root/Flickr8k_text/Flickr8k.token.txt"
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
