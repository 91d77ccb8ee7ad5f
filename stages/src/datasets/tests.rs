use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::*;
use crate::captions::{self, CAPTIONS_TABLE, SKIPPED_TABLE, VOCAB_TABLE};
use crate::flickr::testing::{
    column_names, read_parquet, run_on_root, strings, u32_lists, u32s, write_text_files,
};
use crate::{NoProgress, ParamValue};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flickr8k-text")
        .join(name)
}

fn write_json(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

fn str_param(value: &str) -> ParamValue {
    ParamValue::Str(value.to_string())
}

/// Params given on top of a kind's defaults.
type Overrides<'a> = Vec<(&'a str, ParamValue)>;

/// A captions table as sorted rows, so tables from files in different orders compare.
type Row = (String, u32, String, Vec<u32>, String);

fn caption_rows(out: &Path) -> Vec<Row> {
    let table = read_parquet(&out.join(CAPTIONS_TABLE));
    let ids = strings(&table, "image_id");
    let numbers = u32s(&table, "caption_no");
    let texts = strings(&table, "caption");
    let tokens = u32_lists(&table, "tokens");
    let splits = strings(&table, "split");
    let mut rows: Vec<Row> = (0..ids.len())
        .map(|i| {
            (
                ids[i].clone(),
                numbers[i],
                texts[i].clone(),
                tokens[i].clone(),
                splits[i].clone(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn vocab_rows(out: &Path) -> Vec<(String, u32)> {
    let table = read_parquet(&out.join(VOCAB_TABLE));
    let tokens = strings(&table, "token");
    let ids = u32s(&table, "token_id");
    tokens.into_iter().zip(ids).collect()
}

/// The real Flickr8k captions with full split lists: the real train list, and the other 2,092
/// captioned images (the odd `.jpg.1` one included) split in halves, sorted, into dev and test.
struct RealFlickr8k {
    /// (image, captions in order) in order of first appearance.
    images: Vec<(String, Vec<String>)>,
    split: BTreeMap<String, &'static str>,
    token_text: String,
    lists: [String; 3],
}

fn real_flickr8k() -> RealFlickr8k {
    let token_text = fs::read_to_string(fixture("Flickr8k.token.txt")).unwrap();
    let train_text = fs::read_to_string(fixture("Flickr_8k.trainImages.txt")).unwrap();
    let file = flickr::read_caption_file(&fixture("Flickr8k.token.txt"), &NoProgress).unwrap();
    let mut images: Vec<(String, Vec<String>)> = Vec::new();
    for line in &file.captions {
        match images.last_mut() {
            Some((image, texts)) if *image == line.image => texts.push(line.text.clone()),
            _ => images.push((line.image.clone(), vec![line.text.clone()])),
        }
    }
    // Each image's lines are consecutive and numbered from 0: what Karpathy's order assumes.
    assert_eq!(images.len(), 8_092);
    let train: HashSet<&str> = train_text.lines().map(str::trim).collect();
    let mut rest: Vec<&str> = images
        .iter()
        .map(|(image, _)| image.as_str())
        .filter(|image| !train.contains(image))
        .collect();
    rest.sort_unstable();
    let (dev, test) = rest.split_at(rest.len() / 2);
    let mut split = BTreeMap::new();
    for (names, name) in [
        (train.iter().copied().collect::<Vec<_>>(), "train"),
        (dev.to_vec(), "dev"),
        (test.to_vec(), "test"),
    ] {
        for image in names {
            split.insert(image.to_string(), name);
        }
    }
    let lists = [dev, test].map(|names| names.join("\n") + "\n");
    RealFlickr8k {
        images,
        split,
        token_text,
        lists: [train_text, lists[0].clone(), lists[1].clone()],
    }
}

impl RealFlickr8k {
    fn karpathy(&self) -> Value {
        let images: Vec<Value> = self
            .images
            .iter()
            .enumerate()
            .map(|(index, (image, texts))| {
                let split = match self.split[image] {
                    "dev" => "val",
                    other => other,
                };
                let sentences: Vec<Value> = texts
                    .iter()
                    .map(|raw| json!({"raw": raw, "tokens": ["ignored"], "imgid": index}))
                    .collect();
                json!({"filename": image, "imgid": index, "split": split,
                       "sentences": sentences})
            })
            .collect();
        json!({"dataset": "flickr8k", "images": images})
    }

    /// COCO annotations for the images `keep` accepts, ids counted from `first_id`.
    fn coco(&self, keep: impl Fn(&str) -> bool) -> Value {
        let mut images = Vec::new();
        let mut annotations = Vec::new();
        for (index, (image, texts)) in self.images.iter().enumerate() {
            if !keep(image) {
                continue;
            }
            let id = 1000 + index * 7;
            images.push(json!({"id": id, "file_name": image, "license": 3}));
            for text in texts {
                annotations.push(json!({"id": annotations.len(), "image_id": id,
                                        "caption": text}));
            }
        }
        json!({"info": {"year": 2014}, "images": images, "annotations": annotations})
    }
}

#[test]
fn real_flickr8k_reads_the_same_in_all_three_formats() {
    let real = real_flickr8k();
    let dir = tempfile::tempdir().unwrap();
    let flickr8k = dir.path().join("flickr8k");
    write_text_files(
        &flickr8k,
        &real.token_text,
        [&real.lists[0], &real.lists[1], &real.lists[2]],
    );
    let karpathy = dir.path().join("karpathy");
    write_json(&karpathy.join("dataset_flickr8k.json"), &real.karpathy());
    let coco_by_file = dir.path().join("coco");
    for (set, split) in [
        ("train2014", "train"),
        ("val2014", "dev"),
        ("test2014", "test"),
    ] {
        let path = coco_by_file.join(format!("annotations/captions_{set}.json"));
        write_json(&path, &real.coco(|image| real.split[image] == split));
    }
    // One file whose set names no split: the split comes from the Karpathy file.
    let coco_karpathy = dir.path().join("coco-karpathy");
    write_json(
        &coco_karpathy.join("annotations/captions_all.json"),
        &real.coco(|_| true),
    );
    let karpathy_file = karpathy.join("dataset_flickr8k.json");
    let karpathy_param = ("karpathy", str_param(karpathy_file.to_str().unwrap()));

    let runs: [(&str, &Path, Overrides); 4] = [
        ("flickr8k", &flickr8k, vec![]),
        ("karpathy", &karpathy, vec![]),
        ("coco", &coco_by_file, vec![]),
        (
            "coco + karpathy split",
            &coco_karpathy,
            vec![karpathy_param],
        ),
    ];
    let mut outputs = Vec::new();
    for (name, root, params) in &runs {
        let out = dir.path().join(format!("out-{}", name.replace(' ', "")));
        let started = Instant::now();
        let report = run_on_root(&captions::KIND, root, params, &out).unwrap();
        println!(
            "{name}: captions stage in {:.2?}: {:?}",
            started.elapsed(),
            report.notes
        );
        assert!(report.warnings.is_empty(), "{name}: {:?}", report.warnings);
        assert!(
            report.notes.last().unwrap().starts_with(&format!(
                "format {} (detected)",
                name.split(' ').next().unwrap()
            )),
            "{name}: {:?}",
            report.notes
        );
        outputs.push(out);
    }

    let expected = caption_rows(&outputs[0]);
    assert_eq!(expected.len(), 40_460);
    let per_split = |split: &str| expected.iter().filter(|row| row.4 == split).count();
    assert_eq!(
        [per_split("train"), per_split("dev"), per_split("test")],
        [30_000, 5_230, 5_230]
    );
    let vocab = vocab_rows(&outputs[0]);
    assert!(vocab.len() > 7_000, "{}", vocab.len());
    for ((name, _, _), out) in runs.iter().zip(&outputs).skip(1) {
        let rows = caption_rows(out);
        assert_eq!(rows.len(), expected.len(), "{name}");
        if let Some(i) = (0..rows.len()).find(|&i| rows[i] != expected[i]) {
            panic!(
                "{name}: row {i} is {:?}, expected {:?}",
                rows[i], expected[i]
            );
        }
        assert!(vocab_rows(out) == vocab, "{name}: another vocabulary");
        assert_eq!(read_parquet(&out.join(SKIPPED_TABLE)).num_rows(), 0);
    }
    // Karpathy's order is the token file's, so even the row order is the same.
    let karpathy_table = read_parquet(&outputs[1].join(CAPTIONS_TABLE));
    let flickr_table = read_parquet(&outputs[0].join(CAPTIONS_TABLE));
    assert_eq!(
        strings(&karpathy_table, "image_id"),
        strings(&flickr_table, "image_id")
    );

    // Reading alone, without tokenising, timed per format.
    for (name, root, params) in &runs {
        let mut given: BTreeMap<String, ParamValue> = params
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        given.insert("root".into(), str_param(root.to_str().unwrap()));
        let params = Params::with_defaults(captions::KIND.params, given);
        let options = Options::from_params(&params, dir.path()).unwrap();
        let started = Instant::now();
        let dataset = Dataset::read(root, &options, &NoProgress).unwrap();
        println!(
            "{name}: read {} captions in {:.2?}",
            dataset.captions.len(),
            started.elapsed()
        );
        assert_eq!(dataset.captions.len(), 40_460);
    }
}

/// A Flickr30k-style folder: the token file at the root and no split lists.
fn flickr30k_root(dir: &Path, images: usize) -> PathBuf {
    let root = dir.join("flickr30k");
    fs::create_dir_all(&root).unwrap();
    let mut text = String::new();
    for image in 0..images {
        for number in 0..5 {
            text.push_str(&format!(
                "{image}.jpg#{number}\tpicture {image} caption {number}\n"
            ));
        }
    }
    fs::write(root.join(FLICKR30K_TOKEN_FILE), text).unwrap();
    root
}

fn image_splits(out: &Path) -> BTreeMap<String, String> {
    let table = read_parquet(&out.join(CAPTIONS_TABLE));
    strings(&table, "image_id")
        .into_iter()
        .zip(strings(&table, "split"))
        .collect()
}

#[test]
fn a_token_file_without_split_lists_is_split_by_seed_and_fractions() {
    let dir = tempfile::tempdir().unwrap();
    let root = flickr30k_root(dir.path(), 200);
    let run = |name: &str, params: &[(&str, ParamValue)]| {
        let out = dir.path().join(name);
        let report = run_on_root(&captions::KIND, &root, params, &out).unwrap();
        (image_splits(&out), report)
    };
    let (first, report) = run("a", &[]);
    assert!(
        report.notes.last().unwrap().contains(
            "results_20130124.token, no split lists: seeded split (seed 0, dev_fraction 0.15, \
             test_fraction 0.15)"
        ),
        "{:?}",
        report.notes
    );
    let count = |splits: &BTreeMap<String, String>, split: &str| {
        splits.values().filter(|s| *s == split).count()
    };
    assert_eq!(first.len(), 200);
    assert_eq!(
        [
            count(&first, "train"),
            count(&first, "dev"),
            count(&first, "test")
        ],
        [140, 30, 30]
    );
    let (again, _) = run("b", &[]);
    assert_eq!(first, again, "the same seed gives the same split");
    let (other, _) = run("c", &[("seed", ParamValue::Int(1))]);
    let moved = first.iter().filter(|(k, v)| other[*k] != **v).count();
    assert!(moved > 20, "another seed moved only {moved} images");
    let fractions = [
        ("dev_fraction", ParamValue::Float(0.1)),
        ("test_fraction", ParamValue::Float(0.25)),
    ];
    let (fractioned, _) = run("d", &fractions);
    assert_eq!(
        [count(&fractioned, "dev"), count(&fractioned, "test")],
        [20, 50]
    );
    // The split does not depend on the order of the lines.
    let token = root.join(FLICKR30K_TOKEN_FILE);
    let mut lines: Vec<String> = fs::read_to_string(&token)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.reverse();
    fs::write(&token, lines.join("\n")).unwrap();
    let (reversed, _) = run("e", &[]);
    assert_eq!(first, reversed);

    // A Karpathy file replaces the seeded split.
    let karpathy = dir.path().join("dataset_flickr30k.json");
    let entries: Vec<Value> = (0..200)
        .map(|i| {
            let split = ["train", "val", "test", "restval"][i % 4];
            json!({"filename": format!("{i}.jpg"), "split": split, "sentences": []})
        })
        .collect();
    write_json(&karpathy, &json!({"images": entries}));
    let with_file = [("karpathy", str_param("dataset_flickr30k.json"))];
    let (split_by_file, _) = run("f", &with_file);
    assert_eq!(split_by_file["1.jpg"], "dev");
    assert_eq!(split_by_file["2.jpg"], "test");
    assert_eq!(split_by_file["3.jpg"], "train");
    let restval_dev = [
        ("karpathy", str_param("dataset_flickr30k.json")),
        ("restval", str_param("dev")),
    ];
    let (restval, _) = run("g", &restval_dev);
    assert_eq!(restval["3.jpg"], "dev");

    let too_much = [
        ("dev_fraction", ParamValue::Float(0.5)),
        ("test_fraction", ParamValue::Float(0.5)),
    ];
    let err = run_on_root(&captions::KIND, &root, &too_much, &dir.path().join("h")).unwrap_err();
    assert!(err.to_string().contains("no training images"), "{err}");
}

fn run_error(root: &Path, params: &[(&str, ParamValue)]) -> String {
    let out = root.parent().unwrap().join("out");
    run_on_root(&captions::KIND, root, params, &out)
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_json_and_missing_keys_name_the_file_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("k");
    let file = root.join("dataset_x.json");
    let cases: [(Value, &str); 6] = [
        (
            json!({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]},
                              {"filename": "b.jpg", "sentences": []}]}),
            "dataset_x.json:1: images[1]: missing field `split`",
        ),
        (
            json!({"images": [{"filename": "a.jpg", "split": "train",
                               "sentences": [{"raw": "x"}, {"tokens": ["y"]}]}]}),
            "dataset_x.json:1: images[0].sentences[1]: missing field `raw`",
        ),
        (
            json!({"images": [{"filename": 7, "split": "train", "sentences": []}]}),
            "dataset_x.json:1: images[0].filename: invalid type: integer `7`, expected a string",
        ),
        (
            json!({"images": [{"filename": "a.jpg", "split": "validation", "sentences": []}]}),
            "dataset_x.json: images[0].split: \"validation\" is not one of train, val, test, \
             restval",
        ),
        (
            json!({"images": [{"filename": "a.jpg", "split": "val", "sentences": []},
                              {"filename": "a.jpg", "split": "val", "sentences": []}]}),
            "dataset_x.json: images[1].filename: `a.jpg` is already the file name of images[0]",
        ),
        (
            json!({"pictures": []}),
            "dataset_x.json:1: missing field `images`",
        ),
    ];
    for (value, expected) in cases {
        write_json(&file, &value);
        let err = run_error(&root, &[]);
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
    fs::write(&file, "{\"images\": [\n{\"filename\": \"a.jpg\",,}]}").unwrap();
    let err = run_error(&root, &[]);
    assert!(
        err.contains("dataset_x.json:2: images[0]: key must be a string (column 22)"),
        "{err}"
    );

    let root = dir.path().join("c");
    let file = root.join("annotations/captions_val2014.json");
    let cases: [(Value, &str); 3] = [
        (
            json!({"images": [{"id": 1, "file_name": "a.jpg"}],
                   "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1}]}),
            "captions_val2014.json:1: annotations[1]: missing field `caption`",
        ),
        (
            json!({"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []}),
            "captions_val2014.json:1: images[0].id: invalid type: string \"1\", expected u64",
        ),
        (
            json!({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
                   "annotations": []}),
            "captions_val2014.json: images[1].id: 1 is already the id of images[0]",
        ),
    ];
    for (value, expected) in cases {
        write_json(&file, &value);
        let err = run_error(&root, &[]);
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
}

#[test]
fn bad_coco_entries_are_skipped_and_recorded_with_their_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coco");
    write_json(
        &root.join("annotations/captions_train2014.json"),
        &json!({"images": [{"id": 5, "file_name": "a.jpg"}, {"id": 6, "file_name": "b.jpg"},
                           {"id": 7, "file_name": "c.jpg"}],
                "annotations": [{"image_id": 5, "caption": "A dog runs.\n"},
                                {"image_id": 9, "caption": "Nobody's picture"},
                                {"image_id": 6, "caption": "  "},
                                {"image_id": 6, "caption": "A cat sits"},
                                {"image_id": 5, "caption": "A dog sits"}]}),
    );
    write_json(
        &root.join("annotations/captions_val2014.json"),
        &json!({"images": [{"id": 5, "file_name": "d.jpg"}],
                "annotations": [{"image_id": 5, "caption": "A bird"}]}),
    );
    let out = dir.path().join("out");
    let report = run_on_root(&captions::KIND, &root, &[], &out).unwrap();
    assert_eq!(
        report.warnings,
        [
            "captions_train2014.json: skipped 2 entries: 1 with an empty caption \
             (annotations[2]), 1 naming an image id no image has (annotations[1])",
            "captions_train2014.json, captions_val2014.json: 1 images have no caption: c.jpg"
        ]
    );
    let rows = caption_rows(&out);
    let brief: Vec<(&str, u32, &str, &str)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1, r.2.as_str(), r.4.as_str()))
        .collect();
    assert_eq!(
        brief,
        [
            ("a.jpg", 0, "A dog runs.", "train"),
            ("a.jpg", 1, "A dog sits", "train"),
            ("b.jpg", 0, "A cat sits", "train"),
            ("d.jpg", 0, "A bird", "dev"),
        ]
    );
    let skipped = read_parquet(&out.join(SKIPPED_TABLE));
    assert_eq!(
        column_names(&skipped),
        ["file", "line", "entry", "reason", "text"]
    );
    assert_eq!(
        strings(&skipped, "entry"),
        ["annotations[1]", "annotations[2]"]
    );
    assert_eq!(
        strings(&skipped, "reason"),
        ["unknown image id", "empty caption"]
    );
    assert_eq!(skipped.column_by_name("line").unwrap().null_count(), 2);
    assert!(report
        .notes
        .last()
        .unwrap()
        .starts_with("format coco (detected): annotations/captions_train2014.json, annotations/captions_val2014.json, split from each file's set"));

    // A set whose name gives no split is an error unless a Karpathy file gives the splits.
    fs::rename(
        root.join("annotations/captions_val2014.json"),
        root.join("annotations/captions_2017.json"),
    )
    .unwrap();
    let err = run_error(&root, &[]);
    assert!(
        err.contains("captions_2017.json: the set `2017` names no split"),
        "{err}"
    );
}

#[test]
fn format_is_detected_and_an_empty_or_ambiguous_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    fs::create_dir_all(&root).unwrap();
    let err = detect(&root, false).unwrap_err().to_string();
    assert!(err.contains("data: no caption dataset found: looked for Flickr8k_text/ or results_20130124.token (flickr8k), dataset_*.json (karpathy), annotations/captions_*.json (coco)"), "{err}");
    // The stage says the same.
    let stage_err = run_error(&root, &[]);
    assert!(
        stage_err.contains("no caption dataset found"),
        "{stage_err}"
    );

    fs::write(root.join(FLICKR30K_TOKEN_FILE), "a.jpg#0\tx\n").unwrap();
    assert_eq!(detect(&root, false).unwrap(), Format::Flickr8k);
    fs::remove_file(root.join(FLICKR30K_TOKEN_FILE)).unwrap();
    fs::create_dir_all(root.join("annotations")).unwrap();
    fs::write(root.join("annotations/instances_val2014.json"), "{}").unwrap();
    assert!(detect(&root, false).is_err(), "not a caption file");
    fs::write(root.join("annotations/captions_val2014.json"), "{}").unwrap();
    assert_eq!(detect(&root, false).unwrap(), Format::Coco);
    fs::write(root.join("dataset_coco.json"), "{}").unwrap();
    let err = detect(&root, false).unwrap_err().to_string();
    assert!(
        err.contains(
            "holds more than one dataset format: karpathy (dataset_coco.json), coco \
             (annotations/captions_val2014.json); set the param `format`"
        ),
        "{err}"
    );
    // A Karpathy file given by param is the split of the format the folder holds.
    assert_eq!(detect(&root, true).unwrap(), Format::Coco);
    fs::remove_dir_all(root.join("annotations")).unwrap();
    assert_eq!(detect(&root, false).unwrap(), Format::Karpathy);
    fs::create_dir_all(root.join(flickr::TEXT_DIR)).unwrap();
    assert!(detect(&root, false).is_err());
    fs::remove_file(root.join("dataset_coco.json")).unwrap();
    assert_eq!(detect(&root, false).unwrap(), Format::Flickr8k);
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert_eq!(detect(&empty, true).unwrap(), Format::Karpathy);

    // A format given that the folder does not hold names what was looked for.
    let err = run_error(&root, &[("format", str_param("coco"))]);
    assert!(
        err.contains("annotations: no COCO caption annotations: looked for captions_*.json"),
        "{err}"
    );
    let err = run_error(&root, &[("format", str_param("karpathy"))]);
    assert!(
        err.contains("no Karpathy split file: looked for dataset_*.json"),
        "{err}"
    );
    let err = run_error(&empty, &[("format", str_param("flickr8k"))]);
    assert!(
        err.contains("no flickr8k caption file: looked for Flickr8k_text/Flickr8k.token.txt and results_20130124.token"),
        "{err}"
    );
}

#[test]
fn lemma_is_refused_where_there_are_no_lemmas() {
    let dir = tempfile::tempdir().unwrap();
    let root = flickr30k_root(dir.path(), 10);
    let err = run_error(&root, &[("variant", str_param("lemma"))]);
    assert!(
        err.contains("param `variant`: lemma captions exist only in Flickr8k's"),
        "{err}"
    );
}

fn params_for(kind: &crate::StageKind, root: &str, extra: &[(&str, &str)]) -> Params {
    let mut given = BTreeMap::new();
    given.insert("root".to_string(), str_param(root));
    for (name, value) in extra {
        given.insert(name.to_string(), str_param(value));
    }
    Params::with_defaults(kind.params, given)
}

#[test]
fn sources_name_each_formats_files_and_the_karpathy_file_by_param() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coco");
    for set in ["train2014", "val2014"] {
        write_json(
            &root.join(format!("annotations/captions_{set}.json")),
            &json!({"images": [], "annotations": []}),
        );
        fs::create_dir_all(root.join(set)).unwrap();
        fs::write(root.join(set).join(format!("{set}.jpg")), "").unwrap();
    }
    write_json(
        &dir.path().join("dataset_coco.json"),
        &json!({"images": []}),
    );
    let params = params_for(
        &crate::images::KIND,
        "coco",
        &[("karpathy", "dataset_coco.json")],
    );
    let sources = (crate::images::KIND.sources)(&params, &[], dir.path()).unwrap();
    let labels: Vec<String> = sources.iter().map(Source::label).collect();
    assert_eq!(
        labels,
        [
            "root/train2014/train2014.jpg",
            "root/val2014/val2014.jpg",
            "root/annotations/captions_train2014.json",
            "root/annotations/captions_val2014.json",
            "karpathy"
        ]
    );
    let params = params_for(&captions::KIND, "coco", &[]);
    let sources = (captions::KIND.sources)(&params, &[], dir.path()).unwrap();
    assert_eq!(sources.len(), 2);

    // With the dataset upstream, only the Karpathy file is external.
    let upstream = [crate::StageInput {
        name: "demo".into(),
        kind: "demo_data".into(),
        dir: root.clone(),
    }];
    let mut given = BTreeMap::new();
    given.insert("karpathy".to_string(), str_param("dataset_coco.json"));
    let params = Params::with_defaults(captions::KIND.params, given);
    let sources = (captions::KIND.sources)(&params, &upstream, dir.path()).unwrap();
    let labels: Vec<String> = sources.iter().map(Source::label).collect();
    assert_eq!(labels, ["karpathy"]);
    assert!(sources[0].path.is_absolute());
}

/// Runs `kind` on the output of a demo_data run as its upstream input.
fn run_on_demo(
    kind: &crate::StageKind,
    demo: &Path,
    out: &Path,
) -> Result<crate::StageReport, StageError> {
    let params = Params::with_defaults(kind.params, BTreeMap::new());
    let inputs = vec![crate::StageInput {
        name: "demo".into(),
        kind: "demo_data".into(),
        dir: demo.to_path_buf(),
    }];
    fs::create_dir_all(out).unwrap();
    let job = crate::StageJob::new(kind.name, "test", params, inputs, demo, out);
    (kind.run)(&crate::StageContext::new(&job, &NoProgress))
}

#[test]
fn the_demo_in_every_layout_gives_the_same_captions_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for layout in Format::NAMES {
        let demo = dir.path().join(format!("demo-{layout}"));
        fs::create_dir_all(&demo).unwrap();
        let mut given = BTreeMap::new();
        given.insert("images".to_string(), ParamValue::Int(40));
        given.insert("image_size".to_string(), ParamValue::Int(32));
        given.insert("layout".to_string(), str_param(layout));
        let params = Params::with_defaults(crate::demo_data::KIND.params, given);
        let job = crate::StageJob::new("demo_data", "demo", params, Vec::new(), &demo, &demo);
        (crate::demo_data::KIND.run)(&crate::StageContext::new(&job, &NoProgress)).unwrap();

        let captions_out = dir.path().join(format!("captions-{layout}"));
        let report = run_on_demo(&captions::KIND, &demo, &captions_out).unwrap();
        assert!(
            report.warnings.is_empty(),
            "{layout}: {:?}",
            report.warnings
        );
        assert!(
            report
                .notes
                .last()
                .unwrap()
                .starts_with(&format!("format {layout} (detected)")),
            "{:?}",
            report.notes
        );
        let images_out = dir.path().join(format!("images-{layout}"));
        let report = run_on_demo(&crate::images::KIND, &demo, &images_out).unwrap();
        assert!(
            report.warnings.is_empty(),
            "{layout}: {:?}",
            report.warnings
        );
        assert_eq!(
            report.notes[0],
            "40 images (28 train, 6 dev, 6 test, 0 none)"
        );
        let images = read_parquet(&images_out.join(crate::images::IMAGES_TABLE));
        let ids_splits: Vec<(String, String, String)> = strings(&images, "image_id")
            .into_iter()
            .zip(strings(&images, "split"))
            .zip(strings(&images, "hash"))
            .map(|((id, split), hash)| (id, split, hash))
            .collect();
        results.push((
            caption_rows(&captions_out),
            vocab_rows(&captions_out),
            ids_splits,
        ));
    }
    assert_eq!(results[0].0.len(), 200);
    for (layout, result) in Format::NAMES.iter().zip(&results).skip(1) {
        assert!(result.0 == results[0].0, "{layout}: other captions");
        assert!(result.1 == results[0].1, "{layout}: other vocabulary");
        assert!(result.2 == results[0].2, "{layout}: other images");
    }
}
