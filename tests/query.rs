//! End-to-end tests of `onenet query`: SQL over the store's tables, through the real binary.

use std::collections::BTreeMap;

use serde_json::Value;

mod support;

use support::{text, Project, SMALL_DEMO};

/// Rows of a `query --format json` answer.
fn rows(p: &Project, sql: &str) -> Vec<Value> {
    match p.json(&["query", sql]) {
        Value::Array(rows) => rows,
        other => panic!("not an array of rows: {other}"),
    }
}

/// The row count of a table of a stage's newest output, as `show` reports it.
fn table_rows(p: &Project, stage: &str, file: &str) -> i64 {
    let shown = p.json(&["show", stage]);
    shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(file))
        .and_then(|f| f["rows"].as_i64())
        .unwrap_or_else(|| panic!("no {file} in {shown}"))
}

#[test]
fn query_groups_joins_and_reads_the_run_log() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    p.run(&[]);

    let by_split = rows(
        &p,
        "select split, count(*) as n from captions.captions group by split order by split",
    );
    let counts: BTreeMap<String, i64> = by_split
        .iter()
        .map(|r| {
            (
                r["split"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["dev", "test", "train"],
        "{by_split:?}"
    );
    assert_eq!(
        counts.values().sum::<i64>(),
        table_rows(&p, "captions", "captions.parquet")
    );

    // Every captioned picture is one of the images stage's rows, in the same split.
    let joined = rows(
        &p,
        "select count(distinct c.image_id) as pictures, sum(case when c.split = i.split then 1 \
         else 0 end) as same_split, count(*) as captions \
         from captions.captions c join images.images i on c.image_id = i.image_id",
    );
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["pictures"], 30, "{joined:?}");
    assert_eq!(joined[0]["same_split"], joined[0]["captions"], "{joined:?}");

    let runs = rows(
        &p,
        "select action, count(*) as n from runs group by action order by action",
    );
    let actions: BTreeMap<&str, i64> = runs
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        actions,
        BTreeMap::from([("cached", 3), ("computed", 3)]),
        "{runs:?}"
    );
}

#[test]
fn query_reads_an_older_output_by_its_key() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let old_key = p.json(&["show", "captions"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let old_vocab = table_rows(&p, "captions", "vocab.parquet");
    p.run(&["--set", "captions.min_count=1000"]);
    let newest = rows(&p, "select count(*) as n from captions.vocab");
    let older = rows(
        &p,
        &format!(
            "select count(*) as n from \"captions@{}\".vocab",
            &old_key[..12]
        ),
    );
    // The pipeline file still resolves to its own output; the variant is another key.
    assert_eq!(newest[0]["n"], old_vocab);
    assert_eq!(older[0]["n"], old_vocab);
    let variant_keys = rows(
        &p,
        "select key from runs where stage = 'captions' and action = 'computed'",
    );
    assert_eq!(variant_keys.len(), 2, "{variant_keys:?}");
    let variant = variant_keys
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .find(|k| *k != old_key)
        .unwrap();
    let only_specials = rows(
        &p,
        &format!(
            "select count(*) as n from \"captions@{}\".vocab",
            &variant[..12]
        ),
    );
    assert_eq!(only_specials[0]["n"], 4, "{only_specials:?}");
}

#[test]
fn query_writes_csv_text_and_parquet() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let sql = "select image_id, width, height from images.images order by image_id";
    let out = p.onenet(&["query", sql, "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["image_id", "width", "height"]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 30);
    assert!(records.iter().all(|r| &r[1] == "48" && &r[2] == "48"));

    let shown = p.onenet(&["query", sql]);
    assert!(shown.status.success());
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("shape: (30, 3)") && shown.contains("image_id"),
        "{shown}"
    );

    let file = p.path().join("sizes.parquet");
    let out = p.onenet(&[
        "query",
        sql,
        "--format",
        "parquet",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 30);
    assert_eq!(meta.file_metadata().schema_descr().num_columns(), 3);
}

#[test]
fn query_naming_an_unknown_table_lists_the_known_ones() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let out = p.onenet(&["query", "select * from captions.captionz"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `captions.captions`"), "{err}");
    for known in ["captions.vocab", "images.images", "demo.", "runs"] {
        assert!(err.contains(known), "{known} missing from: {err}");
    }
    // Older outputs' names are explained, not listed one by one.
    assert!(!err.contains("captions@"), "{err}");
    assert!(err.contains("<stage>@<key12>.<table>"), "{err}");

    let out = p.onenet(&["query", "select nonsense from"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = p.onenet(&["query", "select nope from captions.captions"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        text(&out)
    );
}
