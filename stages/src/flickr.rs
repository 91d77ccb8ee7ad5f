//! The Flickr8k folder layout that datasets follow (the demo generator writes it, the `captions`
//! and `images` stages read it), including the original's spelling of the image folder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::datasets::Location;
use crate::{InputRule, Params, Progress, StageError, StageInput};

/// Folder of images under a dataset root (sic: the real dataset spells it this way).
pub const IMAGE_DIR: &str = "Flicker8k_Dataset";
/// Folder of text files under a dataset root.
pub const TEXT_DIR: &str = "Flickr8k_text";
/// `<image>.jpg#<n>\t<caption>`, five captions per image.
pub const TOKEN_FILE: &str = "Flickr8k.token.txt";
/// The same captions, lemmatised.
pub const LEMMA_FILE: &str = "Flickr8k.lemma.token.txt";
/// The split lists: one image file name per line.
pub const SPLIT_FILES: [(&str, &str); 3] = [
    ("train", "Flickr_8k.trainImages.txt"),
    ("dev", "Flickr_8k.devImages.txt"),
    ("test", "Flickr_8k.testImages.txt"),
];

/// The upstream kind that produces a dataset folder in this layout.
pub const DATASET_KIND: &str = "demo_data";

/// Stages that read a dataset take it either from one upstream `demo_data` stage or from the
/// `root` param, so zero or one input.
pub const DATASET_INPUTS: InputRule = InputRule {
    kinds: &[DATASET_KIND],
    min: 0,
    max: 1,
};

/// The split of an image that no split list names.
pub const NO_SPLIT: &str = "none";

/// How many names a warning lists before it says "and N more".
const PREVIEW_NAMES: usize = 5;

/// The dataset folder a stage reads: the output of its upstream `demo_data` stage, or the `root`
/// param (relative to `base_dir`). Exactly one of the two must be given. The result is absolute,
/// so that paths written into tables and handed to the engine do not depend on the working
/// directory.
pub fn dataset_root(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<PathBuf, StageError> {
    let root = resolve_root(params, inputs, base_dir)?;
    if !root.is_dir() {
        return Err(StageError::file(&root, "dataset folder not found"));
    }
    Ok(root)
}

/// The dataset folder when it lies outside the artifact store (the `root` param), whose files
/// must then be content-hashed into the cache key; `None` when it is an upstream stage's output,
/// which its key already covers (and which may not exist yet while keys are being planned).
pub fn external_root(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Option<PathBuf>, StageError> {
    if inputs.is_empty() {
        dataset_root(params, inputs, base_dir).map(Some)
    } else {
        resolve_root(params, inputs, base_dir).map(|_| None)
    }
}

/// `dataset_root` without the check that the folder exists: the folder the `images` table's file
/// names are relative to (`StageKind::files_root` of the kinds that read a dataset).
pub fn resolve_root(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<PathBuf, StageError> {
    let root_param = params.opt_str("root");
    let root = match (root_param, inputs) {
        (Some(_), [_, ..]) => {
            return Err(StageError::Param {
                name: "root".to_string(),
                message: format!(
                    "is set and the stage also has an upstream input `{}`: give one or the other",
                    inputs[0].name
                ),
            })
        }
        (None, []) => {
            return Err(StageError::Param {
                name: "root".to_string(),
                message: format!(
                    "is not set and the stage has no upstream `{DATASET_KIND}` input: \
                     give a dataset folder or an input"
                ),
            })
        }
        (Some(root), []) => {
            if root.trim().is_empty() {
                return Err(StageError::Param {
                    name: "root".to_string(),
                    message: "is empty: give the dataset folder".to_string(),
                });
            }
            base_dir.join(root)
        }
        (None, [input]) => {
            if input.kind != DATASET_KIND {
                return Err(StageError::Input(format!(
                    "`{}` is of kind `{}`, expected `{DATASET_KIND}`",
                    input.name, input.kind
                )));
            }
            input.dir.clone()
        }
        (None, _) => {
            return Err(StageError::Input(format!(
                "{} upstream inputs given, expected at most one `{DATASET_KIND}` stage",
                inputs.len()
            )))
        }
    };
    std::path::absolute(&root)
        .map(|root| normalise(&root))
        .map_err(|e| StageError::io(&root, e))
}

/// `path` without `.` components and with each `..` taking off the name before it (by the
/// text, not following links), so `root/./train2014`, `root/x/../train2014` and
/// `root/train2014` are one folder, and a folder named by climbing out of the dataset folder is
/// seen to lie outside it.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The folder of images under a dataset root.
pub fn image_dir(root: &Path) -> PathBuf {
    root.join(IMAGE_DIR)
}

/// A file of the text folder under a dataset root (`TOKEN_FILE`, a split list, ...).
pub fn text_file(root: &Path, name: &str) -> PathBuf {
    root.join(TEXT_DIR).join(name)
}

/// The three split lists under a dataset root, in `SPLIT_FILES` order.
pub fn split_paths(root: &Path) -> Vec<PathBuf> {
    SPLIT_FILES
        .iter()
        .map(|(_, file)| text_file(root, file))
        .collect()
}

/// Reads a whole text file as UTF-8 without a byte-order mark. A missing file is an error that
/// says so plainly; invalid UTF-8 is an error naming the line.
pub fn read_text(path: &Path) -> Result<String, StageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StageError::file(path, "file not found"))
        }
        Err(e) => return Err(StageError::io(path, e)),
    };
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        StageError::Parse {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "not valid UTF-8".to_string(),
        }
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// The lines of `text` with 1-based line numbers, line endings (`\n` or `\r\n`) removed.
pub fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
}

/// The file name of `path` for messages and tables (the whole path if it has none).
pub fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Up to five names joined by commas, with "and N more" when `total` is larger: warnings name a
/// few examples without flooding the terminal.
pub fn preview_names<S: AsRef<str>>(names: &[S], total: usize) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(PREVIEW_NAMES)
        .map(|name| name.as_ref())
        .collect();
    let mut text = shown.join(", ");
    if total > shown.len() {
        text.push_str(&format!(" and {} more", total - shown.len()));
    }
    text
}

/// Which split each image belongs to, read from the three split lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Splits {
    by_image: HashMap<String, &'static str>,
}

impl Splits {
    /// Reads the split lists under `root`. Every list must exist; blank lines and CRLF endings
    /// are fine; an image named in two different lists is an error naming the second file and
    /// line (an image repeated within one list is harmless and kept once).
    pub fn read(root: &Path) -> Result<Self, StageError> {
        // Where each image was first listed, to name both places in the error.
        let mut first_seen: HashMap<String, (&'static str, &'static str, usize)> = HashMap::new();
        for (split, file) in SPLIT_FILES {
            let path = text_file(root, file);
            let text = read_text(&path)?;
            for (line_no, line) in numbered_lines(&text) {
                let name = line.trim();
                if name.is_empty() {
                    continue;
                }
                match first_seen.get(name) {
                    Some((earlier_split, _, _)) if *earlier_split == split => {}
                    Some((earlier_split, earlier_file, earlier_line)) => {
                        return Err(StageError::Parse {
                            path,
                            line: line_no,
                            message: format!(
                                "`{name}` is already in the {earlier_split} split \
                                 ({earlier_file} line {earlier_line})"
                            ),
                        });
                    }
                    None => {
                        first_seen.insert(name.to_string(), (split, file, line_no));
                    }
                }
            }
        }
        let by_image = first_seen
            .into_iter()
            .map(|(name, (split, _, _))| (name, split))
            .collect();
        Ok(Splits { by_image })
    }

    /// `train`, `dev`, `test`, or `NO_SPLIT` for an image no list names.
    pub fn split_of(&self, image: &str) -> &'static str {
        self.by_image.get(image).copied().unwrap_or(NO_SPLIT)
    }

    /// Every listed image, in no particular order.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.by_image.keys().map(String::as_str)
    }

    /// How many images `split` lists.
    pub fn count(&self, split: &str) -> usize {
        self.by_image.values().filter(|&&s| s == split).count()
    }

    pub fn len(&self) -> usize {
        self.by_image.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_image.is_empty()
    }
}

/// One valid line of a caption file: `<image>#<number>\t<text>`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The image's file name, exactly as written (even a name like `x.jpg.1`).
    pub image: String,
    /// The `<n>` of `#<n>`.
    pub number: u32,
    /// The caption as written, surrounding whitespace trimmed.
    pub text: String,
}

/// Why a caption line (or a caption entry of a JSON dataset) was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    NoTab,
    BadNumber,
    NoImage,
    EmptyCaption,
    Duplicate,
    /// The caption has no word (only punctuation, symbols or emoji); found by the tokenizer.
    NoWords,
    /// A COCO annotation whose `image_id` no image of its file has.
    UnknownImage,
}

impl SkipReason {
    /// A short, stable name for tables.
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::NoTab => "no tab",
            SkipReason::BadNumber => "bad caption number",
            SkipReason::NoImage => "no image name",
            SkipReason::EmptyCaption => "empty caption",
            SkipReason::Duplicate => "duplicate",
            SkipReason::NoWords => "no words",
            SkipReason::UnknownImage => "unknown image id",
        }
    }

    /// How a warning describes lines skipped for this reason ("2 without a tab").
    pub(crate) fn described(self) -> &'static str {
        match self {
            SkipReason::NoTab => "without a tab",
            SkipReason::BadNumber => "without a #<n> caption number",
            SkipReason::NoImage => "without an image name",
            SkipReason::EmptyCaption => "with an empty caption",
            SkipReason::Duplicate => "repeating an earlier image and caption number",
            SkipReason::NoWords => "without a word (only punctuation, symbols or emoji)",
            SkipReason::UnknownImage => "naming an image id no image has",
        }
    }
}

/// A caption line that was skipped, kept so the user can find and fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedLine {
    pub line: usize,
    pub reason: SkipReason,
    /// The whole line as written (line ending removed).
    pub text: String,
}

/// A parsed caption file: valid lines in file order, and the lines that were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionFile {
    pub path: PathBuf,
    pub captions: Vec<CaptionLine>,
    pub skipped: Vec<SkippedLine>,
}

/// How many lines the parser handles between progress updates (updates are not free).
const PROGRESS_STEP: u64 = 4096;

/// Reads a caption file (`Flickr8k.token.txt` or the lemma variant). Blank lines are skipped
/// silently; malformed and duplicate lines are skipped and recorded. A file without a single
/// valid caption is an error, since every later stage would be empty.
pub fn read_caption_file(path: &Path, progress: &dyn Progress) -> Result<CaptionFile, StageError> {
    let text = read_text(path)?;
    let line_count = text.lines().count() as u64;
    progress.start(line_count, &format!("parsing {}", file_label(path)));
    let mut captions = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    let mut since_update = 0;
    for (line_no, line) in numbered_lines(&text) {
        since_update += 1;
        if since_update == PROGRESS_STEP {
            progress.inc(since_update);
            since_update = 0;
        }
        if line.trim().is_empty() {
            continue;
        }
        let skip = |reason| SkippedLine {
            line: line_no,
            reason,
            text: line.to_string(),
        };
        let Some((key, caption)) = line.split_once('\t') else {
            skipped.push(skip(SkipReason::NoTab));
            continue;
        };
        let Some((image, number)) = key.trim().rsplit_once('#') else {
            skipped.push(skip(SkipReason::BadNumber));
            continue;
        };
        let Ok(number) = number.parse::<u32>() else {
            skipped.push(skip(SkipReason::BadNumber));
            continue;
        };
        let image = image.trim();
        if image.is_empty() {
            skipped.push(skip(SkipReason::NoImage));
            continue;
        }
        let caption = caption.trim();
        if caption.is_empty() {
            skipped.push(skip(SkipReason::EmptyCaption));
            continue;
        }
        if !seen.insert((image.to_string(), number)) {
            skipped.push(skip(SkipReason::Duplicate));
            continue;
        }
        captions.push(CaptionLine {
            line: line_no,
            image: image.to_string(),
            number,
            text: caption.to_string(),
        });
    }
    progress.inc(since_update);
    if captions.is_empty() {
        let message = if skipped.is_empty() {
            "no caption lines: the file is empty".to_string()
        } else {
            format!(
                "no valid caption lines ({} malformed lines skipped; expected `<image>#<n>\\t<caption>`)",
                skipped.len()
            )
        };
        return Err(StageError::file(path, message));
    }
    Ok(CaptionFile {
        path: path.to_path_buf(),
        captions,
        skipped,
    })
}

impl CaptionFile {
    /// The file's name, for messages and the `skipped` table.
    pub fn label(&self) -> String {
        file_label(&self.path)
    }

    /// Distinct image names in order of first appearance.
    pub fn image_names(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.captions
            .iter()
            .map(|caption| caption.image.as_str())
            .filter(|image| seen.insert(*image))
            .collect()
    }

    /// One warning line summarising the skipped lines, e.g. `Flickr8k.token.txt: skipped 3
    /// lines: 2 without a tab (first at line 12), 1 with an empty caption (line 40)`; `None` if
    /// nothing was skipped.
    pub fn skip_summary(&self) -> Option<String> {
        let locations: Vec<(SkipReason, Location)> = self
            .skipped
            .iter()
            .map(|s| (s.reason, Location::Line(s.line)))
            .collect();
        crate::datasets::skip_summary(
            &self.label(),
            locations.iter().map(|(reason, at)| (*reason, at)),
        )
    }
}

/// Helpers the stage tests share: writing a small dataset, running a kind, reading tables back.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;

    use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
    use arrow::datatypes::{UInt32Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::{NoProgress, ParamValue, StageKind, StageReport};

    /// Writes a dataset's text folder: the caption file and the three split lists (each given as
    /// its whole text).
    pub fn write_text_files(root: &Path, captions: &str, splits: [&str; 3]) {
        fs::create_dir_all(root.join(TEXT_DIR)).unwrap();
        fs::create_dir_all(root.join(IMAGE_DIR)).unwrap();
        fs::write(text_file(root, TOKEN_FILE), captions).unwrap();
        for ((_, file), text) in SPLIT_FILES.iter().zip(splits) {
            fs::write(text_file(root, file), text).unwrap();
        }
    }

    /// Runs `kind` on the dataset at `root` (given as the `root` param, relative to its parent)
    /// with `overrides` on top of the defaults, writing into `out_dir`.
    pub fn run_on_root(
        kind: &StageKind,
        root: &Path,
        overrides: &[(&str, ParamValue)],
        out_dir: &Path,
    ) -> Result<StageReport, StageError> {
        let mut given: BTreeMap<String, ParamValue> = overrides
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        let base_dir = root.parent().unwrap();
        let relative_root = root.file_name().unwrap().to_str().unwrap().to_string();
        given.insert("root".to_string(), ParamValue::Str(relative_root));
        let params = Params::with_defaults(kind.params, given);
        fs::create_dir_all(out_dir).unwrap();
        let job = crate::StageJob::new(kind.name, "test", params, Vec::new(), base_dir, out_dir);
        let ctx = crate::StageContext::new(&job, &NoProgress);
        (kind.run)(&ctx)
    }

    /// Reads a Parquet file back as one batch.
    pub fn read_parquet(path: &Path) -> RecordBatch {
        let file = fs::File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let schema = reader.schema();
        let batches: Vec<RecordBatch> = reader.map(|batch| batch.unwrap()).collect();
        arrow::compute::concat_batches(&schema, &batches).unwrap()
    }

    /// The names of a batch's columns, in order.
    pub fn column_names(batch: &RecordBatch) -> Vec<String> {
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    pub fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
        let array = batch.column_by_name(column).unwrap().as_string::<i32>();
        assert_eq!(array.null_count(), 0, "{column} has nulls");
        array.iter().map(|v| v.unwrap().to_string()).collect()
    }

    pub fn u32s(batch: &RecordBatch, column: &str) -> Vec<u32> {
        let array = batch.column_by_name(column).unwrap();
        array.as_primitive::<UInt32Type>().values().to_vec()
    }

    pub fn u64s(batch: &RecordBatch, column: &str) -> Vec<u64> {
        let array = batch.column_by_name(column).unwrap();
        array.as_primitive::<UInt64Type>().values().to_vec()
    }

    pub fn u32_lists(batch: &RecordBatch, column: &str) -> Vec<Vec<u32>> {
        let list = batch.column_by_name(column).unwrap().as_list::<i32>();
        list.iter()
            .map(|item| item.unwrap().as_primitive::<UInt32Type>().values().to_vec())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use super::*;
    use crate::{Effect, NoProgress, ParamDefault, ParamSpec, ParamType, ParamValue};

    const ROOT_PARAM: &[ParamSpec] = &[ParamSpec {
        name: "root",
        ty: ParamType::Str,
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "",
    }];

    fn params(root: Option<&str>) -> Params {
        let mut given = BTreeMap::new();
        if let Some(root) = root {
            given.insert("root".to_string(), ParamValue::Str(root.to_string()));
        }
        Params::with_defaults(ROOT_PARAM, given)
    }

    fn input(kind: &str, dir: &Path) -> StageInput {
        StageInput {
            name: "data".to_string(),
            kind: kind.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn root_param_resolves_against_base_dir() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("flickr")).unwrap();
        let root = dataset_root(&params(Some("flickr")), &[], base.path()).unwrap();
        assert_eq!(root, base.path().join("flickr"));
        assert!(root.is_absolute());
    }

    #[test]
    fn upstream_input_gives_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = [input(DATASET_KIND, dir.path())];
        let root = dataset_root(&params(None), &inputs, Path::new("/nonexistent")).unwrap();
        assert_eq!(root, dir.path());
    }

    #[test]
    fn root_needs_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let neither = dataset_root(&params(None), &[], dir.path()).unwrap_err();
        assert!(
            matches!(&neither, StageError::Param { name, message } if name == "root" && message.contains("not set")),
            "{neither}"
        );
        let inputs = [input(DATASET_KIND, dir.path())];
        let both = dataset_root(&params(Some(".")), &inputs, dir.path()).unwrap_err();
        assert!(both.to_string().contains("one or the other"), "{both}");
        let wrong_kind = [input("images", dir.path())];
        let err = dataset_root(&params(None), &wrong_kind, dir.path()).unwrap_err();
        assert!(matches!(err, StageError::Input(_)), "{err}");
        let missing = dataset_root(&params(Some("nope")), &[], dir.path()).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    fn write_splits(root: &Path, train: &str, dev: &str, test: &str) {
        fs::create_dir_all(root.join(TEXT_DIR)).unwrap();
        for ((_, file), text) in SPLIT_FILES.iter().zip([train, dev, test]) {
            fs::write(text_file(root, file), text).unwrap();
        }
    }

    #[test]
    fn split_lists_tolerate_crlf_blank_lines_and_no_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        write_splits(dir.path(), "a.jpg\r\n\r\nb.jpg\r\nb.jpg", "\n c.jpg \n", "");
        let splits = Splits::read(dir.path()).unwrap();
        assert_eq!(splits.len(), 3);
        assert_eq!(splits.split_of("a.jpg"), "train");
        assert_eq!(splits.split_of("b.jpg"), "train");
        assert_eq!(splits.split_of("c.jpg"), "dev");
        assert_eq!(splits.split_of("d.jpg"), NO_SPLIT);
        assert_eq!(splits.count("train"), 2);
        assert_eq!(splits.count("test"), 0);
    }

    #[test]
    fn image_in_two_splits_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write_splits(dir.path(), "a.jpg\nb.jpg\n", "c.jpg\n", "x.jpg\n\nb.jpg\n");
        let err = Splits::read(dir.path()).unwrap_err();
        match &err {
            StageError::Parse {
                path,
                line,
                message,
            } => {
                assert!(path.ends_with("Flickr_8k.testImages.txt"));
                assert_eq!(*line, 3);
                assert!(
                    message.contains("b.jpg") && message.contains("train"),
                    "{message}"
                );
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn missing_split_list_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_splits(dir.path(), "a.jpg\n", "", "");
        fs::remove_file(text_file(dir.path(), "Flickr_8k.devImages.txt")).unwrap();
        let err = Splits::read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StageError::File { path, .. } if path.ends_with("Flickr_8k.devImages.txt"))
        );
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn caption_parser_records_each_kind_of_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let text = "\u{feff}a.jpg#0\tA dog .\r\n\
                    \r\n\
                    a.jpg#1 no tab here\r\n\
                    a.jpg#x\tbad number\r\n\
                    a.jpg\tno number\r\n\
                    #2\tno image\r\n\
                    a.jpg#3\t   \r\n\
                    a.jpg#0\tduplicate\r\n\
                    b.jpg.1#4\tkept as named";
        fs::write(&path, text).unwrap();
        let file = read_caption_file(&path, &NoProgress).unwrap();
        let kept: Vec<(usize, &str, u32, &str)> = file
            .captions
            .iter()
            .map(|c| (c.line, c.image.as_str(), c.number, c.text.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                (1, "a.jpg", 0, "A dog ."),
                (9, "b.jpg.1", 4, "kept as named")
            ]
        );
        let skipped: Vec<(usize, SkipReason)> =
            file.skipped.iter().map(|s| (s.line, s.reason)).collect();
        assert_eq!(
            skipped,
            [
                (3, SkipReason::NoTab),
                (4, SkipReason::BadNumber),
                (5, SkipReason::BadNumber),
                (6, SkipReason::NoImage),
                (7, SkipReason::EmptyCaption),
                (8, SkipReason::Duplicate),
            ]
        );
        assert_eq!(file.skipped[0].text, "a.jpg#1 no tab here");
        assert_eq!(file.image_names(), ["a.jpg", "b.jpg.1"]);
        assert_eq!(
            file.skip_summary().unwrap(),
            "Flickr8k.token.txt: skipped 6 lines: 1 without a tab (line 3), \
             2 without a #<n> caption number (first at line 4), 1 without an image name (line 6), \
             1 with an empty caption (line 7), 1 repeating an earlier image and caption number (line 8)"
        );
    }

    #[test]
    fn caption_file_without_valid_lines_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        fs::write(&path, "").unwrap();
        let err = read_caption_file(&path, &NoProgress).unwrap_err();
        assert!(err.to_string().contains(TOKEN_FILE), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        fs::write(&path, "no tab\n\n").unwrap();
        let err = read_caption_file(&path, &NoProgress).unwrap_err();
        assert!(err.to_string().contains("no valid caption lines"), "{err}");
        let missing = read_caption_file(&dir.path().join("gone.txt"), &NoProgress).unwrap_err();
        assert!(missing.to_string().contains("gone.txt"), "{missing}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        fs::write(&path, b"ok\nalso ok\nbad \xff here\n").unwrap();
        match read_text(&path).unwrap_err() {
            StageError::Parse { line, .. } => assert_eq!(line, 3),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn preview_names_lists_five_then_counts_the_rest() {
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(preview_names(&names, 7), "a, b, c, d, e and 2 more");
        assert_eq!(preview_names(&names[..2], 2), "a, b");
        assert_eq!(preview_names(&names[..2], 4), "a, b and 2 more");
    }
}
