//! Stage kind `images`: reads every image of a dataset (Flickr8k, Karpathy or COCO format: see
//! `datasets`) once, hashes it, decodes it fully to learn its size and to catch corrupt or
//! truncated files, and writes the images table that later stages use as the list of usable
//! images, with a table of the problems it found.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;

use crate::datasets::{self, Dataset, Options};
use crate::flickr;
use crate::image_file;
use crate::table::{batch, write_parquet};
use crate::{
    Effect, ParamDefault, ParamSpec, ParamType, Params, PathKind, Source, StageContext, StageError,
    StageInput, StageKind, StageReport,
};

pub const KIND: StageKind = StageKind {
    name: "images",
    // 3: `path` is relative to the dataset folder, never this machine's path.
    version: 3,
    about: "Hash, measure and check every image of a dataset (Flickr8k, Karpathy or COCO format)",
    params: PARAMS,
    inputs: flickr::DATASET_INPUTS,
    sources,
    device: crate::DeviceUse::NoLibtorch,
    run,
    shards: None,
    files_root: Some(flickr::resolve_root),
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
    datasets::params::IMAGE_DIR,
    ParamSpec {
        name: "strict",
        ty: ParamType::Bool,
        default: ParamDefault::Bool(false),
        effect: Effect::Output,
        help: "Fail on corrupt or missing images instead of leaving them out with a warning",
    },
    datasets::params::KARPATHY,
    datasets::params::RESTVAL,
    datasets::params::DEV_FRACTION,
    datasets::params::TEST_FRACTION,
    datasets::params::SEED,
];

/// Output file names.
pub const IMAGES_TABLE: &str = "images.parquet";
pub const PROBLEMS_TABLE: &str = "problems.parquet";

/// The `problem` values of the problems table.
pub const MISSING: &str = "missing";
pub const CORRUPT: &str = "corrupt";

/// The files of an image folder: the image files, and the hidden and operating-system files
/// (`._x.jpg`, `.DS_Store`, `Thumbs.db`) that were passed over.
#[derive(Debug, Default)]
pub struct ImageListing {
    pub files: Vec<PathBuf>,
    pub ignored: Vec<String>,
}

/// The image files directly in `dir` (not in subfolders), sorted by path so that listings and
/// cache keys do not depend on directory order. Hidden and system files are left out, whatever
/// their extension: they are never pictures (a `._x.jpg` is macOS's AppleDouble metadata).
pub fn list_image_files(dir: &Path) -> Result<ImageListing, StageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StageError::file(dir, "image folder not found"))
        }
        Err(e) => return Err(StageError::io(dir, e)),
    };
    let mut listing = ImageListing::default();
    for entry in entries {
        let path = entry.map_err(|e| StageError::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name.filter(|n| image_file::is_ignored_name(n)) {
            listing.ignored.push(name);
        // `is_file` follows symlinks, so linked images count and linked folders do not.
        } else if image_file::has_image_extension(&path) && path.is_file() {
            listing.files.push(path);
        }
    }
    listing.files.sort();
    listing.ignored.sort();
    Ok(listing)
}

fn sources(
    params: &Params,
    inputs: &[StageInput],
    base_dir: &Path,
) -> Result<Vec<Source>, StageError> {
    datasets::stage_sources(params, inputs, base_dir, true)
}

/// What reading and decoding one image file found.
#[derive(Debug, Clone, PartialEq)]
struct ImageFacts {
    hash: String,
    bytes: u64,
    /// As displayed: after the EXIF orientation.
    width: u32,
    height: u32,
    /// What the reader forgave (junk between JPEG segments).
    notes: Vec<String>,
}

/// Reads, hashes and fully decodes one image with the project's reader; the error is a message
/// for the problems table.
fn inspect_image(path: &Path) -> Result<ImageFacts, String> {
    let data = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let hash = blake3::hash(&data).to_hex().to_string();
    let picture = image_file::decode(&data).map_err(|e| e.to_string())?;
    // The decoder filled the missing part with grey: such a picture would train on grey.
    if let Some(why) = picture.truncated {
        return Err(format!("truncated: {why}"));
    }
    Ok(ImageFacts {
        hash,
        bytes: data.len() as u64,
        width: picture.rgb.width(),
        height: picture.rgb.height(),
        notes: picture.notes,
    })
}

/// One image left out of the table, or named but not on disk.
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    image_id: String,
    problem: &'static str,
    detail: String,
}

/// One row of the images table.
#[derive(Debug, Clone, PartialEq)]
struct ImageRow {
    image_id: String,
    path: String,
    facts: ImageFacts,
    split: &'static str,
}

fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let root = flickr::dataset_root(&ctx.params, &ctx.inputs, &ctx.base_dir)?;
    let strict = ctx.params.bool("strict")?;
    let options = Options::from_params(&ctx.params, &ctx.base_dir)?;
    let dataset = Dataset::read(&root, &options, ctx.progress)?;
    let folders = dataset.folders();
    // The table names each picture relative to the dataset folder: say so before reading any.
    if let Some(outside) = folders.iter().find(|f| !f.starts_with(&root)) {
        return Err(StageError::file(
            outside,
            format!(
                "this image folder is outside the dataset folder {}: tables name pictures \
                 relative to the dataset folder, so `image_dir` (and Karpathy's `filepath`) must \
                 stay inside it",
                root.display()
            ),
        ));
    }
    let folder_names: Vec<String> = folders.iter().map(|f| dataset.folder_label(f)).collect();
    let folder_names = folder_names.join(", ");
    let mut report = StageReport::default();

    // Image ids are file names; a name that is not UTF-8 cannot be matched against the text
    // files or written to the table, so it is left out with a warning. The same name in two
    // folders would make captions ambiguous: an error naming both.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut first_path: HashMap<String, PathBuf> = HashMap::new();
    let mut unnamed = Vec::new();
    let mut ignored = Vec::new();
    for folder in folders {
        let listing = list_image_files(folder)?;
        ignored.extend(listing.ignored);
        for path in listing.files {
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                unnamed.push(path.display().to_string());
                continue;
            };
            if let Some(first) = first_path.insert(name.to_string(), path.clone()) {
                return Err(StageError::file(
                    &path,
                    format!(
                        "an image of the same name is in {}: image ids are file names, so they \
                         must be unique",
                        first.display()
                    ),
                ));
            }
            files.push((name.to_string(), path));
        }
    }
    ignored.sort();
    if !unnamed.is_empty() {
        report.warnings.push(format!(
            "{folder_names}: left out {} image files whose names are not valid UTF-8: {}",
            unnamed.len(),
            flickr::preview_names(&unnamed, unnamed.len())
        ));
    }

    ctx.progress.start(files.len() as u64, "reading images");
    let inspected: Vec<(String, PathBuf, Result<ImageFacts, String>)> = files
        .into_par_iter()
        .map(|(name, path)| {
            let facts = inspect_image(&path);
            ctx.progress.inc(1);
            (name, path, facts)
        })
        .collect();

    let on_disk: HashSet<&str> = inspected.iter().map(|(name, _, _)| name.as_str()).collect();
    let mut rows = Vec::new();
    let mut corrupt: Vec<(Problem, &Path)> = Vec::new();
    for (name, path, facts) in &inspected {
        match facts {
            Ok(facts) => rows.push(ImageRow {
                image_id: name.clone(),
                path: crate::files::relative_name(&root, path)?,
                facts: facts.clone(),
                split: dataset.split_of(name),
            }),
            Err(detail) => corrupt.push((
                Problem {
                    image_id: name.clone(),
                    problem: CORRUPT,
                    detail: detail.clone(),
                },
                path,
            )),
        }
    }
    let missing = missing_images(&dataset, &on_disk);

    if strict {
        if let Some((problem, path)) = corrupt.first() {
            return Err(StageError::file(
                *path,
                format!("corrupt image: {} ({STRICT_HINT})", problem.detail),
            ));
        }
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|p| p.image_id.as_str()).collect();
            return Err(StageError::file(
                &root,
                format!(
                    "{} images named in the captions or split lists are not in {folder_names}: \
                     {} ({STRICT_HINT})",
                    missing.len(),
                    flickr::preview_names(&names, names.len())
                ),
            ));
        }
    }

    if !corrupt.is_empty() {
        let described: Vec<String> = corrupt
            .iter()
            .map(|(p, _)| format!("{} ({})", p.image_id, p.detail))
            .collect();
        report.warnings.push(format!(
            "{folder_names}: left out {} image files that could not be decoded: {}",
            corrupt.len(),
            flickr::preview_names(&described, described.len())
        ));
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|p| p.image_id.as_str()).collect();
        report.warnings.push(format!(
            "{folder_names}: {} images named in the captions or split lists are not there: {}",
            missing.len(),
            flickr::preview_names(&names, names.len())
        ));
    }

    let mut problems: Vec<Problem> = corrupt.into_iter().map(|(p, _)| p).collect();
    problems.extend(missing);
    problems.sort_by(|a, b| (&a.image_id, a.problem).cmp(&(&b.image_id, b.problem)));
    // `inspected` came from a sorted listing, but sorting by id states the table's order here.
    rows.sort_by(|a, b| a.image_id.cmp(&b.image_id));

    write_images(&ctx.out_dir, &rows)?;
    write_problems(&ctx.out_dir, &problems)?;

    let per_split: Vec<String> = ["train", "dev", "test", flickr::NO_SPLIT]
        .iter()
        .map(|split| {
            let count = rows.iter().filter(|row| row.split == *split).count();
            format!("{count} {split}")
        })
        .collect();
    report
        .notes
        .push(format!("{} images ({})", rows.len(), per_split.join(", ")));
    let total_bytes: u64 = rows.iter().map(|row| row.facts.bytes).sum();
    report.notes.push(format!(
        "{:.1} MiB of image files",
        total_bytes as f64 / (1024.0 * 1024.0)
    ));
    if !problems.is_empty() {
        report
            .notes
            .push(format!("{} problems in {PROBLEMS_TABLE}", problems.len()));
    }
    if !ignored.is_empty() {
        report.notes.push(format!(
            "ignored {} hidden or system files: {}",
            ignored.len(),
            flickr::preview_names(&ignored, ignored.len())
        ));
    }
    let forgiven: Vec<String> = rows
        .iter()
        .filter(|row| !row.facts.notes.is_empty())
        .map(|row| format!("{} ({})", row.image_id, row.facts.notes.join("; ")))
        .collect();
    if !forgiven.is_empty() {
        report.notes.push(format!(
            "{} images read despite flaws the decoders forgive: {}",
            forgiven.len(),
            flickr::preview_names(&forgiven, forgiven.len())
        ));
    }
    report.notes.push(dataset.description.clone());
    Ok(report)
}

/// How to get past a strict failure, for its message.
const STRICT_HINT: &str = "set strict = false to leave such images out with a warning";

/// Images the dataset names (in its captions or its split source) that are not among the image
/// files, sorted by name; the detail says where each one is named and where it was looked for.
fn missing_images(dataset: &Dataset, on_disk: &HashSet<&str>) -> Vec<Problem> {
    let mut missing: Vec<Problem> = dataset
        .images
        .iter()
        .filter(|image| !on_disk.contains(image.name.as_str()))
        .map(|image| Problem {
            image_id: image.name.clone(),
            problem: MISSING,
            detail: format!(
                "named in {} but not in {}",
                image.named_in.join(" and "),
                dataset.folder_label(&image.folder)
            ),
        })
        .collect();
    missing.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    missing
}

fn utf8_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn write_images(out_dir: &Path, rows: &[ImageRow]) -> Result<(), StageError> {
    let path = out_dir.join(IMAGES_TABLE);
    let schema = Arc::new(Schema::new(vec![
        utf8_field("image_id"),
        utf8_field("path"),
        utf8_field("hash"),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        utf8_field("split"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.image_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.path.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.facts.hash.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.facts.bytes),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.facts.width),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.facts.height),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.split))),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

fn write_problems(out_dir: &Path, problems: &[Problem]) -> Result<(), StageError> {
    let path = out_dir.join(PROBLEMS_TABLE);
    let schema = Arc::new(Schema::new(vec![
        utf8_field("image_id"),
        utf8_field("problem"),
        utf8_field("detail"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            problems.iter().map(|p| p.image_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            problems.iter().map(|p| p.problem),
        )),
        Arc::new(StringArray::from_iter_values(
            problems.iter().map(|p| p.detail.as_str()),
        )),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use std::io::Cursor;

    use image::{ImageFormat, Rgb, RgbImage};

    use super::*;
    use crate::flickr::testing::{
        column_names, read_parquet, run_on_root, strings, u32s, u64s, write_text_files,
    };
    use crate::ParamValue;

    /// An image with busy content, so that its JPEG has plenty of entropy-coded data to cut.
    fn busy_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ (x * y);
            Rgb([v as u8, (v >> 8) as u8, (v >> 3) as u8])
        })
    }

    fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// Bytes that are no image format (a fixed pseudo-random sequence).
    fn noise_bytes(len: usize) -> Vec<u8> {
        let mut state: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        out: PathBuf,
        /// The valid files: name, bytes, width, height.
        valid: Vec<(&'static str, Vec<u8>, u32, u32)>,
    }

    /// Three valid images (two JPEG, one PNG, one with an upper-case extension), a file of noise
    /// named x.jpg, a JPEG cut in half, a text file to ignore, and text files naming two images
    /// that are not there.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let captions = "a.jpg#0\tA thing .\n\
                        b.JPEG#0\tAnother thing .\n\
                        x.jpg#0\tNoise .\n\
                        gone.jpg#0\tNothing .\n";
        write_text_files(
            &root,
            captions,
            ["a.jpg\nc.png\nt.jpg\n", "b.JPEG\r\nalso-gone.jpg\r\n", ""],
        );
        let images = root.join(flickr::IMAGE_DIR);
        let valid = vec![
            (
                "a.jpg",
                encode(&busy_image(32, 24), ImageFormat::Jpeg),
                32,
                24,
            ),
            (
                "b.JPEG",
                encode(&busy_image(20, 10), ImageFormat::Jpeg),
                20,
                10,
            ),
            ("c.png", encode(&busy_image(7, 5), ImageFormat::Png), 7, 5),
        ];
        for (name, bytes, _, _) in &valid {
            fs::write(images.join(name), bytes).unwrap();
        }
        fs::write(images.join("x.jpg"), noise_bytes(3000)).unwrap();
        let whole = encode(&busy_image(64, 64), ImageFormat::Jpeg);
        fs::write(images.join("t.jpg"), &whole[..whole.len() / 2]).unwrap();
        fs::write(images.join("notes.txt"), "not an image").unwrap();
        let out = dir.path().join("out");
        Fixture {
            _dir: dir,
            root,
            out,
            valid,
        }
    }

    #[test]
    fn an_image_folder_is_named_inside_the_dataset_folder_or_refused_before_reading() {
        let f = fixture();
        let dir = |d: &str| ("image_dir", ParamValue::Str(d.to_string()));
        // Climbing out and back in is the same folder, and the same table.
        run_on_root(&KIND, &f.root, &[dir("sub/../Flicker8k_Dataset")], &f.out).unwrap();
        let images = read_parquet(&f.out.join(IMAGES_TABLE));
        assert_eq!(strings(&images, "path")[0], "Flicker8k_Dataset/a.jpg");
        // Out of it: refused by name, whatever is there.
        fs::create_dir_all(f.root.parent().unwrap().join("elsewhere")).unwrap();
        let out = f.out.with_file_name("out2");
        let err = run_on_root(&KIND, &f.root, &[dir("../elsewhere")], &out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("elsewhere") && err.contains("outside the dataset folder"),
            "{err}"
        );
    }

    #[test]
    fn table_has_valid_images_and_problems_lists_the_rest() {
        let f = fixture();
        let report = run_on_root(&KIND, &f.root, &[], &f.out).unwrap();

        let images = read_parquet(&f.out.join(IMAGES_TABLE));
        assert_eq!(
            column_names(&images),
            ["image_id", "path", "hash", "bytes", "width", "height", "split"]
        );
        assert_eq!(strings(&images, "image_id"), ["a.jpg", "b.JPEG", "c.png"]);
        let hashes: Vec<String> = f
            .valid
            .iter()
            .map(|(_, bytes, _, _)| blake3::hash(bytes).to_hex().to_string())
            .collect();
        assert_eq!(strings(&images, "hash"), hashes);
        let sizes: Vec<u64> = f.valid.iter().map(|v| v.1.len() as u64).collect();
        assert_eq!(u64s(&images, "bytes"), sizes);
        assert_eq!(u32s(&images, "width"), [32, 20, 7]);
        assert_eq!(u32s(&images, "height"), [24, 10, 5]);
        assert_eq!(strings(&images, "split"), ["train", "dev", "train"]);
        // Named relative to the dataset folder, never by this machine's path.
        for (path, (name, _, _, _)) in strings(&images, "path").iter().zip(&f.valid) {
            assert_eq!(*path, format!("{}/{name}", flickr::IMAGE_DIR));
        }

        let problems = read_parquet(&f.out.join(PROBLEMS_TABLE));
        assert_eq!(column_names(&problems), ["image_id", "problem", "detail"]);
        assert_eq!(
            strings(&problems, "image_id"),
            ["also-gone.jpg", "gone.jpg", "t.jpg", "x.jpg"]
        );
        assert_eq!(
            strings(&problems, "problem"),
            [MISSING, MISSING, CORRUPT, CORRUPT]
        );
        let details = strings(&problems, "detail");
        assert_eq!(
            details[0],
            "named in the dev split list but not in Flicker8k_Dataset"
        );
        assert_eq!(
            details[1],
            "named in Flickr8k.token.txt but not in Flicker8k_Dataset"
        );
        assert!(details[2].starts_with("truncated"), "{}", details[2]);
        assert!(!details[3].is_empty());

        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("left out 2 image files"));
        assert!(report.warnings[0].contains("t.jpg (truncated"));
        assert!(report.warnings[0].contains("x.jpg ("));
        assert!(report.warnings[1].contains("2 images named"));
        assert!(report.warnings[1].contains("also-gone.jpg, gone.jpg"));
        assert_eq!(report.notes[0], "3 images (2 train, 1 dev, 0 test, 0 none)");
    }

    #[test]
    fn strict_mode_fails_naming_the_file() {
        let f = fixture();
        let strict = [("strict", ParamValue::Bool(true))];
        let err = run_on_root(&KIND, &f.root, &strict, &f.out).unwrap_err();
        match &err {
            StageError::File { path, message } => {
                assert!(path.ends_with("t.jpg"), "{err}");
                assert!(message.contains("truncated"), "{err}");
            }
            other => panic!("unexpected error {other}"),
        }

        // With the corrupt files gone, the missing ones fail the run by name.
        let images = f.root.join(flickr::IMAGE_DIR);
        fs::remove_file(images.join("t.jpg")).unwrap();
        fs::remove_file(images.join("x.jpg")).unwrap();
        let err = run_on_root(&KIND, &f.root, &strict, &f.out).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("also-gone.jpg, gone.jpg, t.jpg, x.jpg"),
            "{message}"
        );
    }

    #[test]
    fn missing_caption_file_is_an_error_naming_it() {
        let f = fixture();
        fs::remove_file(flickr::text_file(&f.root, flickr::TOKEN_FILE)).unwrap();
        let err = run_on_root(&KIND, &f.root, &[], &f.out).unwrap_err();
        assert!(err.to_string().contains(flickr::TOKEN_FILE), "{err}");
    }

    #[test]
    fn missing_split_list_is_an_error_naming_it() {
        let f = fixture();
        fs::remove_file(flickr::text_file(&f.root, "Flickr_8k.trainImages.txt")).unwrap();
        let err = run_on_root(&KIND, &f.root, &[], &f.out).unwrap_err();
        assert!(
            err.to_string().contains("Flickr_8k.trainImages.txt"),
            "{err}"
        );
    }

    #[test]
    fn sources_are_image_files_split_lists_and_captions() {
        let f = fixture();
        let mut given = std::collections::BTreeMap::new();
        given.insert("root".to_string(), ParamValue::Str("data".into()));
        let params = Params::with_defaults(KIND.params, given);
        let base_dir = f.root.parent().unwrap();
        let files = (KIND.sources)(&params, &[], base_dir).unwrap();
        // Keys name each file relative to the dataset root, never by its absolute path.
        let labels: Vec<String> = files.iter().map(Source::label).collect();
        assert_eq!(
            labels,
            [
                "root/Flicker8k_Dataset/a.jpg",
                "root/Flicker8k_Dataset/b.JPEG",
                "root/Flicker8k_Dataset/c.png",
                "root/Flicker8k_Dataset/t.jpg",
                "root/Flicker8k_Dataset/x.jpg",
                "root/Flickr8k_text/Flickr8k.token.txt",
                "root/Flickr8k_text/Flickr_8k.trainImages.txt",
                "root/Flickr8k_text/Flickr_8k.devImages.txt",
                "root/Flickr8k_text/Flickr_8k.testImages.txt",
            ]
        );
        assert!(files
            .iter()
            .all(|s| s.path.is_absolute() && s.path.starts_with(&f.root)));
        let upstream = [StageInput {
            name: "demo".into(),
            kind: "demo_data".into(),
            dir: f.root.clone(),
        }];
        let defaults = Params::with_defaults(KIND.params, Default::default());
        assert!((KIND.sources)(&defaults, &upstream, base_dir)
            .unwrap()
            .is_empty());
    }

    /// A folder of files that are fine although they look odd: PNG bytes named `.jpg`, a phone
    /// photo stored sideways with EXIF orientation 6, a JPEG with junk between two segments,
    /// 16-bit grey and palette-with-alpha PNGs; and files that are no pictures at all: macOS
    /// `._` files, `.DS_Store`, `Thumbs.db`.
    #[test]
    fn odd_but_readable_files_are_read_and_system_files_ignored() {
        use crate::image_file::samples;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        write_text_files(
            &root,
            "u.jpg#0\tA picture .\n",
            ["g.png\nj.jpg\np.jpg\npal.png\nr.jpg\nu.jpg\n", "", ""],
        );
        let images = root.join(flickr::IMAGE_DIR);
        let upright = samples::scene(64, 40);
        let files: [(&str, Vec<u8>); 6] = [
            ("g.png", samples::grey16_png(30, 20)),
            (
                "j.jpg",
                samples::with_junk_between_segments(&samples::jpeg(&upright, None)),
            ),
            (
                "p.jpg",
                samples::png(&image::DynamicImage::ImageRgb8(upright.clone())),
            ),
            ("pal.png", samples::palette_alpha_png(8, 4)),
            ("r.jpg", samples::jpeg_stored_rotated(&upright)),
            ("u.jpg", samples::jpeg(&upright, Some(1))),
        ];
        for (name, bytes) in &files {
            fs::write(images.join(name), bytes).unwrap();
        }
        // AppleDouble header bytes, then nothing a decoder knows.
        fs::write(
            images.join("._r.jpg"),
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
        )
        .unwrap();
        fs::write(images.join(".DS_Store"), b"\x00\x00\x00\x01Bud1").unwrap();
        fs::write(images.join("Thumbs.db"), noise_bytes(100)).unwrap();

        let out = dir.path().join("out");
        let strict = [("strict", ParamValue::Bool(true))];
        let report = run_on_root(&KIND, &root, &strict, &out).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let table = read_parquet(&out.join(IMAGES_TABLE));
        assert_eq!(
            strings(&table, "image_id"),
            ["g.png", "j.jpg", "p.jpg", "pal.png", "r.jpg", "u.jpg"]
        );
        // Sizes as displayed: the sideways photo has the upright one's.
        assert_eq!(u32s(&table, "width"), [30, 64, 64, 8, 64, 64]);
        assert_eq!(u32s(&table, "height"), [20, 40, 40, 4, 40, 40]);
        assert!(read_parquet(&out.join(PROBLEMS_TABLE)).num_rows() == 0);
        let notes = report.notes.join("\n");
        assert!(
            notes.contains("ignored 3 hidden or system files: .DS_Store, ._r.jpg, Thumbs.db"),
            "{notes}"
        );
        assert!(
            notes.contains("1 images read despite flaws the decoders forgive: j.jpg (7 junk bytes"),
            "{notes}"
        );
        // Ignored files are no sources either: adding one changes no key.
        let mut given = std::collections::BTreeMap::new();
        given.insert("root".to_string(), ParamValue::Str("data".into()));
        let params = Params::with_defaults(KIND.params, given);
        let sources = (KIND.sources)(&params, &[], dir.path()).unwrap();
        assert!(sources.iter().all(|s| !s.label().contains("._")
            && !s.label().contains("DS_Store")
            && !s.label().contains("Thumbs")));
    }
}
