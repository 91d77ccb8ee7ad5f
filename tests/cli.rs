//! End-to-end tests: the real `onenet` binary on small generated data in temporary directories.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{actions, all, project_with_data_folder, text, Project, DATA_FOLDER, SMALL_DEMO};

#[test]
fn second_run_computes_nothing_and_status_is_fresh() {
    let p = Project::new(SMALL_DEMO);
    let first = p.run(&[]);
    assert_eq!(first.len(), 3);
    assert!(all(&first, "computed"), "{first:?}");
    let second = p.run(&[]);
    assert!(all(&second, "cached"), "{second:?}");
    for (name, (state, _)) in p.status(&[]) {
        assert_eq!(state, "fresh", "{name}");
    }
    // The stable paths lead to real tables.
    assert!(p.store().join("latest/captions/captions.parquet").is_file());
    assert!(p.store().join("latest/images/images.parquet").is_file());
}

#[test]
fn set_recomputes_exactly_downstream_and_reverting_reuses() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let status = p.status(&["--set", "captions.min_count=3"]);
    assert_eq!(status["captions"].0, "stale");
    assert_eq!(status["captions"].1, ["param min_count 1 → 3"]);
    assert_eq!(status["demo"].0, "fresh");
    assert_eq!(status["images"].0, "fresh");

    let changed = p.run(&["--set", "captions.min_count=3"]);
    assert_eq!(changed["captions"], "computed");
    assert_eq!(changed["demo"], "cached");
    assert_eq!(changed["images"], "cached");

    // Back to the file's value: the first output is still in the store.
    let reverted = p.run(&[]);
    assert!(all(&reverted, "cached"), "{reverted:?}");

    // An upstream change reaches every reader.
    let status = p.status(&["--set", "demo.seed=4"]);
    assert_eq!(status["demo"].1, ["param seed 3 → 4"]);
    assert_eq!(status["captions"].1, ["upstream demo changed"]);
    assert_eq!(status["images"].1, ["upstream demo changed"]);
}

#[test]
fn changed_added_and_deleted_images_recompute_images_only() {
    let p = project_with_data_folder(DATA_FOLDER);
    let data = p.path().join("data");
    assert!(all(&p.run(&[]), "computed"));

    let images = data.join("Flicker8k_Dataset");
    let mut names: Vec<_> = fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    // Change one image's content, add a new one, delete another.
    let copy = fs::read(&names[1]).unwrap();
    fs::copy(&names[0], &names[1]).unwrap();
    fs::write(images.join("extra_000001.jpg"), &copy).unwrap();
    fs::remove_file(&names[2]).unwrap();

    let status = p.status(&[]);
    assert_eq!(status["captions"].0, "fresh");
    assert_eq!(status["images"].0, "stale");
    let reason = &status["images"].1[0];
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        reason,
        &format!(
            "param root: 1 file added (extra_000001.jpg), 1 file changed ({}), 1 file removed ({})",
            name(&names[1]),
            name(&names[2])
        )
    );

    let out = p.json(&["run"]);
    let acts = actions(&out);
    assert_eq!(acts["images"], "computed");
    assert_eq!(acts["captions"], "cached");
    let images_outcome = out["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "images")
        .unwrap();
    let warnings = images_outcome["warnings"].to_string();
    let deleted = names[2].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        warnings.contains(&deleted),
        "missing image not reported: {warnings}"
    );
}

#[test]
fn a_killed_run_leaves_nothing_that_looks_complete() {
    let p = Project::new(
        r#"
[stages.demo]
kind = "demo_data"
params = { images = 4000, image_size = 256 }
"#,
    );
    let mut child = p
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the stage is writing into its temporary directory, then kill it hard.
    let tmp = p.store().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writing = fs::read_dir(&tmp)
            .map(|d| {
                d.flatten().any(|e| {
                    e.path()
                        .join("Flicker8k_Dataset")
                        .read_dir()
                        .is_ok_and(|mut r| r.next().is_some())
                })
            })
            .unwrap_or(false);
        if writing || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let objects: Vec<_> = fs::read_dir(p.store().join("objects"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        objects.is_empty(),
        "a killed stage left an object: {objects:?}"
    );
    assert!(fs::symlink_metadata(p.store().join("latest/demo")).is_err());
    assert_eq!(p.status(&[])["demo"].0, "missing");

    let rerun = p.run(&["--set", "demo.images=40", "--set", "demo.image_size=32"]);
    assert_eq!(rerun["demo"], "computed");
    let verify = p.onenet(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn two_concurrent_runs_compute_each_stage_once() {
    let p = Project::new(&SMALL_DEMO.replace("images = 30", "images = 300"));
    let spawn = || {
        p.command(&["run", "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));

    let records = fs::read_to_string(p.store().join("runs.jsonl")).unwrap();
    let mut computed: HashMap<String, usize> = HashMap::new();
    for line in records.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        if r["action"] == "computed" {
            *computed
                .entry(r["stage"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(computed.len(), 3, "{records}");
    assert!(computed.values().all(|&n| n == 1), "{computed:?}");
}

#[test]
fn verify_finds_a_flipped_byte_and_the_next_run_recomputes() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let table = p.store().join("latest/captions/captions.parquet");
    let mut bytes = fs::read(&table).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&table, bytes).unwrap();

    let out = p.onenet(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("damaged: stage captions"), "{said}");
    assert!(said.contains("captions.parquet"), "{said}");

    let status = p.status(&[]);
    assert_eq!(status["captions"].0, "missing");
    let rerun = p.run(&[]);
    assert_eq!(rerun["captions"], "computed");
    assert_eq!(rerun["demo"], "cached");
    assert!(p.onenet(&["verify"]).status.success());
}

#[test]
fn malformed_pipelines_name_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "[stages.demo]\nkind = \"demo_data\"\nparms = {}\n",
            "pipeline.toml:3:1: unknown field `parms`",
        ),
        (
            "[stages.demo]\nkind = \"demo_dta\"\n",
            "pipeline.toml:2:8: unknown stage kind `demo_dta` (did you mean `demo_data`?)",
        ),
        (
            "[stages.demo]\nkind = \"demo_data\"\nparams = { imags = 3 }\n",
            "pipeline.toml:3:20: stage `demo` (kind demo_data) has no param `imags` (did you mean `images`?)",
        ),
        (
            "[stages.demo]\nkind = \"demo_data\"\nparams = { images = \"many\" }\n",
            "pipeline.toml:3:21: param `images` of stage `demo`: expected integer",
        ),
        (
            "[stages.c]\nkind = \"captions\"\ninputs = [\"demo\"]\n",
            "pipeline.toml:3:11: stage `c` reads `demo`, which is not a stage in this file",
        ),
        (
            "[stages.demo]\nkind = \"demo_data\"\nparams = { images = 3 \n",
            "pipeline.toml:3:",
        ),
    ];
    for (pipeline, expected) in cases {
        let p = Project::new(pipeline);
        let out = p.onenet(&["status"]);
        assert_eq!(out.status.code(), Some(1));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(expected),
            "for\n{pipeline}\nexpected {expected:?}, got {said}"
        );
    }
    let p = Project::new(SMALL_DEMO);
    // A string value may be quoted as the file would write it; a number may not.
    let unquoted = p.keys(&["--set", "captions.variant=lemma"]);
    assert_eq!(p.keys(&["--set", "captions.variant=\"lemma\""]), unquoted);
    assert_eq!(p.keys(&["--set", "captions.variant='lemma'"]), unquoted);
    assert_ne!(p.keys(&[])["captions"], unquoted["captions"]);
    let out = p.onenet(&["status", "--set", "captions.min_count=\"2\""]);
    assert!(
        out.status.code() == Some(2) && text(&out).contains("found string"),
        "{}",
        text(&out)
    );
    let out = p.onenet(&["run", "--set", "captions.min_cont=2"]);
    assert!(
        text(&out).contains("did you mean `min_count`"),
        "{}",
        text(&out)
    );
    // A command line naming what does not exist is a usage error (status 2), as clap's are.
    for args in [
        &["run", "--set", "captions.min_cont=2"][..],
        &["run", "--set", "captions.min_count"],
        &["run", "--set", "nosuch.x=1"],
        &["run", "--force", "nosuch"],
        &["run", "nosuch"],
        &["status", "--set", "captions.min_count=x"],
    ] {
        let out = p.onenet(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).starts_with("error: "),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(
        !p.store().join("runs.jsonl").exists(),
        "a usage error ran something"
    );
}

#[test]
fn bad_dataset_files_are_reported_by_file_and_line() {
    let p = project_with_data_folder(DATA_FOLDER);
    let data = p.path().join("data");
    let token = data.join("Flickr8k_text/Flickr8k.token.txt");
    let mut lines: Vec<String> = fs::read_to_string(&token)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[4] = lines[4].replace('\t', " ");
    fs::write(&token, lines.join("\n") + "\n").unwrap();
    let images = data.join("Flicker8k_Dataset");
    let first = fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let corrupt_name = first.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = fs::read(&first).unwrap();
    fs::write(&first, &bytes[..bytes.len() / 3]).unwrap();

    let out = p.onenet(&["run"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("Flickr8k.token.txt"), "{said}");
    assert!(said.contains("line 5"), "{said}");
    assert!(said.contains(&corrupt_name), "{said}");

    // An empty caption file and a missing split list are errors naming the file.
    fs::write(&token, "").unwrap();
    let out = p.onenet(&["run", "captions"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Flickr8k.token.txt"), "{}", text(&out));
    fs::remove_file(data.join("Flickr8k_text/Flickr_8k.devImages.txt")).unwrap();
    let out = p.onenet(&["run", "images"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("Flickr_8k.devImages.txt"),
        "{}",
        text(&out)
    );
}

#[test]
fn tables_open_in_polars_and_duckdb() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let mut expected = Vec::new();
    for stage in ["demo", "captions", "images"] {
        let shown = p.json(&["show", stage]);
        for file in shown["files"].as_array().unwrap() {
            if let Some(rows) = file["rows"].as_i64() {
                let columns: Vec<&str> = file["columns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].as_str().unwrap())
                    .collect();
                expected.push(serde_json::json!({
                    "path": file["path"], "rows": rows, "columns": columns
                }));
            }
        }
    }
    assert!(expected.len() >= 5, "{expected:?}");
    let script = r#"
import json, sys
import duckdb, polars as pl
tables = json.load(sys.stdin)
for t in tables:
    df = pl.read_parquet(t["path"])
    assert df.columns == t["columns"], (t["path"], df.columns, t["columns"])
    assert df.height == t["rows"], (t["path"], df.height, t["rows"])
    n = duckdb.sql(f"select count(*) from read_parquet('{t['path']}')").fetchall()[0][0]
    cols = [c[0] for c in duckdb.sql(f"describe select * from read_parquet('{t['path']}')").fetchall()]
    assert n == t["rows"] and cols == t["columns"], (t["path"], n, cols)
print("ok", len(tables))
"#;
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with polars and duckdb: `make test-deps`)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&expected).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Polars/DuckDB check failed (needs `pip install polars duckdb`): {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {}", expected.len())
    );
}

#[test]
fn gc_dry_run_reports_bytes_and_gc_keeps_what_the_pipeline_needs() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    p.run(&["--set", "captions.min_count=2"]);
    let dry = text(&p.onenet(&["gc", "--dry-run"]));
    assert!(dry.starts_with("would remove 1 object(s)"), "{dry}");
    // By stage, key and size, and why each kept object stays.
    let removed: Vec<&str> = dry.lines().filter(|l| l.starts_with("  remove")).collect();
    assert_eq!(removed.len(), 1, "{dry}");
    assert!(removed[0].contains("captions"), "{dry}");
    let kept: Vec<&str> = dry.lines().filter(|l| l.starts_with("  keep")).collect();
    assert_eq!(kept.len(), 3, "{dry}");
    assert!(kept.iter().all(|l| l.contains("pipeline.toml: ")), "{dry}");
    let done = text(&p.onenet(&["gc"]));
    assert!(done.starts_with("removed 1 object(s)"), "{done}");
    // What the pipeline file needs is intact; the one-off min_count=2 variant is gone.
    let acts = p.run(&[]);
    assert!(all(&acts, "cached"), "{acts:?}");
    assert_eq!(
        p.run(&["--set", "captions.min_count=2"])["captions"],
        "computed"
    );
}

#[test]
fn show_and_dag_describe_the_outputs() {
    let p = Project::new(SMALL_DEMO);
    let dag = text(&p.onenet(&["dag"]));
    assert!(dag.contains("captions") && dag.contains("← demo"), "{dag}");
    p.run(&[]);
    let shown = text(&p.onenet(&["show", "captions"]));
    assert!(shown.contains("captions.parquet  (150 rows"), "{shown}");
    assert!(shown.contains("tokens: List("), "{shown}");
    let out = p.onenet(&["show", "caption"]);
    assert!(text(&out).contains("did you mean `captions`"));
}

#[test]
fn the_dataset_examples_are_valid_pipelines() {
    for (file, data) in [
        ("flickr8k.toml", "data/flickr8k"),
        ("flickr30k.toml", "data/flickr30k"),
        ("coco2014.toml", "data/coco2014"),
    ] {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(file);
        let dir = tempfile::tempdir().unwrap();
        fs::copy(&example, dir.path().join(file)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_onenet"))
            .current_dir(dir.path())
            .args(["status", "--pipeline", file])
            .output()
            .unwrap();
        // The file parses and checks; only the dataset it points at is missing here, so the
        // stages that read it cannot be keyed: `unknown`, with the reason.
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: {said}");
        assert!(said.contains("unknown"), "{file}: {said}");
        assert!(
            said.contains(&format!("{data}: dataset folder not found")),
            "{file}: {said}"
        );
    }
}

#[test]
fn a_torn_runs_record_is_repaired_and_the_log_stays_readable() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let log = p.store().join("runs.jsonl");
    // A run killed mid-write leaves the start of a record and no newline.
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    use std::io::Write;
    f.write_all(br#"{"run_id":"x","sta"#).unwrap();
    drop(f);
    let second = p.onenet(&["run"]);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{said}");
    assert!(
        said.contains("warning: ") && said.contains("runs.jsonl line 4: a torn record"),
        "onenet did not say it skipped the torn line: {said}"
    );

    let content = fs::read_to_string(&log).unwrap();
    assert!(content.ends_with('\n'), "{content}");
    let lines: Vec<&str> = content.lines().collect();
    // Three stages, two runs: the fragment is gone and nothing whole was lost.
    assert_eq!(lines.len(), 6, "{content}");
    for line in &lines {
        let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_ne!(r["run_id"], "x", "{content}");
    }

    let script = r#"
import sys
import duckdb, polars as pl
path = sys.argv[1]
n = pl.read_ndjson(path).height
m = duckdb.sql(f"select count(*) from read_json_auto('{path}')").fetchall()[0][0]
print(n, m)
"#;
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script, log.to_str().unwrap()])
        .output()
        .expect("python3 (with polars and duckdb: `make test-deps`)");
    assert!(
        out.status.success(),
        "Polars/DuckDB check failed (needs `pip install polars duckdb`): {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{0} {0}", lines.len())
    );
}

// The command line's conventions (clig.dev): output streams, exit codes, quiet and verbose.

/// Starts `onenet args` with stdout piped, reads its first line, closes the pipe as `head -1`
/// does, and returns the first line and how the process ended.
fn first_line_then_close(p: &Project, args: &[&str]) -> (String, std::process::Output) {
    use std::io::BufRead;
    let mut child = p
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    (first, out)
}

#[test]
fn a_closed_stdout_ends_status_quietly() {
    // Enough stages that the output overflows the pipe's buffer after the reader has left.
    let mut pipeline = String::new();
    for i in 0..3000 {
        pipeline.push_str(&format!("[stages.demo{i}]\nkind = \"demo_data\"\n"));
    }
    let p = Project::new(&pipeline);
    let (first, out) = first_line_then_close(&p, &["status"]);
    assert!(first.starts_with("demo0 "), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_closed_stdout_lets_a_run_finish_its_stages_quietly() {
    let p = Project::new(&SMALL_DEMO.replace("images = 30", "images = 1000"));
    let (first, out) = first_line_then_close(&p, &["run"]);
    assert!(first.starts_with("computed  demo"), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    // Every stage was finished and committed whole.
    let verify = p.onenet(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let again = p.run(&[]);
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(all(&again, "cached"), "{again:?}");
}

#[test]
fn a_failed_stage_is_reported_on_stderr_when_stdout_is_a_file() {
    let p = project_with_data_folder(
        r#"
[stages.demo]
kind = "demo_data"
params = { images = 12, image_size = 32 }

[stages.captions]
kind = "captions"
params = { root = "data" }
"#,
    );
    fs::write(p.path().join("data/Flickr8k_text/Flickr8k.token.txt"), "").unwrap();
    let log = p.path().join("log");
    let out = p
        .command(&["run"])
        .stdout(fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAILED    captions"), "{stderr}");
    assert!(stderr.contains("Flickr8k.token.txt"), "{stderr}");
    let results = fs::read_to_string(&log).unwrap();
    assert!(results.contains("computed  demo"), "{results}");
    assert!(results.contains("1 failed"), "{results}");
    assert!(!results.contains("FAILED"), "{results}");
    // latest/ holds the new output of demo only: the summary says so.
    assert!(
        results.contains("newest outputs of the stages that succeeded in"),
        "{results}"
    );
}

#[test]
fn a_forced_dry_run_says_the_stage_would_be_computed() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let out = p.onenet(&["run", "--dry-run", "--force", "captions"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        said.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("captions").contains("would compute"), "{said}");
    assert!(line("demo").contains("would reuse"), "{said}");
    let json = p.json(&["run", "--dry-run", "--force", "captions"]);
    let acts = actions(&json);
    assert_eq!(acts["captions"], "compute");
    assert_eq!(acts["demo"], "cached");
    assert_eq!(acts["images"], "cached");
    // Nothing ran.
    assert!(all(&p.run(&[]), "cached"));
}

#[test]
fn status_exit_code_says_whether_everything_is_fresh() {
    let p = Project::new(SMALL_DEMO);
    let code = |args: &[&str]| p.onenet(args).status.code();
    assert_eq!(code(&["status", "--exit-code"]), Some(1), "missing");
    assert_eq!(code(&["status"]), Some(0));
    p.run(&[]);
    assert_eq!(code(&["status", "--exit-code"]), Some(0), "fresh");
    assert_eq!(
        code(&["status", "--exit-code", "--set", "captions.min_count=2"]),
        Some(1),
        "stale"
    );
    assert_eq!(
        code(&["status", "--exit-code", "--format", "json"]),
        Some(0)
    );
}

#[test]
fn a_run_logged_to_a_file_has_plain_progress_lines() {
    let p = Project::new(
        r#"
[stages.demo]
kind = "demo_data"
params = { images = 1000, image_size = 48 }
"#,
    );
    let log = fs::File::create(p.path().join("log")).unwrap();
    let out = p
        .command(&["run"])
        .env("ONENET_PROGRESS_INTERVAL_MS", "50")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = fs::read_to_string(p.path().join("log")).unwrap();
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("demo: drawing demo images: "))
        .collect();
    assert!(progress.len() >= 2, "{log}");
    assert!(
        progress.last().unwrap().contains(" 1000/1000 ("),
        "the end of the phase: {log}"
    );
    assert!(progress[0].ends_with("/s)"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no terminal escapes in a log: {log:?}"
    );
    assert!(log.contains("computed  demo"), "{log}");
}

#[test]
fn quiet_says_only_results_and_verbose_says_why() {
    let p = Project::new(SMALL_DEMO);
    let out = p
        .command(&["run", "--quiet"])
        .env("ONENET_PROGRESS_INTERVAL_MS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("computed  demo"), "{said}");
    assert!(!said.contains("captions of 30 images"), "a note: {said}");

    let out = p
        .command(&["-v", "run", "--set", "captions.min_count=2"])
        .env("ONENET_PROGRESS_INTERVAL_MS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("computing captions: param min_count 1 → 2"),
        "{stderr}"
    );
    assert!(stderr.contains("captions: parsing "), "progress: {stderr}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("captions of 30 images"), "{said}");
    // Notes of reused stages too.
    assert!(said.contains("30 images ("), "{said}");
}

#[test]
fn a_missing_pipeline_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onenet"))
        .current_dir(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let here = std::env::current_dir()
        .map(|_| dir.path().canonicalize().unwrap())
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).replace(
        &dir.path().display().to_string(),
        &here.display().to_string(),
    );
    assert_eq!(
        said,
        format!(
            "error: no pipeline file pipeline.toml in {} (give one with --pipeline FILE)\n",
            here.display()
        )
    );
}

/// A pipeline whose last stage is `evaluate` (nothing of it run).
const EVALUATE: &str = r#"
[stages.features]
kind = "features"
inputs = ["images"]
params = { backbone = "efficientnet_lite0", weights = "random" }

[stages.order]
kind = "order"
inputs = ["captions", "features"]

[stages.train]
kind = "train"
inputs = ["order", "features", "captions"]

[stages.evaluate]
kind = "evaluate"
inputs = ["train", "features", "order", "captions"]
"#;

#[test]
fn metrics_and_show_never_start_the_libtorch_worker() {
    let no_worker = |p: &Project, args: &[&str]| {
        let out = p
            .command(args)
            .env("ONENET_TORCH", "/nonexistent/onenet-torch")
            .output()
            .unwrap();
        let said = text(&out);
        assert!(!said.contains("worker"), "{said}");
        assert!(!said.contains("nonexistent"), "{said}");
        out
    };
    let p = Project::new(SMALL_DEMO);
    let out = no_worker(&p, &["metrics"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("has no stage of kind `evaluate`"),
        "{}",
        text(&out)
    );

    let p = Project::new(&format!("{SMALL_DEMO}{EVALUATE}"));
    let out = no_worker(&p, &["metrics"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("stage `evaluate` has not been run yet"),
        "{}",
        text(&out)
    );
    let out = no_worker(&p, &["show", "features"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("has no output yet"), "{}", text(&out));

    // A stand-in for an evaluation's output: its metrics table, written by DuckDB.
    let key = "ab".repeat(32);
    let object = p.store().join("objects").join(&key);
    fs::create_dir_all(&object).unwrap();
    fs::create_dir_all(p.store().join("latest")).unwrap();
    fs::write(object.join("_onenet.json"), "{}").unwrap();
    std::os::unix::fs::symlink(
        Path::new("../objects").join(&key),
        p.store().join("latest/evaluate"),
    )
    .unwrap();
    let sql = format!(
        "copy (select metric, method, split, value::double as value from (values \
         ('bleu4', 'greedy', 'test', 0.6469), ('r1', 'invert', 'test', 0.65)) \
         t(metric, method, split, value)) to '{}' (format parquet)",
        object.join("metrics.parquet").display()
    );
    let made = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", "import sys, duckdb; duckdb.sql(sys.argv[1])", &sql])
        .output()
        .expect("python3 (with duckdb: `make test-deps`)");
    assert!(made.status.success(), "{}", text(&made));

    let out = no_worker(&p, &["metrics"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bleu4                    greedy           test  0.6469\n\
         r1                       invert           test  0.6500\n"
    );
    let out = no_worker(&p, &["metrics", "--format", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["metrics"][0],
        serde_json::json!({"name": "bleu4", "method": "greedy", "split": "test", "value": 0.6469})
    );
}

#[test]
fn completions_and_version() {
    let p = Project::new(SMALL_DEMO);
    let out = p.onenet(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("onenet"), "{script}");
    assert!(script.contains("similar-images"), "{script}");

    let out = p
        .command(&["--version"])
        .env("ONENET_TORCH", "/nonexistent/onenet-torch")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("onenet {}\nlibtorch ", env!("CARGO_PKG_VERSION"))),
        "{said}"
    );
    assert!(said.contains("device: unknown"), "{said}");
}
