//! The caption datasets a dataset folder can hold, read into one form: the `captions` and
//! `images` stages ask this module for the captions, the split of every image and the folders
//! its images are in, and never see which format the folder uses.
//!
//! - `flickr8k`: captions in `Flickr8k_text/Flickr8k.token.txt` (or the lemma file), split by the
//!   three `Flickr_8k.*Images.txt` lists, images in `Flicker8k_Dataset/`. Flickr30k's
//!   `results_20130124.token` has the same lines but no split lists: it is split by a seeded
//!   shuffle (`dev_fraction`, `test_fraction`, `seed`), images in `flickr30k-images/`.
//! - `karpathy`: one `dataset_*.json` (`images[].sentences[].raw`, `images[].split` with `val` →
//!   dev and `restval` → the `restval` param), images in `images/<filepath>/`.
//! - `coco`: `annotations/captions_<set>.json`, split by the set's name (`train…` → train,
//!   `val…` → dev, `test…` → test), images in `<set>/`.
//!
//! A Karpathy file named by the `karpathy` param replaces the split of the other two formats
//! (its `filename`s matched to their image names): the usual "Karpathy split" of COCO and
//! Flickr30k. The `image_dir` param replaces the default image folder of each format; Karpathy's
//! `filepath` and COCO's set name a folder inside it.

pub mod coco;
pub mod json;
pub mod karpathy;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::flickr::{self, SkipReason, Splits, NO_SPLIT};
use crate::{
    Effect, ParamDefault, ParamSpec, ParamType, Params, PathKind, Progress, Source, StageError,
    StageInput,
};

/// Flickr30k's caption file: Flickr8k's line format, no split lists.
pub const FLICKR30K_TOKEN_FILE: &str = "results_20130124.token";
/// Flickr30k's image folder, as its archive unpacks.
pub const FLICKR30K_IMAGE_DIR: &str = "flickr30k-images";
/// Where the images of a Karpathy file are looked for, unless `image_dir` says otherwise.
pub const KARPATHY_IMAGE_DIR: &str = "images";
/// The folder of COCO's annotation files under a dataset root, as COCO ships them.
pub const COCO_ANNOTATION_DIR: &str = "annotations";
/// How Karpathy's split files are named: `dataset_<name>.json`.
pub const KARPATHY_PREFIX: &str = "dataset_";

/// The formats a dataset folder can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Flickr8k's text files (and Flickr30k's token file, which has the same lines).
    Flickr8k,
    /// One of Karpathy's split files.
    Karpathy,
    /// COCO's caption annotation files.
    Coco,
}

impl Format {
    pub const NAMES: [&'static str; 3] = ["flickr8k", "karpathy", "coco"];

    pub fn name(self) -> &'static str {
        match self {
            Format::Flickr8k => "flickr8k",
            Format::Karpathy => "karpathy",
            Format::Coco => "coco",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        [Format::Flickr8k, Format::Karpathy, Format::Coco]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The params both dataset stages take, declared once. Each changes what is read or how it is
/// split, so each enters the key; `karpathy` by the content of the file it names.
pub mod params {
    use super::*;

    pub const FORMAT: ParamSpec = ParamSpec {
        name: "format",
        ty: ParamType::Choice(&Format::NAMES),
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "Dataset format: flickr8k (Flickr8k_text/ or Flickr30k's results_20130124.token), \
               karpathy (a dataset_*.json split file) or coco (annotations/captions_*.json); \
               unset: detected from what the folder holds",
    };
    pub const KARPATHY: ParamSpec = ParamSpec {
        name: "karpathy",
        ty: ParamType::Path {
            what: PathKind::File,
            words: &[],
        },
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "A Karpathy split file (dataset_*.json): with format coco or flickr8k it gives the \
               splits (matched by file name); with format karpathy it is the file to read; \
               unset: the format's own splits",
    };
    pub const RESTVAL: ParamSpec = ParamSpec {
        name: "restval",
        ty: ParamType::Choice(&["train", "dev"]),
        default: ParamDefault::Str("train"),
        effect: Effect::Output,
        help: "The split of the images a Karpathy file marks restval",
    };
    pub const DEV_FRACTION: ParamSpec = ParamSpec {
        name: "dev_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.15),
        effect: Effect::Output,
        help: "Fraction of the images in the dev split when a token file has no split lists \
               (Flickr30k) and no Karpathy file is given (rounded to whole images)",
    };
    pub const TEST_FRACTION: ParamSpec = ParamSpec {
        name: "test_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.15),
        effect: Effect::Output,
        help: "Fraction of the images in the test split when a token file has no split lists \
               (rounded to whole images)",
    };
    pub const SEED: ParamSpec = ParamSpec::seed(
        0,
        "Seed of the split of a token file without split lists: the same seed gives the same split",
    );
    pub const IMAGE_DIR: ParamSpec = ParamSpec {
        name: "image_dir",
        ty: ParamType::Str,
        default: ParamDefault::Unset,
        effect: Effect::Output,
        help: "Folder of the images, relative to the dataset folder; Karpathy's filepath and \
               COCO's set (train2014) name a folder inside it. Unset: Flicker8k_Dataset, \
               flickr30k-images (Flickr30k), images (karpathy) or the dataset folder itself (coco)",
    };
}

/// How to read a dataset folder, from a stage's params.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `None`: detect it.
    pub format: Option<Format>,
    /// Read Flickr8k's lemmatised captions instead of the raw ones.
    pub lemma: bool,
    /// A Karpathy file named by the `karpathy` param (absolute).
    pub karpathy: Option<PathBuf>,
    pub restval: &'static str,
    pub dev_fraction: f64,
    pub test_fraction: f64,
    pub seed: u64,
    pub image_dir: Option<String>,
}

impl Options {
    /// The options of a stage's params; params a stage does not declare take their defaults
    /// (the `images` stage has no `variant`: it reads the raw captions only to know the images
    /// they name). `base_dir` is the folder a relative `karpathy` path is relative to.
    pub fn from_params(params: &Params, base_dir: &Path) -> Result<Options, StageError> {
        let format = match params.opt_str("format") {
            None => None,
            Some(name) => Some(Format::from_name(name).ok_or_else(|| StageError::Param {
                name: "format".into(),
                message: format!("{name:?} is not one of {}", Format::NAMES.join(", ")),
            })?),
        };
        let lemma = match params.opt_str("variant").unwrap_or("raw") {
            "raw" => false,
            "lemma" => true,
            other => {
                return Err(StageError::Param {
                    name: "variant".into(),
                    message: format!("{other:?} is not one of raw, lemma"),
                })
            }
        };
        let karpathy = match params.opt_str("karpathy") {
            None => None,
            Some(path) => {
                let path = base_dir.join(path);
                Some(std::path::absolute(&path).map_err(|e| StageError::io(&path, e))?)
            }
        };
        let restval = match params.opt_str("restval").unwrap_or("train") {
            "train" => "train",
            "dev" => "dev",
            other => {
                return Err(StageError::Param {
                    name: "restval".into(),
                    message: format!("{other:?} is not one of train, dev"),
                })
            }
        };
        let fraction = |spec: &ParamSpec| -> Result<f64, StageError> {
            let value = match params.get(spec.name) {
                None => match spec.default {
                    ParamDefault::Float(v) => v,
                    _ => 0.0,
                },
                Some(_) => params.float(spec.name)?,
            };
            // Checked again: `run` may be given params that never went through the engine.
            spec.ty
                .check(&crate::RawValue::Float(value))
                .map_err(|message| StageError::Param {
                    name: spec.name.into(),
                    message,
                })?;
            Ok(value)
        };
        let seed = match params.get("seed") {
            None => 0,
            Some(_) => {
                let seed = params.int("seed")?;
                u64::try_from(seed).map_err(|_| StageError::Param {
                    name: "seed".into(),
                    message: format!("{seed} is out of range: expected integer >= 0"),
                })?
            }
        };
        let image_dir = params
            .opt_str("image_dir")
            .map(str::trim)
            .filter(|dir| !dir.is_empty())
            .map(str::to_string);
        Ok(Options {
            format,
            lemma,
            karpathy,
            restval,
            dev_fraction: fraction(&params::DEV_FRACTION)?,
            test_fraction: fraction(&params::TEST_FRACTION)?,
            seed,
            image_dir,
        })
    }
}

/// The files a dataset stage reads, as cache-key sources: with `images`, first the image files of
/// every image folder (the listing `images::list_image_files` gives), then the text files. A
/// dataset that is an upstream stage's output is covered by that stage's key and lists nothing
/// (it may not exist yet while keys are planned); a Karpathy file the `karpathy` param names is
/// listed either way.
pub fn stage_sources(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
    images: bool,
) -> Result<Vec<Source>, StageError> {
    let options = Options::from_params(params, base_dir)?;
    let Some(root) = flickr::external_root(params, inputs, base_dir)? else {
        return Ok(options
            .karpathy
            .map(|path| Source::param_file("karpathy", path))
            .into_iter()
            .collect());
    };
    let layout = Layout::resolve(&root, &options)?;
    let mut sources = Vec::new();
    if images {
        for folder in layout.image_folders(&options)? {
            let files = crate::images::list_image_files(&folder)?.files;
            sources.extend(
                files
                    .into_iter()
                    .map(|path| Source::in_param_folder("root", &root, path)),
            );
        }
    }
    sources.extend(layout.sources());
    Ok(sources)
}

/// Where a dataset's captions come from.
#[derive(Debug, Clone, PartialEq)]
enum CaptionSource {
    /// A file of `<image>#<n>\t<caption>` lines.
    TokenFile(PathBuf),
    Karpathy(PathBuf),
    /// COCO annotation files, sorted by name.
    Coco(Vec<PathBuf>),
}

/// Where a dataset's splits come from.
#[derive(Debug, Clone, PartialEq)]
enum SplitSource {
    /// Flickr8k's three split lists.
    Lists,
    /// The `split` of a Karpathy file other than the captions' source.
    Karpathy(PathBuf),
    /// The captions' own source: a Karpathy file's `split`, a COCO file's set.
    Own,
    /// A seeded shuffle by fractions: a token file that comes without split lists.
    Seeded,
}

/// What a dataset folder holds and how it will be read, decided from file names alone (cheap
/// enough for planning: nothing is parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub format: Format,
    /// Whether `format` was detected rather than given.
    pub detected: bool,
    root: PathBuf,
    captions: CaptionSource,
    split: SplitSource,
    /// The folder images are in, or in subfolders of (absolute).
    image_dir: PathBuf,
    /// The file the `karpathy` param names, if any.
    karpathy_param: Option<PathBuf>,
}

/// What format detection looks for, for its messages.
const LOOKED_FOR: &str = "Flickr8k_text/ or results_20130124.token (flickr8k), dataset_*.json \
                          (karpathy), annotations/captions_*.json (coco)";

/// The files directly in `dir` whose names start with `prefix` and end with `suffix`, sorted;
/// none if `dir` is not a folder.
fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<PathBuf>, StageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(_) if !dir.is_dir() => return Ok(Vec::new()),
        Err(e) => return Err(StageError::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| StageError::io(dir, e))?.path();
        let matches = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.len() > prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
        });
        if matches && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Which formats `root` holds, each with what was found (for messages).
fn formats_found(root: &Path) -> Result<Vec<(Format, String)>, StageError> {
    let mut found = Vec::new();
    if root.join(flickr::TEXT_DIR).is_dir() {
        found.push((Format::Flickr8k, format!("{}/", flickr::TEXT_DIR)));
    } else if root.join(FLICKR30K_TOKEN_FILE).is_file() {
        found.push((Format::Flickr8k, FLICKR30K_TOKEN_FILE.to_string()));
    }
    let karpathy = files_named(root, KARPATHY_PREFIX, ".json")?;
    if !karpathy.is_empty() {
        let names: Vec<String> = karpathy.iter().map(|p| flickr::file_label(p)).collect();
        found.push((Format::Karpathy, names.join(", ")));
    }
    let annotations = root.join(COCO_ANNOTATION_DIR);
    let coco = files_named(&annotations, coco::FILE_PREFIX, coco::FILE_SUFFIX)?;
    if !coco.is_empty() {
        let names: Vec<String> = coco
            .iter()
            .map(|p| format!("{COCO_ANNOTATION_DIR}/{}", flickr::file_label(p)))
            .collect();
        found.push((Format::Coco, names.join(", ")));
    }
    Ok(found)
}

/// The format of the dataset at `root`: the one format it holds. A Karpathy file named by the
/// `karpathy` param counts only when the folder holds no other format (it is then the dataset,
/// otherwise the split of the other one).
///
/// Errors (`File`, naming the root): no format found (the message lists what was looked for),
/// or more than one (the message lists what was found and asks for the `format` param).
pub fn detect(root: &Path, karpathy_param: bool) -> Result<Format, StageError> {
    let mut found = formats_found(root)?;
    if karpathy_param && found.iter().any(|(f, _)| *f != Format::Karpathy) {
        found.retain(|(f, _)| *f != Format::Karpathy);
    }
    match found[..] {
        [(format, _)] => Ok(format),
        [] if karpathy_param => Ok(Format::Karpathy),
        [] => Err(StageError::file(
            root,
            format!("no caption dataset found: looked for {LOOKED_FOR}"),
        )),
        _ => {
            let what: Vec<String> = found
                .iter()
                .map(|(format, files)| format!("{format} ({files})"))
                .collect();
            Err(StageError::file(
                root,
                format!(
                    "holds more than one dataset format: {}; set the param `format` to the one \
                     to read",
                    what.join(", ")
                ),
            ))
        }
    }
}

/// The error for `variant = "lemma"` on a dataset whose captions are in `name`.
fn no_lemmas(name: &str) -> StageError {
    StageError::Param {
        name: "variant".into(),
        message: format!(
            "lemma captions exist only in Flickr8k's {}/{}, not in {name}",
            flickr::TEXT_DIR,
            flickr::LEMMA_FILE
        ),
    }
}

impl Layout {
    /// Decides how to read the dataset at `root` (which must exist) from its file names and the
    /// options. Errors: the format cannot be detected (see `detect`); the files the format needs
    /// are not there (`File`, naming what was looked for); `variant = "lemma"` for a dataset
    /// without lemmas (`Param`).
    pub fn resolve(root: &Path, options: &Options) -> Result<Layout, StageError> {
        let (format, detected) = match options.format {
            Some(format) => (format, false),
            None => (detect(root, options.karpathy.is_some())?, true),
        };
        let karpathy_split = options.karpathy.clone().map(SplitSource::Karpathy);
        let (captions, split, default_image_dir) = match format {
            Format::Flickr8k => {
                let flickr30k = root.join(FLICKR30K_TOKEN_FILE);
                if root.join(flickr::TEXT_DIR).is_dir() {
                    let file = if options.lemma {
                        flickr::LEMMA_FILE
                    } else {
                        flickr::TOKEN_FILE
                    };
                    (
                        CaptionSource::TokenFile(flickr::text_file(root, file)),
                        karpathy_split.unwrap_or(SplitSource::Lists),
                        flickr::IMAGE_DIR,
                    )
                } else if flickr30k.is_file() {
                    if options.lemma {
                        return Err(no_lemmas(FLICKR30K_TOKEN_FILE));
                    }
                    (
                        CaptionSource::TokenFile(flickr30k),
                        karpathy_split.unwrap_or(SplitSource::Seeded),
                        FLICKR30K_IMAGE_DIR,
                    )
                } else {
                    return Err(StageError::file(
                        root,
                        format!(
                            "no flickr8k caption file: looked for {}/{} and {FLICKR30K_TOKEN_FILE}",
                            flickr::TEXT_DIR,
                            flickr::TOKEN_FILE
                        ),
                    ));
                }
            }
            Format::Karpathy => {
                let file = match &options.karpathy {
                    Some(file) => file.clone(),
                    None => {
                        let found = files_named(root, KARPATHY_PREFIX, ".json")?;
                        match &found[..] {
                            [file] => file.clone(),
                            [] => {
                                return Err(StageError::file(
                                    root,
                                    "no Karpathy split file: looked for dataset_*.json",
                                ))
                            }
                            _ => {
                                let names: Vec<String> =
                                    found.iter().map(|p| flickr::file_label(p)).collect();
                                return Err(StageError::file(
                                    root,
                                    format!(
                                        "holds several Karpathy split files ({}): set the param \
                                         `karpathy` to the one to read",
                                        names.join(", ")
                                    ),
                                ));
                            }
                        }
                    }
                };
                if options.lemma {
                    return Err(no_lemmas(&flickr::file_label(&file)));
                }
                (
                    CaptionSource::Karpathy(file),
                    SplitSource::Own,
                    KARPATHY_IMAGE_DIR,
                )
            }
            Format::Coco => {
                let dir = root.join(COCO_ANNOTATION_DIR);
                let files = files_named(&dir, coco::FILE_PREFIX, coco::FILE_SUFFIX)?;
                if files.is_empty() {
                    return Err(StageError::file(
                        &dir,
                        "no COCO caption annotations: looked for captions_*.json",
                    ));
                }
                if options.lemma {
                    return Err(no_lemmas("COCO's captions_*.json"));
                }
                (
                    CaptionSource::Coco(files),
                    karpathy_split.unwrap_or(SplitSource::Own),
                    ".",
                )
            }
        };
        let image_dir = root.join(options.image_dir.as_deref().unwrap_or(default_image_dir));
        Ok(Layout {
            format,
            detected,
            root: root.to_path_buf(),
            captions,
            split,
            image_dir: flickr::normalise(&image_dir),
            karpathy_param: options.karpathy.clone(),
        })
    }

    /// The text files this layout reads, captions first, as cache-key sources: files in the
    /// dataset folder by their path in it, the file the `karpathy` param names by that param.
    pub fn sources(&self) -> Vec<Source> {
        let mut files: Vec<PathBuf> = match &self.captions {
            CaptionSource::TokenFile(path) | CaptionSource::Karpathy(path) => vec![path.clone()],
            CaptionSource::Coco(paths) => paths.clone(),
        };
        match &self.split {
            SplitSource::Lists => files.extend(flickr::split_paths(&self.root)),
            SplitSource::Karpathy(path) => files.push(path.clone()),
            SplitSource::Own | SplitSource::Seeded => {}
        }
        files
            .into_iter()
            .map(|path| {
                if self.karpathy_param.as_ref() == Some(&path) {
                    Source::param_file("karpathy", path)
                } else {
                    Source::in_param_folder("root", &self.root, path)
                }
            })
            .collect()
    }

    /// The folders the dataset's images are in, without reading any caption: the image folder,
    /// or for COCO one folder per annotation file's set, or for a Karpathy file one per
    /// `filepath` it uses (which needs the file parsed).
    pub fn image_folders(&self, options: &Options) -> Result<Vec<PathBuf>, StageError> {
        let mut folders: Vec<PathBuf> = match &self.captions {
            CaptionSource::TokenFile(_) => vec![self.image_dir.clone()],
            CaptionSource::Coco(files) => files
                .iter()
                .filter_map(|file| coco::set_of(&flickr::file_label(file)).map(str::to_string))
                .map(|set| flickr::normalise(&self.image_dir.join(set)))
                .collect(),
            CaptionSource::Karpathy(file) => karpathy::read(file, options.restval)?
                .iter()
                .map(|image| flickr::normalise(&self.image_dir.join(&image.filepath)))
                .collect(),
        };
        folders.sort();
        folders.dedup();
        Ok(folders)
    }

    /// Reads the captions and splits. Errors: those of each format's reader, and a split that
    /// cannot be made (fractions leaving no train image, a COCO set whose name gives no split
    /// when no Karpathy file is given).
    pub fn read(&self, options: &Options, progress: &dyn Progress) -> Result<Dataset, StageError> {
        let mut data = Builder::new(self);
        // Split lists first: a missing one is a setup error worth reporting before a long parse.
        let lists = match self.split {
            SplitSource::Lists => Some(Splits::read(&self.root)?),
            _ => None,
        };
        match &self.captions {
            CaptionSource::TokenFile(path) => data.read_token_file(path, progress)?,
            CaptionSource::Karpathy(path) => data.read_karpathy(path, options)?,
            CaptionSource::Coco(paths) => {
                data.read_coco(paths, matches!(self.split, SplitSource::Own))?
            }
        }
        match &self.split {
            SplitSource::Lists => {
                if let Some(lists) = &lists {
                    data.apply_lists(lists);
                }
            }
            SplitSource::Karpathy(path) => data.apply_karpathy(path, options)?,
            SplitSource::Own => {}
            SplitSource::Seeded => data.apply_seeded(options)?,
        }
        data.description = self.describe(options);
        Ok(data.finish())
    }

    /// What the stage's note says about how the dataset was read, e.g. `format karpathy
    /// (detected): dataset_flickr8k.json, split from the file (restval → train)`.
    fn describe(&self, options: &Options) -> String {
        let how = if self.detected { " (detected)" } else { "" };
        let label = |path: &Path| relative_label(&self.root, path);
        let captions = match &self.captions {
            CaptionSource::TokenFile(path) | CaptionSource::Karpathy(path) => label(path),
            CaptionSource::Coco(paths) => paths
                .iter()
                .map(|p| label(p))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let split = match &self.split {
            SplitSource::Lists => "split from the split lists".to_string(),
            SplitSource::Karpathy(path) => format!(
                "split from {} (restval → {})",
                flickr::file_label(path),
                options.restval
            ),
            SplitSource::Own if self.format == Format::Coco => {
                "split from each file's set".to_string()
            }
            SplitSource::Own => format!("split from the file (restval → {})", options.restval),
            SplitSource::Seeded => format!(
                "no split lists: seeded split (seed {}, dev_fraction {}, test_fraction {})",
                options.seed, options.dev_fraction, options.test_fraction
            ),
        };
        format!("format {}{how}: {captions}, {split}", self.format)
    }
}

/// `path` relative to `root`, `/`-separated, for messages; the file name if it lies elsewhere.
pub fn relative_label(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => flickr::file_label(path),
    }
}

/// Where in its file a caption or a skipped entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line of a line-oriented file.
    Line(usize),
    /// The JSON path of an entry (`annotations[17]`, `images[3].sentences[1]`).
    Entry(String),
}

impl Location {
    pub fn line(&self) -> Option<u64> {
        match self {
            Location::Line(line) => Some(*line as u64),
            Location::Entry(_) => None,
        }
    }

    pub fn entry(&self) -> Option<&str> {
        match self {
            Location::Line(_) => None,
            Location::Entry(entry) => Some(entry),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "line {line}"),
            Location::Entry(entry) => f.write_str(entry),
        }
    }
}

/// One caption, whatever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// The image's file name, which is its id.
    pub image: String,
    /// Flickr's `#<n>`; a Karpathy sentence's index; a COCO caption's rank among its image's
    /// annotations in file order.
    pub number: u32,
    /// As written, surrounding whitespace trimmed.
    pub text: String,
}

/// A caption or entry that was left out, kept so the user can find and fix it: the rows of
/// `skipped.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The file's name.
    pub file: String,
    pub location: Location,
    pub reason: SkipReason,
    /// The line as written, or the caption of a skipped JSON entry.
    pub text: String,
}

/// One warning line per file summarising what was skipped in it, e.g. `Flickr8k.token.txt:
/// skipped 3 lines: 2 without a tab (first at line 12), 1 with an empty caption (line 40)`;
/// `None` if nothing was.
pub fn skip_summary<'a>(
    file: &str,
    skipped: impl IntoIterator<Item = (SkipReason, &'a Location)>,
) -> Option<String> {
    // Per reason: how many, and the first place (in file order).
    let mut by_reason: Vec<(SkipReason, usize, &Location)> = Vec::new();
    let mut total = 0;
    let mut lines = true;
    for (reason, location) in skipped {
        total += 1;
        lines &= matches!(location, Location::Line(_));
        match by_reason.iter_mut().find(|(r, _, _)| *r == reason) {
            Some((_, count, _)) => *count += 1,
            None => by_reason.push((reason, 1, location)),
        }
    }
    if total == 0 {
        return None;
    }
    by_reason.sort_by_key(|(reason, _, _)| *reason);
    let parts: Vec<String> = by_reason
        .iter()
        .map(|(reason, count, first)| {
            let at = if *count == 1 {
                format!("{first}")
            } else {
                format!("first at {first}")
            };
            format!("{count} {} ({at})", reason.described())
        })
        .collect();
    let what = match (lines, total) {
        (true, 1) => "line",
        (true, _) => "lines",
        (false, 1) => "entry",
        (false, _) => "entries",
    };
    Some(format!(
        "{file}: skipped {total} {what}: {}",
        parts.join(", ")
    ))
}

/// One image a dataset names.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetImage {
    pub name: String,
    /// `train`, `dev`, `test`, or `NO_SPLIT`.
    pub split: &'static str,
    /// The folder it should be in (absolute).
    pub folder: PathBuf,
    /// Where it is named, for messages: `Flickr8k.token.txt`, `the dev split list`.
    pub named_in: Vec<String>,
    pub captions: usize,
}

/// A dataset read into the common form.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub format: Format,
    /// How it was read, for the stage's note.
    pub description: String,
    /// Every caption, in file order.
    pub captions: Vec<Caption>,
    /// Captions and entries left out, in file order.
    pub skipped: Vec<Skipped>,
    /// Every image the captions or the split source name, in order of first mention.
    pub images: Vec<DatasetImage>,
    index: HashMap<String, usize>,
    folders: Vec<PathBuf>,
    /// The names of the caption files, for messages.
    caption_label: String,
    split: SplitSource,
    root: PathBuf,
    /// Numbered copies (`x.jpg.1`) of a token file read as the image they copy, which has no
    /// captions of its own: (copy, image), sorted.
    pub renamed: Vec<(String, String)>,
}

impl Dataset {
    /// The names of the caption files, for messages.
    pub fn caption_label(&self) -> &str {
        &self.caption_label
    }

    /// Reads the dataset at `root` as `options` say: `Layout::resolve`, then `Layout::read`.
    pub fn read(
        root: &Path,
        options: &Options,
        progress: &dyn Progress,
    ) -> Result<Dataset, StageError> {
        Layout::resolve(root, options)?.read(options, progress)
    }

    /// `train`, `dev`, `test`, or `NO_SPLIT` for an image no split source names.
    pub fn split_of(&self, image: &str) -> &'static str {
        self.index
            .get(image)
            .map_or(NO_SPLIT, |&i| self.images[i].split)
    }

    /// The image called `name`, if the dataset names it.
    pub fn image(&self, name: &str) -> Option<&DatasetImage> {
        self.index.get(name).map(|&i| &self.images[i])
    }

    /// The folders its images are in, sorted, each once: those of the caption source (the
    /// image folder of a token file, each COCO set's, each Karpathy `filepath`'s), the folders
    /// `Layout::image_folders` lists for the cache key. An image only a split source names is
    /// looked for there too.
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// A folder's name relative to the dataset folder, for messages (`Flicker8k_Dataset`).
    pub fn folder_label(&self, folder: &Path) -> String {
        relative_label(&self.root, folder)
    }

    /// How many captioned images there are.
    pub fn captioned_images(&self) -> usize {
        self.images.iter().filter(|i| i.captions > 0).count()
    }

    /// One warning line per file that had entries skipped.
    pub fn skip_summaries(&self) -> Vec<String> {
        let mut files: Vec<&str> = Vec::new();
        for skipped in &self.skipped {
            if !files.contains(&skipped.file.as_str()) {
                files.push(&skipped.file);
            }
        }
        files
            .into_iter()
            .filter_map(|file| {
                skip_summary(
                    file,
                    self.skipped
                        .iter()
                        .filter(|s| s.file == file)
                        .map(|s| (s.reason, &s.location)),
                )
            })
            .collect()
    }

    /// Warnings about images the captions and the split source disagree on: captioned images
    /// without a split (they get split "none"), and images the split source names without a
    /// caption (they will be missing from training and evaluation).
    pub fn split_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let unsplit: Vec<&str> = self
            .images
            .iter()
            .filter(|i| i.captions > 0 && i.split == NO_SPLIT)
            .map(|i| i.name.as_str())
            .collect();
        if !unsplit.is_empty() {
            let where_ = match &self.split {
                SplitSource::Karpathy(path) => format!("are not in {}", flickr::file_label(path)),
                _ => "are in no split list".to_string(),
            };
            warnings.push(format!(
                "{}: {} captioned images {where_} (split \"none\"): {}",
                self.caption_label,
                unsplit.len(),
                flickr::preview_names(&unsplit, unsplit.len())
            ));
        }
        let mut uncaptioned: Vec<&str> = self
            .images
            .iter()
            .filter(|i| i.captions == 0)
            .map(|i| i.name.as_str())
            .collect();
        if !uncaptioned.is_empty() {
            uncaptioned.sort_unstable();
            let in_ = match &self.split {
                SplitSource::Lists => "in the split lists ".to_string(),
                SplitSource::Karpathy(path) => format!("in {} ", flickr::file_label(path)),
                SplitSource::Own | SplitSource::Seeded => String::new(),
            };
            warnings.push(format!(
                "{}: {} images {in_}have no caption: {}",
                self.caption_label,
                uncaptioned.len(),
                flickr::preview_names(&uncaptioned, uncaptioned.len())
            ));
        }
        warnings
    }
}

/// Builds a `Dataset` as a format's reader and then its split source add to it.
struct Builder {
    format: Format,
    description: String,
    image_dir: PathBuf,
    captions: Vec<Caption>,
    skipped: Vec<Skipped>,
    images: Vec<DatasetImage>,
    index: HashMap<String, usize>,
    folders: Vec<PathBuf>,
    caption_labels: Vec<String>,
    split: SplitSource,
    root: PathBuf,
    renamed: Vec<(String, String)>,
}

impl Builder {
    fn new(layout: &Layout) -> Builder {
        Builder {
            format: layout.format,
            description: String::new(),
            image_dir: layout.image_dir.clone(),
            captions: Vec::new(),
            skipped: Vec::new(),
            images: Vec::new(),
            index: HashMap::new(),
            folders: Vec::new(),
            caption_labels: Vec::new(),
            renamed: Vec::new(),
            split: layout.split.clone(),
            root: layout.root.clone(),
        }
    }

    /// The image called `name`, added in `folder` (relative to the image folder) if new.
    fn image(&mut self, name: &str, folder: &str) -> &mut DatasetImage {
        let index = match self.index.get(name) {
            Some(&index) => index,
            None => {
                self.images.push(DatasetImage {
                    name: name.to_string(),
                    split: NO_SPLIT,
                    folder: flickr::normalise(&self.image_dir.join(folder)),
                    named_in: Vec::new(),
                    captions: 0,
                });
                self.index.insert(name.to_string(), self.images.len() - 1);
                self.images.len() - 1
            }
        };
        &mut self.images[index]
    }

    /// Adds `folder` (relative to the image folder) to the folders the caption source uses.
    fn folder(&mut self, folder: &str) {
        let folder = flickr::normalise(&self.image_dir.join(folder));
        if !self.folders.contains(&folder) {
            self.folders.push(folder);
        }
    }

    fn caption(&mut self, image: &str, folder: &str, number: u32, text: &str, file: &str) {
        let entry = self.image(image, folder);
        if entry.captions == 0 && !entry.named_in.iter().any(|n| n == file) {
            entry.named_in.push(file.to_string());
        }
        entry.captions += 1;
        self.captions.push(Caption {
            image: image.to_string(),
            number,
            text: text.trim().to_string(),
        });
    }

    fn read_token_file(&mut self, path: &Path, progress: &dyn Progress) -> Result<(), StageError> {
        let mut file = flickr::read_caption_file(path, progress)?;
        self.renamed = crate::captions::read_numbered_copies(&mut file, &self.image_dir);
        let label = file.label();
        self.folder("");
        for line in &file.captions {
            self.caption(&line.image, "", line.number, &line.text, &label);
        }
        self.skipped
            .extend(file.skipped.into_iter().map(|line| Skipped {
                file: label.clone(),
                location: Location::Line(line.line),
                reason: line.reason,
                text: line.text,
            }));
        self.caption_labels.push(label);
        Ok(())
    }

    fn read_karpathy(&mut self, path: &Path, options: &Options) -> Result<(), StageError> {
        let label = flickr::file_label(path);
        for image in karpathy::read(path, options.restval)? {
            self.folder(&image.filepath);
            let entry = self.image(&image.filename, &image.filepath);
            entry.split = image.split;
            entry.named_in.push(label.clone());
            for (number, raw) in image.sentences.iter().enumerate() {
                if raw.trim().is_empty() {
                    self.skipped.push(Skipped {
                        file: label.clone(),
                        location: Location::Entry(format!(
                            "images[{}].sentences[{number}]",
                            image.index
                        )),
                        reason: SkipReason::EmptyCaption,
                        text: raw.clone(),
                    });
                    continue;
                }
                self.caption(&image.filename, &image.filepath, number as u32, raw, &label);
            }
        }
        self.caption_labels.push(label);
        Ok(())
    }

    /// Reads COCO annotation files; `own_split`: each file's set gives its images' split.
    fn read_coco(&mut self, paths: &[PathBuf], own_split: bool) -> Result<(), StageError> {
        // Which file first gave each image, to name both when another gives it again.
        let mut first_file: HashMap<String, String> = HashMap::new();
        for path in paths {
            let label = flickr::file_label(path);
            let file = coco::read(path)?;
            let split = match coco::split_of_set(&file.set) {
                Some(split) => split,
                None if own_split => {
                    return Err(StageError::file(
                        path,
                        format!(
                            "the set `{}` names no split (train…, val… or test…): rename the \
                             file or give a Karpathy split file (param `karpathy`)",
                            file.set
                        ),
                    ))
                }
                None => NO_SPLIT,
            };
            self.folder(&file.set);
            let mut names: HashMap<u64, &str> = HashMap::new();
            for (index, (id, name)) in file.images.iter().enumerate() {
                if let Some(first) = first_file.insert(name.clone(), label.clone()) {
                    return Err(json::entry_error(
                        path,
                        &format!("images[{index}].file_name"),
                        format!("`{name}` is also an image of {first}"),
                    ));
                }
                let entry = self.image(name, &file.set);
                entry.named_in.push(label.clone());
                if own_split {
                    entry.split = split;
                }
                names.insert(*id, name);
            }
            let mut numbers: HashMap<u64, u32> = HashMap::new();
            for (index, (image_id, caption)) in file.annotations.iter().enumerate() {
                let location = Location::Entry(format!("annotations[{index}]"));
                let skip = |reason| Skipped {
                    file: label.clone(),
                    location: location.clone(),
                    reason,
                    text: caption.clone(),
                };
                let Some(name) = names.get(image_id) else {
                    self.skipped.push(skip(SkipReason::UnknownImage));
                    continue;
                };
                if caption.trim().is_empty() {
                    self.skipped.push(skip(SkipReason::EmptyCaption));
                    continue;
                }
                let number = numbers.entry(*image_id).or_default();
                let this = *number;
                *number += 1;
                self.caption(name, &file.set, this, caption, &label);
            }
            self.caption_labels.push(label);
        }
        Ok(())
    }

    fn apply_lists(&mut self, lists: &Splits) {
        let mut listed: Vec<&str> = lists.images().collect();
        // The lists' order is a hash map's: sorted, so new images are added in a fixed order.
        listed.sort_unstable();
        for name in listed {
            let split = lists.split_of(name);
            let entry = self.image(name, "");
            entry.split = split;
            entry.named_in.push(format!("the {split} split list"));
        }
    }

    fn apply_karpathy(&mut self, path: &Path, options: &Options) -> Result<(), StageError> {
        let label = flickr::file_label(path);
        for image in karpathy::read(path, options.restval)? {
            let entry = self.image(&image.filename, &image.filepath);
            entry.split = image.split;
            entry.named_in.push(label.clone());
        }
        Ok(())
    }

    fn apply_seeded(&mut self, options: &Options) -> Result<(), StageError> {
        let mut names: Vec<usize> = (0..self.images.len()).collect();
        // Sorted first, so the split depends on the images and the seed, not on line order.
        names.sort_by(|&a, &b| self.images[a].name.cmp(&self.images[b].name));
        let (dev, test) = split_sizes(
            names.len(),
            options.dev_fraction,
            options.test_fraction,
            "images",
        )?;
        let splits = shuffled_splits(names.len(), dev, test, options.seed);
        for (rank, &index) in names.iter().enumerate() {
            self.images[index].split = splits[rank];
        }
        Ok(())
    }

    fn finish(mut self) -> Dataset {
        self.folders.sort();
        Dataset {
            format: self.format,
            description: self.description,
            captions: self.captions,
            skipped: self.skipped,
            images: self.images,
            index: self.index,
            folders: self.folders,
            caption_label: self.caption_labels.join(", "),
            renamed: self.renamed,
            split: self.split,
            root: self.root,
        }
    }
}

/// The number of dev and test items of `count` by fractions, each rounded to whole items.
/// Errors (`Param`, `test_fraction`) when they leave no train item.
pub fn split_sizes(
    count: usize,
    dev_fraction: f64,
    test_fraction: f64,
    items: &str,
) -> Result<(usize, usize), StageError> {
    let share = |fraction: f64| (count as f64 * fraction).round() as usize;
    let (dev, test) = (share(dev_fraction), share(test_fraction));
    if dev + test >= count {
        return Err(StageError::Param {
            name: "test_fraction".to_string(),
            message: format!(
                "with dev_fraction it leaves no training {items} \
                 ({dev} dev + {test} test of {count})"
            ),
        });
    }
    Ok((dev, test))
}

/// The split of each of `count` items, by index: a seeded shuffle (ChaCha8, stream 0 of `seed`)
/// decides which `dev` items go to dev and which `test` items to test, so the splits are not
/// runs of consecutive items; the rest are train.
pub fn shuffled_splits(count: usize, dev: usize, test: usize, seed: u64) -> Vec<&'static str> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0);
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut rng);
    let mut splits = vec!["train"; count];
    for (rank, &index) in order.iter().enumerate() {
        if rank < dev {
            splits[index] = "dev";
        } else if rank < dev + test {
            splits[index] = "test";
        }
    }
    splits
}

#[cfg(test)]
mod tests;
