//! Stage kind `demo_data`: generates, from a seed, a small synthetic image-captioning dataset
//! (pictures of coloured shapes, five captions each) plus a table of each picture's ground truth.
//! It exists so the whole pipeline can be tried, tested and demonstrated in minutes without
//! downloading Flickr8k: a small captioning network learns these captions quickly, and retrieval
//! by caption is checkable. It writes the dataset in any of the layouts the dataset stages read
//! (`datasets`): Flickr8k's (with lemmas and the three split lists, the default), a Karpathy split
//! file, or COCO caption annotations, so each format can be run end to end.

mod draw;
mod scene;
pub mod truth;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::datasets::{self, coco, Format, COCO_ANNOTATION_DIR, KARPATHY_IMAGE_DIR};
use crate::flickr::{IMAGE_DIR, LEMMA_FILE, SPLIT_FILES, TEXT_DIR, TOKEN_FILE};
use crate::table::{batch, write_parquet};
use crate::{
    Effect, InputRule, ParamDefault, ParamSpec, ParamType, Params, RawValue, StageContext,
    StageError, StageKind, StageReport,
};

use scene::Scene;

pub const KIND: StageKind = StageKind {
    name: "demo_data",
    version: 2,
    about: "Generate a synthetic captioning dataset of coloured shapes, in the Flickr8k, Karpathy \
            or COCO layout",
    params: PARAMS,
    inputs: InputRule {
        kinds: &[],
        min: 0,
        max: 0,
    },
    sources: |_, _, _| Ok(Vec::new()),
    device: crate::DeviceUse::NoLibtorch,
    run,
    shards: None,
    files_root: None,
};

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "images",
        // Image ids have six digits.
        ty: ParamType::Int {
            min: 10,
            max: 1_000_000,
        },
        default: ParamDefault::Int(1000),
        effect: Effect::Output,
        help: "Number of pictures to generate (five captions each)",
    },
    ParamSpec::seed(
        7,
        "Random seed: the same params always give byte-identical files",
    ),
    ParamSpec {
        name: "image_size",
        ty: ParamType::Int { min: 32, max: 1024 },
        default: ParamDefault::Int(128),
        effect: Effect::Output,
        help: "Side of the square pictures, in pixels",
    },
    ParamSpec {
        name: "dev_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.15),
        effect: Effect::Output,
        help: "Fraction of the pictures in the dev split (rounded to whole pictures)",
    },
    ParamSpec {
        name: "test_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.15),
        effect: Effect::Output,
        help: "Fraction of the pictures in the test split (rounded to whole pictures)",
    },
    ParamSpec {
        name: "layout",
        ty: ParamType::Choice(&Format::NAMES),
        default: ParamDefault::Str("flickr8k"),
        effect: Effect::Output,
        help: "Dataset layout to write: flickr8k (Flicker8k_Dataset/, Flickr8k_text/ with lemmas \
               and split lists), karpathy (images/, dataset_demo.json) or coco (train/, val/, \
               test/, annotations/captions_{train,val,test}.json)",
    },
];

/// The Karpathy split file the `karpathy` layout writes.
pub const KARPATHY_FILE: &str = "dataset_demo.json";

/// The ground-truth table, one row per picture.
pub const SCENES_TABLE: &str = "scenes.parquet";

/// Quality of the written JPEGs: high enough that colours and edges survive.
const JPEG_QUALITY: u8 = 90;

const TRAIN: &str = "train";
const DEV: &str = "dev";
const TEST: &str = "test";

/// The params of one run, converted to the types the generator works in.
struct Settings {
    images: usize,
    seed: u64,
    image_size: u32,
    dev: usize,
    test: usize,
    layout: Format,
}

fn param_error(name: &str, message: impl Into<String>) -> StageError {
    StageError::Param {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Checks a value against the declaration of param `name` once more: `run` may be called with
/// params that never went through the engine's checks, and a negative count or size would
/// otherwise wrap around silently in the conversions below.
fn recheck(name: &str, raw: RawValue) -> Result<(), StageError> {
    match PARAMS.iter().find(|spec| spec.name == name) {
        Some(spec) => spec
            .ty
            .check(&raw)
            .map(|_| ())
            .map_err(|message| param_error(name, message)),
        None => Ok(()),
    }
}

fn int_param(params: &Params, name: &str) -> Result<i64, StageError> {
    let value = params.int(name)?;
    recheck(name, RawValue::Int(value))?;
    Ok(value)
}

impl Settings {
    fn from_params(params: &Params) -> Result<Self, StageError> {
        let images = int_param(params, "images")? as usize;
        let seed = int_param(params, "seed")? as u64;
        let image_size = int_param(params, "image_size")? as u32;
        let fraction = |name: &str| -> Result<f64, StageError> {
            let fraction = params.float(name)?;
            recheck(name, RawValue::Float(fraction))?;
            Ok(fraction)
        };
        let (dev, test) = datasets::split_sizes(
            images,
            fraction("dev_fraction")?,
            fraction("test_fraction")?,
            "pictures",
        )?;
        let layout = match params.opt_str("layout") {
            None => Format::Flickr8k,
            Some(name) => Format::from_name(name).ok_or_else(|| {
                param_error(
                    "layout",
                    format!("{name:?} is not one of {}", Format::NAMES.join(", ")),
                )
            })?,
        };
        Ok(Settings {
            images,
            seed,
            image_size,
            dev,
            test,
            layout,
        })
    }
}

/// The random stream of picture `index`: its own ChaCha stream under the seed, so pictures can
/// be drawn in any order, in parallel, and do not change when `images` does.
fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    rng
}

/// The file name of picture `index`, which is also its id in the caption files.
fn image_id(index: usize) -> String {
    format!("demo_{index:06}.jpg")
}

/// The split of each picture, by index: a seeded shuffle decides which pictures go to dev and
/// test, so the splits are not runs of consecutive ids.
fn assign_splits(settings: &Settings) -> Vec<&'static str> {
    datasets::shuffled_splits(settings.images, settings.dev, settings.test, settings.seed)
}

/// The folder, relative to the output, that picture `index` of split `split` is written to.
fn picture_dir(layout: Format, split: &str) -> &'static str {
    match layout {
        Format::Flickr8k => IMAGE_DIR,
        Format::Karpathy => KARPATHY_IMAGE_DIR,
        Format::Coco => coco_set(split),
    }
}

/// The COCO set a split's pictures are in (and their annotation file's name part): the names
/// the `coco` format reads back as that split.
fn coco_set(split: &str) -> &'static str {
    match split {
        DEV => "val",
        TEST => "test",
        _ => "train",
    }
}

/// What the text files and the scenes table need to know about one generated picture.
struct Picture {
    scene: Scene,
    captions: [String; 5],
}

/// Draws a scene and its captions from the start of a picture's stream; the pixels come from
/// the same stream afterwards, so a scene can be recovered without drawing it.
fn describe(rng: &mut ChaCha8Rng) -> Picture {
    let scene = scene::sample_scene(rng);
    let captions = scene::captions(&scene, rng);
    Picture { scene, captions }
}

/// Generates picture `index` and writes its JPEG into `image_dir`.
fn make_picture(
    settings: &Settings,
    index: usize,
    image_dir: &Path,
) -> Result<Picture, StageError> {
    let mut rng = image_rng(settings.seed, index);
    let picture = describe(&mut rng);
    let pixels = draw::render(&picture.scene, settings.image_size, &mut rng);
    let path = image_dir.join(image_id(index));
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(
            &pixels,
            settings.image_size,
            settings.image_size,
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| StageError::file(&path, format!("encoding JPEG: {e}")))?;
    fs::write(&path, jpeg).map_err(|e| StageError::io(&path, e))?;
    Ok(picture)
}

fn run(ctx: &StageContext) -> Result<StageReport, StageError> {
    let settings = Settings::from_params(&ctx.params)?;
    let splits = assign_splits(&settings);
    let mut dirs: Vec<&str> = splits
        .iter()
        .map(|split| picture_dir(settings.layout, split))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    for dir in dirs {
        let dir = ctx.out_dir.join(dir);
        fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
    }

    ctx.progress
        .start(settings.images as u64, "drawing demo images");
    let pictures = (0..settings.images)
        .into_par_iter()
        .map(|index| {
            let dir = ctx
                .out_dir
                .join(picture_dir(settings.layout, splits[index]));
            let picture = make_picture(&settings, index, &dir);
            ctx.progress.inc(1);
            picture
        })
        .collect::<Result<Vec<_>, _>>()?;

    match settings.layout {
        Format::Flickr8k => {
            let text_dir = ctx.out_dir.join(TEXT_DIR);
            fs::create_dir_all(&text_dir).map_err(|e| StageError::io(&text_dir, e))?;
            write_captions(&text_dir, &pictures)?;
            write_split_lists(&text_dir, &splits)?;
        }
        Format::Karpathy => write_karpathy(&ctx.out_dir, &pictures, &splits)?,
        Format::Coco => write_coco(&ctx.out_dir, &pictures, &splits, settings.image_size)?,
    }
    write_scenes(&ctx.out_dir, &pictures, &splits)?;

    let train = settings.images - settings.dev - settings.test;
    Ok(StageReport {
        device: None,
        metrics: Default::default(),
        warnings: Vec::new(),
        notes: vec![format!(
            "{} images ({train} train, {} dev, {} test), {} captions",
            settings.images,
            settings.dev,
            settings.test,
            pictures.len() * 5
        )],
    })
}

/// Writes the caption file and its lemma twin, with the same keys line for line.
fn write_captions(text_dir: &Path, pictures: &[Picture]) -> Result<(), StageError> {
    let mut tokens = String::new();
    let mut lemmas = String::new();
    for (index, picture) in pictures.iter().enumerate() {
        let id = image_id(index);
        for (number, caption) in picture.captions.iter().enumerate() {
            let surface = scene::flickr_style(caption);
            let lemma = scene::flickr_style(&scene::lemmatise(caption));
            // Writing into a String cannot fail.
            let _ = writeln!(tokens, "{id}#{number}\t{surface}");
            let _ = writeln!(lemmas, "{id}#{number}\t{lemma}");
        }
    }
    for (file, text) in [(TOKEN_FILE, tokens), (LEMMA_FILE, lemmas)] {
        let path = text_dir.join(file);
        fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StageError::file(path, format!("encoding JSON: {e}")))?;
    fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}

/// Writes the captions as a Karpathy split file, `KARPATHY_FILE`: one entry per picture with
/// its split (`val` for dev, as Karpathy names it) and its sentences' `raw` text and `tokens`.
fn write_karpathy(out_dir: &Path, pictures: &[Picture], splits: &[&str]) -> Result<(), StageError> {
    let mut sentence_id = 0;
    let images: Vec<serde_json::Value> = pictures
        .iter()
        .enumerate()
        .map(|(index, picture)| {
            let sentences: Vec<serde_json::Value> = picture
                .captions
                .iter()
                .map(|caption| {
                    let raw = scene::flickr_style(caption);
                    let tokens = crate::captions::words(&raw);
                    sentence_id += 1;
                    serde_json::json!({"raw": raw, "tokens": tokens, "imgid": index,
                                       "sentid": sentence_id - 1})
                })
                .collect();
            let split = if splits[index] == DEV {
                "val"
            } else {
                splits[index]
            };
            serde_json::json!({"filename": image_id(index), "imgid": index, "split": split,
                               "sentences": sentences})
        })
        .collect();
    let path = out_dir.join(KARPATHY_FILE);
    write_json(
        &path,
        &serde_json::json!({"dataset": "demo", "images": images}),
    )
}

/// Writes the captions as COCO caption annotations, one file per split
/// (`annotations/captions_{train,val,test}.json`), each picture's id its index.
fn write_coco(
    out_dir: &Path,
    pictures: &[Picture],
    splits: &[&str],
    size: u32,
) -> Result<(), StageError> {
    let dir = out_dir.join(COCO_ANNOTATION_DIR);
    fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
    let mut annotation_id = 0;
    for split in [TRAIN, DEV, TEST] {
        let mut images = Vec::new();
        let mut annotations = Vec::new();
        for (index, picture) in pictures.iter().enumerate() {
            if splits[index] != split {
                continue;
            }
            images.push(
                serde_json::json!({"id": index, "file_name": image_id(index),
                                           "width": size, "height": size}),
            );
            for caption in &picture.captions {
                annotations.push(serde_json::json!({"id": annotation_id, "image_id": index,
                                                    "caption": scene::flickr_style(caption)}));
                annotation_id += 1;
            }
        }
        // A split without pictures gets no file: its image folder would not exist.
        if images.is_empty() {
            continue;
        }
        let path = dir.join(format!(
            "{}{}{}",
            coco::FILE_PREFIX,
            coco_set(split),
            coco::FILE_SUFFIX
        ));
        write_json(
            &path,
            &serde_json::json!({"images": images, "annotations": annotations}),
        )?;
    }
    Ok(())
}

/// Writes the three split lists, each in id order.
fn write_split_lists(text_dir: &Path, splits: &[&str]) -> Result<(), StageError> {
    for (split, file) in SPLIT_FILES {
        let text: String = splits
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == split)
            .map(|(index, _)| image_id(index) + "\n")
            .collect();
        let path = text_dir.join(file);
        fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(())
}

fn utf8_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// Writes the ground-truth table (what each picture shows), used to colour embedding plots and
/// to check generated captions (`truth`).
fn write_scenes(out_dir: &Path, pictures: &[Picture], splits: &[&str]) -> Result<(), StageError> {
    let path = out_dir.join(SCENES_TABLE);
    let schema = Arc::new(Schema::new(vec![
        utf8_field("image_id"),
        utf8_field("split"),
        Field::new("n_objects", DataType::UInt32, false),
        utf8_field("shape"),
        utf8_field("colour"),
        utf8_field("background"),
        utf8_field("relation"),
        utf8_field("shape2"),
        utf8_field("colour2"),
    ]));
    let scenes = || pictures.iter().map(|p| &p.scene);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..pictures.len()).map(image_id),
        )),
        Arc::new(StringArray::from_iter_values(splits.iter().copied())),
        Arc::new(UInt32Array::from_iter_values(
            scenes().map(|s| s.objects.len() as u32),
        )),
        Arc::new(StringArray::from_iter_values(
            scenes().map(|s| s.main().shape.name()),
        )),
        Arc::new(StringArray::from_iter_values(
            scenes().map(|s| s.main().colour.name()),
        )),
        Arc::new(StringArray::from_iter_values(
            scenes().map(|s| s.background.name()),
        )),
        Arc::new(StringArray::from_iter_values(
            scenes().map(|s| s.relation().map_or("", |r| r.name())),
        )),
        // The second object of a pair (empty otherwise: a group's objects are all alike).
        Arc::new(StringArray::from_iter_values(
            scenes().map(|s| s.relation().map_or("", |_| s.objects[1].shape.name())),
        )),
        Arc::new(StringArray::from_iter_values(scenes().map(|s| {
            s.relation().map_or("", |_| s.objects[1].colour.name())
        }))),
    ];
    write_parquet(&path, &batch(&path, schema, columns)?)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::flickr::testing::{column_names, read_parquet, strings, u32s};
    use crate::flickr::{read_caption_file, Splits};
    use crate::{NoProgress, ParamValue, Progress};

    fn params(overrides: &[(&str, ParamValue)]) -> Params {
        let given = overrides
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        Params::with_defaults(KIND.params, given)
    }

    fn generate_with(
        out_dir: &Path,
        overrides: &[(&str, ParamValue)],
        progress: &dyn Progress,
    ) -> Result<StageReport, StageError> {
        let params = params(overrides);
        let job = crate::StageJob::new("demo_data", "demo", params, Vec::new(), out_dir, out_dir);
        let ctx = StageContext::new(&job, progress);
        (KIND.run)(&ctx)
    }

    fn generate(out_dir: &Path, overrides: &[(&str, ParamValue)]) -> StageReport {
        generate_with(out_dir, overrides, &NoProgress).unwrap()
    }

    /// A small, fast dataset.
    fn small(images: i64, seed: i64) -> Vec<(&'static str, ParamValue)> {
        vec![
            ("images", ParamValue::Int(images)),
            ("seed", ParamValue::Int(seed)),
            ("image_size", ParamValue::Int(64)),
        ]
    }

    /// Every file under `dir`, by path relative to it.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut found = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            for entry in fs::read_dir(&current).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(dir).unwrap().display().to_string();
                    found.insert(relative, fs::read(&path).unwrap());
                }
            }
        }
        found
    }

    fn text(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(TEXT_DIR).join(file)).unwrap()
    }

    #[test]
    fn same_params_give_identical_files_and_another_seed_differs() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        generate(first.path(), &small(30, 11));
        generate(second.path(), &small(30, 11));
        generate(other.path(), &small(30, 12));
        let (first, second, other) = (
            files(first.path()),
            files(second.path()),
            files(other.path()),
        );
        assert_eq!(first.len(), 30 + 5 + 1);
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            second.keys().collect::<Vec<_>>()
        );
        for (path, bytes) in &first {
            assert!(
                second[path] == *bytes,
                "{path} differs between identical runs"
            );
        }
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>()
        );
        let changed = first
            .iter()
            .filter(|(path, bytes)| path.ends_with(".jpg") && other[*path] != **bytes)
            .count();
        assert_eq!(changed, 30, "every picture should change with the seed");
        let tokens = format!("{TEXT_DIR}/{TOKEN_FILE}");
        assert_ne!(first[&tokens], other[&tokens]);
    }

    #[test]
    fn pictures_do_not_depend_on_how_many_are_made() {
        let few = tempfile::tempdir().unwrap();
        let more = tempfile::tempdir().unwrap();
        generate(few.path(), &small(10, 5));
        generate(more.path(), &small(20, 5));
        let (few, more) = (files(few.path()), files(more.path()));
        for (path, bytes) in few.iter().filter(|(path, _)| path.ends_with(".jpg")) {
            assert!(more[path] == *bytes, "{path} changed");
        }
    }

    #[test]
    fn layout_captions_and_splits() {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(dir.path(), &small(40, 1));
        assert_eq!(
            report.notes,
            ["40 images (28 train, 6 dev, 6 test), 200 captions"]
        );
        assert!(report.warnings.is_empty());
        let root = dir.path();

        let mut jpgs: Vec<String> = fs::read_dir(root.join(IMAGE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        jpgs.sort();
        let expected: Vec<String> = (0..40).map(image_id).collect();
        assert_eq!(jpgs, expected);
        assert_eq!(expected[7], "demo_000007.jpg");

        // Both caption files parse cleanly with the same reader the later stages use, with the
        // same keys in the same order and five captions per picture.
        let tokens = read_caption_file(&root.join(TEXT_DIR).join(TOKEN_FILE), &NoProgress).unwrap();
        let lemmas = read_caption_file(&root.join(TEXT_DIR).join(LEMMA_FILE), &NoProgress).unwrap();
        assert!(tokens.skipped.is_empty() && lemmas.skipped.is_empty());
        assert_eq!(tokens.captions.len(), 200);
        let keys = |file: &crate::flickr::CaptionFile| -> Vec<(String, u32)> {
            file.captions
                .iter()
                .map(|c| (c.image.clone(), c.number))
                .collect()
        };
        let expected_keys: Vec<(String, u32)> = (0..40)
            .flat_map(|i| (0..5).map(move |n| (image_id(i), n)))
            .collect();
        assert_eq!(keys(&tokens), expected_keys);
        assert_eq!(keys(&lemmas), expected_keys);
        for caption in &tokens.captions {
            let text = &caption.text;
            assert!(text.ends_with(" ."), "{text}");
            assert!(text.starts_with(|c: char| c.is_ascii_uppercase()), "{text}");
            let words = text.split(' ').count() - 1;
            assert!((4..=14).contains(&words), "{text}");
        }
        for picture in tokens.captions.chunks(5) {
            let distinct: BTreeSet<&str> = picture.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(distinct.len(), 5);
        }
        for caption in &lemmas.captions {
            let words: Vec<&str> = caption.text.split(' ').collect();
            assert!(
                !words.contains(&"is") && !words.contains(&"are"),
                "{}",
                caption.text
            );
            let plural = |word: &&str| scene::SHAPES.iter().any(|s| s.plural() == *word);
            assert!(!words.iter().any(plural), "{}", caption.text);
        }

        let splits = Splits::read(root).unwrap();
        assert_eq!(splits.len(), 40);
        assert_eq!(
            [
                splits.count("train"),
                splits.count("dev"),
                splits.count("test")
            ],
            [28, 6, 6]
        );
        for id in &expected {
            assert_ne!(splits.split_of(id), crate::flickr::NO_SPLIT);
        }
        // The shuffle spreads dev and test over the ids rather than taking the last ones.
        let dev_list = text(root, SPLIT_FILES[1].1);
        assert_ne!(
            dev_list.lines().collect::<Vec<_>>(),
            expected[28..34]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );

        let table = read_parquet(&root.join(SCENES_TABLE));
        assert_eq!(
            column_names(&table),
            [
                "image_id",
                "split",
                "n_objects",
                "shape",
                "colour",
                "background",
                "relation",
                "shape2",
                "colour2"
            ]
        );
        assert_eq!(strings(&table, "image_id"), expected);
        let table_splits = strings(&table, "split");
        for (id, split) in expected.iter().zip(&table_splits) {
            assert_eq!(splits.split_of(id), split);
        }
    }

    #[test]
    fn table_and_captions_agree_with_the_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let seed = 3;
        let mut overrides = small(60, seed);
        overrides[2] = ("image_size", ParamValue::Int(96));
        generate(dir.path(), &overrides);
        let root = dir.path();
        let table = read_parquet(&root.join(SCENES_TABLE));
        let tokens = read_caption_file(&root.join(TEXT_DIR).join(TOKEN_FILE), &NoProgress).unwrap();
        let lemmas = read_caption_file(&root.join(TEXT_DIR).join(LEMMA_FILE), &NoProgress).unwrap();
        let (shapes, colours) = (strings(&table, "shape"), strings(&table, "colour"));
        let (backgrounds, relations) = (strings(&table, "background"), strings(&table, "relation"));
        let counts = u32s(&table, "n_objects");
        let mut pairs = 0;

        for index in 0..60 {
            let scene = describe(&mut image_rng(seed as u64, index)).scene;
            let main = scene.main();
            assert_eq!(shapes[index], main.shape.name());
            assert_eq!(colours[index], main.colour.name());
            assert_eq!(backgrounds[index], scene.background.name());
            assert_eq!(counts[index] as usize, scene.objects.len());
            assert_eq!(relations[index], scene.relation().map_or("", |r| r.name()));
            pairs += usize::from(!relations[index].is_empty());

            for caption in &tokens.captions[index * 5..index * 5 + 5] {
                let text = caption.text.to_lowercase();
                let words: Vec<&str> = text.split(' ').collect();
                assert!(words.contains(&colours[index].as_str()), "{text}");
                assert!(
                    words.contains(&main.shape.name()) || words.contains(&main.shape.plural()),
                    "{text}"
                );
            }
            for caption in &lemmas.captions[index * 5..index * 5 + 5] {
                let text = caption.text.to_lowercase();
                let words: Vec<&str> = text.split(' ').collect();
                assert!(words.contains(&colours[index].as_str()), "{text}");
                assert!(words.contains(&shapes[index].as_str()), "{text}");
            }

            // The centre of every object shows that object's colour: of all colours the
            // picture could contain, its own is the nearest.
            let path = root.join(IMAGE_DIR).join(image_id(index));
            let picture = image::open(&path).unwrap().to_rgb8();
            assert_eq!(picture.dimensions(), (96, 96));
            let mut palette: Vec<(&str, [u8; 3])> =
                scene::COLOURS.iter().map(|c| (c.name(), c.rgb())).collect();
            palette.push(("background", scene.background.rgb()));
            for object in &scene.objects {
                let x = (object.x * 96.0) as u32;
                let y = (object.y * 96.0) as u32;
                let pixel = picture.get_pixel(x, y).0;
                let distance = |rgb: [u8; 3]| -> i32 {
                    rgb.iter()
                        .zip(pixel)
                        .map(|(&a, b)| (i32::from(a) - i32::from(b)).pow(2))
                        .sum()
                };
                let nearest = palette
                    .iter()
                    .min_by_key(|(_, rgb)| distance(*rgb))
                    .unwrap();
                assert_eq!(
                    nearest.0,
                    object.colour.name(),
                    "{} at ({x}, {y}) is {pixel:?} in {scene:?}",
                    image_id(index)
                );
            }
        }
        assert!(pairs > 0, "60 pictures should include a pair");
    }

    #[test]
    fn pictures_have_the_requested_size() {
        for size in [32, 75] {
            let dir = tempfile::tempdir().unwrap();
            let mut overrides = small(10, 0);
            overrides[2] = ("image_size", ParamValue::Int(size));
            generate(dir.path(), &overrides);
            for index in 0..10 {
                let path = dir.path().join(IMAGE_DIR).join(image_id(index));
                let picture = image::open(&path).unwrap();
                assert_eq!(
                    (picture.width(), picture.height()),
                    (size as u32, size as u32)
                );
            }
        }
    }

    #[test]
    fn fractions_round_and_may_be_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut overrides = small(11, 0);
        overrides.push(("dev_fraction", ParamValue::Float(0.0)));
        overrides.push(("test_fraction", ParamValue::Float(0.5)));
        let report = generate(dir.path(), &overrides);
        assert_eq!(
            report.notes,
            ["11 images (5 train, 0 dev, 6 test), 55 captions"]
        );
        assert_eq!(text(dir.path(), SPLIT_FILES[1].1), "");
        assert_eq!(text(dir.path(), SPLIT_FILES[2].1).lines().count(), 6);
    }

    #[test]
    fn fractions_that_leave_no_training_pictures_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut overrides = small(11, 0);
        overrides.push(("dev_fraction", ParamValue::Float(0.5)));
        overrides.push(("test_fraction", ParamValue::Float(0.5)));
        let err = generate_with(dir.path(), &overrides, &NoProgress).unwrap_err();
        assert!(
            matches!(&err, StageError::Param { name, .. } if name == "test_fraction"),
            "{err}"
        );
        assert!(err.to_string().contains("no training pictures"), "{err}");
    }

    #[test]
    fn out_of_range_params_are_rejected_even_without_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [
            ("images", ParamValue::Int(3)),
            ("seed", ParamValue::Int(-1)),
            ("image_size", ParamValue::Int(2000)),
            ("dev_fraction", ParamValue::Float(0.9)),
        ] {
            let err = generate_with(dir.path(), &[(name, value)], &NoProgress).unwrap_err();
            assert!(
                matches!(&err, StageError::Param { name: n, .. } if n == name),
                "{err}"
            );
        }
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn unwritable_output_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the image folder should go.
        fs::write(dir.path().join(IMAGE_DIR), "").unwrap();
        let err = generate_with(dir.path(), &small(10, 0), &NoProgress).unwrap_err();
        assert!(
            matches!(&err, StageError::Io { path, .. } if path.ends_with(IMAGE_DIR)),
            "{err}"
        );
    }

    struct Counter {
        started: AtomicU64,
        done: AtomicU64,
    }

    impl Progress for Counter {
        fn start(&self, len: u64, _what: &str) {
            self.started.store(len, Ordering::SeqCst);
        }
        fn inc(&self, n: u64) {
            self.done.fetch_add(n, Ordering::SeqCst);
        }
    }

    #[test]
    fn progress_counts_every_picture() {
        let dir = tempfile::tempdir().unwrap();
        let counter = Counter {
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
        };
        generate_with(dir.path(), &small(12, 0), &counter).unwrap();
        assert_eq!(counter.started.load(Ordering::SeqCst), 12);
        assert_eq!(counter.done.load(Ordering::SeqCst), 12);
    }

    #[test]
    fn kind_is_registered_with_documented_params() {
        let kind = crate::kind("demo_data").unwrap();
        assert!(!kind.about.is_empty());
        let names: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "images",
                "seed",
                "image_size",
                "dev_fraction",
                "test_fraction",
                "layout"
            ]
        );
        assert!(kind.params.iter().all(|p| !p.help.is_empty()));
        let sources = (kind.sources)(&params(&[]), &[], Path::new(".")).unwrap();
        assert!(sources.is_empty());
    }

    /// The default dataset, timed: run with `--release --nocapture` to see the speed.
    #[test]
    fn default_params_make_the_full_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let report = generate(dir.path(), &[]);
        let elapsed = started.elapsed();
        println!("demo_data defaults: {report:?} in {elapsed:.2?}");
        assert_eq!(
            report.notes,
            ["1000 images (700 train, 150 dev, 150 test), 5000 captions"]
        );
        let picture = image::open(dir.path().join(IMAGE_DIR).join(image_id(999))).unwrap();
        assert_eq!((picture.width(), picture.height()), (128, 128));
    }
}
