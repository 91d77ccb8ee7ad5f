//! The report stage on small hand-made upstream outputs: every section is there, every picture is
//! inlined and decodes, neighbours and found pictures are the right ones, text is escaped, and a
//! picture whose file changed since it was recorded fails the stage, naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::UInt32Array;
use base64::Engine as _;

use super::*;
use crate::params::ParamValue;
use crate::specs::embed::Vectors;
use crate::specs::evaluate::{
    ranks_columns, write_examples, write_metrics, write_per_image, write_ranks, ImageScores,
    PER_IMAGE_TABLE, RANKS_TABLE,
};
use crate::specs::train::write_log;
use crate::table::{nullable, required, string_column, u32_column, write_columns};
use crate::{NoProgress, Params, StageInput, StageJob};

fn strings_of(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

fn vectors(rows: &[[f32; 3]]) -> Vectors {
    Vectors {
        values: rows.iter().flatten().copied().collect(),
        dim: 3,
    }
}

/// Upstream outputs of a tiny pipeline: six pictures under `pictures/`, named relative to the
/// temporary folder (the files root).
struct Upstream {
    _root: tempfile::TempDir,
    train: PathBuf,
    evaluate: PathBuf,
    embed: PathBuf,
    tsne: PathBuf,
}

const IDS: [&str; 6] = ["img0", "img1", "img2", "img3", "img4", "broken"];

/// With `ranks_have_found` false, the ranks table is one an older `evaluate` wrote: without the
/// pictures inversion found.
fn upstream(ranks_have_found: bool) -> Upstream {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (pictures, train, evaluate, embed, tsne) = (
        dir("pictures"),
        dir("train"),
        dir("evaluate"),
        dir("embed"),
        dir("tsne"),
    );
    let mut paths = Vec::new();
    let mut hashes = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let path = pictures.join(format!("{id}.png"));
        let shade = 40 * i as u8;
        image::RgbImage::from_pixel(40, 30, image::Rgb([shade, 200 - shade, 90]))
            .save(&path)
            .unwrap();
        hashes.push(crate::hash_file(&path).unwrap());
        paths.push(format!("pictures/{id}.png"));
    }
    for plot in [IMAGE_PLOT, WORD_PLOT] {
        image::RgbImage::from_pixel(20, 20, image::Rgb([10, 20, 30]))
            .save(tsne.join(plot))
            .unwrap();
    }

    // img1 is img0's nearest picture; img3 is img2's.
    ImageEmbeddings {
        image_ids: strings_of(&IDS),
        splits: strings_of(&["test"; 6]),
        paths: paths.clone(),
        hashes,
        vectors: vectors(&[
            [1.0, 0.0, 0.0],
            [0.9, 0.2, 0.0],
            [0.0, 1.0, 0.0],
            [0.1, 0.9, 0.1],
            [0.0, 0.0, 1.0],
            [0.5, 0.5, 0.5],
        ]),
    }
    .write(&embed)
    .unwrap();
    WordEmbeddings {
        tokens: strings_of(&[
            "<pad>", "<start>", "<end>", "<unk>", "red", "crimson", "blue", "a",
        ]),
        counts: vec![0, 0, 0, 0, 9, 2, 7, 30],
        vectors: vectors(&[
            [1.0, 0.0, 0.0],
            [1.0, 0.01, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 1.0, 1.0],
            [0.0, 1.0, 0.0],
            [0.1, 0.95, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 1.0, 0.0],
        ]),
    }
    .write(&embed)
    .unwrap();
    let epoch = |epoch: u32, train_loss: f64, dev_loss: f64, dev_bleu4: f64| EpochLog {
        epoch,
        train_loss,
        dev_loss,
        dev_bleu4,
        dev_cider_d: f64::NAN,
        learning_rate: 1e-3,
        kept: false,
        seconds: 60.0,
        samples_per_second: 500.0,
    };
    write_log(
        &train,
        &[
            epoch(1, 2.0, 2.1, 0.1),
            epoch(2, 1.2, 1.5, 0.3),
            epoch(3, 0.9, 1.3, 0.4),
        ],
    )
    .unwrap();
    let metric = |name: &str, method: &str, value: f64| Metric {
        name: name.into(),
        method: method.into(),
        split: "test".into(),
        value,
    };
    write_metrics(
        &evaluate,
        &[
            metric("bleu4", "greedy", 0.614),
            metric("bleu4", "beam", 0.658),
            metric("r1", "invert", 0.505),
            metric("median_rank", "invert", 1.0),
            metric("odd", "x", 0.25),
        ],
    )
    .unwrap();
    let example = |row: usize, greedy: &str, beam: &str, reference: &str| Example {
        image_id: IDS[row].into(),
        path: paths[row].clone(),
        greedy: greedy.into(),
        beam: beam.into(),
        reference: reference.into(),
    };
    write_examples(
        &evaluate,
        &[
            example(0, "a <b>bold</b> dog", "a dog runs", "a dog"),
            example(2, "a cat", "a cat sits", "a cat"),
            example(5, "a thing", "a thing", "something"),
        ],
    )
    .unwrap();
    // Ten rows with beam CIDEr-D 0.0, 0.5, ..., 4.5 (the five readable pictures, twice).
    let scores: Vec<ImageScores> = (0..10)
        .map(|i| ImageScores {
            image_id: IDS[i % 5].to_string(),
            path: paths[i % 5].clone(),
            greedy: format!("greedy <{i}>"),
            beam: format!("beam <{i}>"),
            references: vec![format!("reference {i}"), "another".into()],
            bleu4_greedy: 0.01 * i as f64,
            bleu4_beam: 0.02 * i as f64,
            cider_d_greedy: 0.25 * i as f64,
            cider_d_beam: 0.5 * i as f64,
        })
        .collect();
    write_per_image(&evaluate, &scores).unwrap();
    let rank = |image_id: &str, caption_no: u32, caption: &str, invert_rank, found: &[&str]| Rank {
        image_id: image_id.into(),
        caption_no,
        caption: caption.into(),
        invert_rank,
        invert_found: strings_of(found),
        embed_rank: None,
    };
    let ranks = [
        rank("img0", 0, "a dog", 1, &["img0", "img1", "img4"]),
        rank("img0", 1, "a brown dog", 2, &["img1", "img0", "img4"]),
        rank("img2", 0, "a cat", 4, &["img1", "img4", "img3"]),
    ];
    if ranks_have_found {
        write_ranks(&evaluate, &ranks).unwrap();
    } else {
        write_old_ranks(&evaluate.join(RANKS_TABLE), &ranks);
    }
    Upstream {
        _root: root,
        train,
        evaluate,
        embed,
        tsne,
    }
}

/// The ranks table as it was before it listed the pictures inversion found.
fn write_old_ranks(path: &Path, ranks: &[Rank]) {
    use ranks_columns::*;
    write_columns(
        path,
        vec![
            required(IMAGE_ID, string_column(ranks.iter().map(|r| &r.image_id))),
            required(CAPTION_NO, u32_column(ranks.iter().map(|r| r.caption_no))),
            required(CAPTION, string_column(ranks.iter().map(|r| &r.caption))),
            required(INVERT_RANK, u32_column(ranks.iter().map(|r| r.invert_rank))),
            nullable(
                EMBED_RANK,
                Arc::new(UInt32Array::from_iter(ranks.iter().map(|r| r.embed_rank))),
            ),
        ],
    )
    .unwrap();
}

fn lineage() -> Vec<UpstreamRecord> {
    let record = |name: &str, kind: &str, inputs: &[&str], computed: bool| UpstreamRecord {
        name: name.into(),
        kind: kind.into(),
        key: format!("{:0<64}", name.len()),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        params: vec!["seed = 7".into()],
        seconds: 75.0,
        created_unix: 1_764_000_000,
        computed_in_run: computed,
    };
    vec![
        record("data", "demo_data", &[], false),
        record("train", "train", &["data"], true),
        record("evaluate", "evaluate", &["train", "data"], true),
        record("embed", "embed", &["train"], true),
        record("tsne", "tsne", &["embed"], true),
    ]
}

fn params(overrides: &[(&str, ParamValue)]) -> Params {
    Params::with_defaults(
        KIND.params,
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// Runs the stage; returns the page and the stage's report.
fn make_report(
    up: &Upstream,
    with_tsne: bool,
    params: &Params,
) -> Result<(String, StageReport, tempfile::TempDir), StageError> {
    let out = tempfile::tempdir().unwrap();
    let input = |name: &str, kind: &str, dir: &Path| StageInput {
        name: name.into(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
    };
    let mut inputs = vec![
        input("train", "train", &up.train),
        input("evaluate", "evaluate", &up.evaluate),
        input("embed", "embed", &up.embed),
    ];
    if with_tsne {
        inputs.push(input("tsne", "tsne", &up.tsne));
    }
    let records = lineage();
    let mut job = StageJob::new(
        "report",
        "report",
        params.clone(),
        inputs,
        Path::new("/"),
        out.path(),
    );
    job.lineage = records;
    job.files_root = Some(up._root.path().to_path_buf());
    let ctx = StageContext::new(&job, &NoProgress);
    let report = run(&ctx)?;
    let page = std::fs::read_to_string(out.path().join(REPORT_FILE)).unwrap();
    Ok((page, report, out))
}

/// The `src` of every `<img>` of the page.
fn image_sources(page: &str) -> Vec<&str> {
    page.split("<img ")
        .skip(1)
        .map(|tag| {
            let start = tag.find("src=\"").expect("an <img> without src") + 5;
            let end = start + tag[start..].find('"').unwrap();
            &tag[start..end]
        })
        .collect()
}

/// The part of the page inside section `id`.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<section id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no section {id}"));
    let end = start + page[start..].find("</section>").unwrap();
    &page[start..end]
}

#[test]
fn every_section_is_there_in_order_and_every_picture_is_inlined() {
    let up = upstream(true);
    let (page, report, out) = make_report(&up, true, &params(&[])).unwrap();
    let positions: Vec<usize> = SECTIONS
        .iter()
        .map(|id| page.find(&format!("<section id=\"{id}\">")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    let sources = image_sources(&page);
    // Graph, curves, two maps, and thumbnails.
    assert!(sources.len() > 10, "{}", sources.len());
    for src in sources {
        let (header, payload) = src.split_once(',').unwrap();
        assert!(
            header == "data:image/png;base64" || header == "data:image/jpeg;base64",
            "{header}"
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        image::load_from_memory(&bytes).unwrap();
    }
    // Nothing to fetch: no address of any other resource, on the network or on disk.
    for scheme in ["http:", "https:", "file:", "src=\"/"] {
        assert!(
            !page.contains(scheme),
            "the page refers to a {scheme} resource"
        );
    }
    assert!(out.path().join(PIPELINE_PLOT).is_file());
    assert!(out.path().join(TRAINING_PLOT).is_file());
    assert!(
        report.notes[0].starts_with(REPORT_FILE),
        "{:?}",
        report.notes
    );
}

#[test]
fn a_picture_that_changed_since_it_was_recorded_fails_the_stage() {
    let up = upstream(true);
    let (_, report, _out) = make_report(&up, true, &params(&[])).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    std::fs::write(
        up._root.path().join("pictures/broken.png"),
        b"not a picture",
    )
    .unwrap();
    let err = make_report(&up, true, &params(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.png") && err.contains("content differs"),
        "{err}"
    );
}

#[test]
fn the_pipeline_shows_keys_times_and_what_the_run_computed() {
    let up = upstream(true);
    let (page, _, _out) = make_report(&up, true, &params(&[])).unwrap();
    let pipeline = section(&page, "pipeline");
    assert!(pipeline.contains(">data</td>") && pipeline.contains(">tsne</td>"));
    assert!(pipeline.contains("reused</td><td class=\"nowrap\">2025-11-24 16:00 UTC</td>"));
    assert_eq!(pipeline.matches("class=\"computed\"").count(), 4);
    assert!(pipeline.contains("1 min 15 s"));
    assert!(pipeline.contains(&format!("<code title=\"{:0<64}\">", 4)));
    assert!(pipeline.contains("this page"));
    assert!(page.contains("5 upstream stages (4 computed"));
}

#[test]
fn metrics_are_grouped_and_text_is_escaped() {
    let up = upstream(true);
    let (page, _, _out) = make_report(&up, true, &params(&[])).unwrap();
    let metrics = section(&page, "metrics");
    assert!(metrics.contains("<td>greedy</td><td class=\"num\">–</td>"));
    assert!(metrics.contains("<td class=\"num\">0.614</td>"));
    assert!(metrics.contains("<td class=\"num\">0.505</td><td class=\"num\">–</td>"));
    assert!(metrics.contains("<td>odd</td><td>x</td><td class=\"num\">0.250</td>"));
    let captions = section(&page, "captions");
    assert!(captions.contains("a &lt;b&gt;bold&lt;/b&gt; dog"));
    assert!(!page.contains("<b>bold</b>"));
}

#[test]
fn neighbours_leave_the_query_out_and_found_pictures_mark_the_right_one() {
    let up = upstream(true);
    let p = params(&[("neighbours", ParamValue::Int(2))]);
    let (page, _, _out) = make_report(&up, true, &p).unwrap();
    let similar = section(&page, "similar-images");
    let after_img0 = &similar[similar.find("query<br>img0").unwrap()..];
    let first = &after_img0[after_img0.find("<figure").unwrap()..];
    assert!(first.contains("alt=\"img1\""), "{first}");
    let after_img2 = &similar[similar.find("query<br>img2").unwrap()..];
    assert!(after_img2[..after_img2.find("</div>").unwrap()].contains("alt=\"img3\""));

    let found = section(&page, "find-images");
    // One caption per picture: the second caption of img0 is left out.
    assert!(found.contains("a dog") && !found.contains("a brown dog"));
    assert!(found.contains("the right picture ranks 4"));
    assert_eq!(found.matches("class=\"hit\"").count(), 1);
    assert!(found.contains("<figure class=\"hit\"><img src=\"data:image/jpeg"));
    // `neighbours` = 2 found pictures per caption, after the picture it was written for.
    assert_eq!(found.matches("<figcaption>#").count(), 4);
}

#[test]
fn similar_words_skip_special_tokens_and_report_unknown_words() {
    let up = upstream(true);
    let (page, report, _out) = make_report(&up, true, &params(&[])).unwrap();
    let words = section(&page, "similar-words");
    // By default: frequent words of four letters or more ("a" is too short).
    assert!(words.contains("<b>blue</b>") && words.contains("<b>crimson</b>"));
    assert!(!words.contains("<b>a</b>") && !words.contains("&lt;pad&gt;"));
    assert!(
        !report.warnings.iter().any(|w| w.contains("`words`")),
        "{:?}",
        report.warnings
    );

    let p = params(&[("words", ParamValue::Str("red, mauve".into()))]);
    let (page, report, _out) = make_report(&up, true, &p).unwrap();
    let words = section(&page, "similar-words");
    let row = &words[words.find("<b>red</b>").unwrap()..];
    assert!(row.starts_with("<b>red</b></td><td>crimson ("), "{row}");
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("`mauve` is not in the vocabulary")));
}

#[test]
fn without_tsne_the_page_says_so_and_an_old_ranks_table_is_named() {
    let up = upstream(true);
    let (page, report, _out) = make_report(&up, false, &params(&[])).unwrap();
    assert!(section(&page, "maps").contains("No maps"));
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("no `tsne` input")));

    // A `tsne` stage that drew only the word map.
    std::fs::remove_file(up.tsne.join(IMAGE_PLOT)).unwrap();
    let (page, _, _out) = make_report(&up, true, &params(&[])).unwrap();
    let maps = section(&page, "maps");
    assert_eq!(image_sources(maps).len(), 1);
    assert!(maps.contains("alt=\"t-SNE of word embeddings\""));

    let old = upstream(false);
    let err = make_report(&old, true, &params(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(RANKS_TABLE) && err.contains(ranks_columns::INVERT_FOUND),
        "{err}"
    );
}

#[test]
fn worst_and_best_captions_are_ordered_by_beam_cider() {
    let up = upstream(true);
    let (page, _, _) = make_report(&up, true, &params(&[])).unwrap();
    let scores = section(&page, "caption-scores");
    let (worst, best) = scores.split_once("<h3>Best</h3>").unwrap();
    // Six worst, lowest first: beams 0..=5; the best four left, highest first: 9, 8, 7, 6.
    let beams = |part: &str| -> Vec<usize> {
        part.split("beam &lt;")
            .skip(1)
            .map(|rest| rest[..rest.find("&gt;").unwrap()].parse().unwrap())
            .collect()
    };
    assert_eq!(beams(worst), [0, 1, 2, 3, 4, 5]);
    assert_eq!(beams(best), [9, 8, 7, 6]);
    assert!(worst.contains("<li>reference 0</li><li>another</li>"));
    assert!(best.contains("beam search: CIDEr-D 4.500, BLEU-4 0.180"));

    std::fs::remove_file(up.evaluate.join(PER_IMAGE_TABLE)).unwrap();
    let (page, _, _) = make_report(&up, true, &params(&[])).unwrap();
    assert!(section(&page, "caption-scores").contains("no per-image scores"));
}

#[test]
fn dates_and_durations_read_well() {
    assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
    assert_eq!(utc_text(951_782_400), "2000-02-29 00:00 UTC");
    assert_eq!(utc_text(1_796_000_000), "2026-11-30 00:53 UTC");
    assert_eq!(duration_text(2.96), "3.0 s");
    assert_eq!(duration_text(125.4), "2 min 05 s");
}

#[test]
fn the_kind_is_registered_with_its_inputs() {
    let kind = crate::kind("report").unwrap();
    assert_eq!(kind.inputs.min, 3);
}

#[test]
fn the_truth_based_accuracy_joins_the_caption_scores_when_there_is_one() {
    let metric = |name: &str, method: &str, value: f64| Metric {
        name: name.into(),
        method: method.into(),
        split: "test".into(),
        value,
    };
    let mut metrics = vec![
        metric("bleu4", "greedy", 0.7),
        metric("truth_accuracy", "greedy", 0.25),
        metric("neighbour_caption_bleu1", "image_nn", 0.5),
    ];
    let mut body = String::new();
    metrics_section(&metrics, &mut body);
    let caption_table = body.split("<h3>").nth(1).unwrap();
    assert!(caption_table.contains("<th>truth_accuracy</th>"), "{body}");
    assert!(caption_table.contains(&number_text(0.25)), "{body}");
    let others = body.split("Other figures").nth(1).unwrap();
    assert!(!others.contains("truth_accuracy"), "{body}");
    assert!(others.contains("neighbour_caption_bleu1"), "{body}");

    // Without the demo's scenes there is no such column.
    metrics.remove(1);
    let mut body = String::new();
    metrics_section(&metrics, &mut body);
    assert!(!body.contains("truth_accuracy"), "{body}");
}
