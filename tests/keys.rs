//! End-to-end tests of the cache keys: portable across folders, blind to what cannot change a
//! result, and never fooled into calling a changed input fresh.

mod support;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::{all, copy_tree, project_with_data_folder, text, Project, DATA_FOLDER, SMALL_DEMO};

/// Lets the files just written age past the stat cache's racy window, so that their stamps are
/// trusted and only a real change can make them stale.
fn age_past_racy_window() {
    std::thread::sleep(Duration::from_millis(2100));
}

#[test]
fn a_project_copied_to_another_folder_is_fresh_and_computes_nothing() {
    let a = project_with_data_folder(DATA_FOLDER);
    assert!(all(&a.run(&[]), "computed"));
    let keys_a = a.keys(&[]);

    let b = tempfile::tempdir().unwrap();
    copy_tree(a.path(), b.path());
    let b_dir = b;
    let b = Project::at(b_dir.path());
    for (name, (state, reasons)) in b.status(&[]) {
        assert_eq!(state, "fresh", "{name}: {reasons:?}");
    }
    assert_eq!(b.keys(&[]), keys_a);
    let again = b.run(&[]);
    assert!(all(&again, "cached"), "{again:?}");
    // No key input names a folder of this machine.
    let meta = fs::read_to_string(b.store().join("latest/images/_onenet.json")).unwrap();
    let key_inputs =
        serde_json::from_str::<serde_json::Value>(&meta).unwrap()["key_inputs"].clone();
    for (label, _) in key_inputs["sources"].as_object().unwrap() {
        assert!(label.starts_with("root/"), "{label}");
    }
    assert_eq!(
        key_inputs["params"]["root"],
        serde_json::json!({"type": "path"})
    );
}

#[test]
fn two_folders_with_the_same_data_share_one_store() {
    let shared = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "[store]\npath = \"{}\"\n{DATA_FOLDER}",
        shared.path().join("store").display()
    );
    let a = project_with_data_folder(&pipeline);
    assert!(all(&a.run(&[]), "computed"));
    let b = Project::new(&pipeline);
    copy_tree(&a.path().join("data"), &b.path().join("data"));
    let second = b.run(&[]);
    assert!(all(&second, "cached"), "{second:?}");
}

#[test]
fn an_in_place_edit_with_its_mtime_restored_makes_the_stage_stale() {
    let p = project_with_data_folder(DATA_FOLDER);
    age_past_racy_window();
    assert!(all(&p.run(&[]), "computed"));
    // Hash again now that the stamps are old enough to be trusted.
    assert!(all(&p.run(&[]), "cached"));

    let token = p.path().join("data/Flickr8k_text/Flickr8k.token.txt");
    let before = fs::metadata(&token).unwrap();
    let text_before = fs::read_to_string(&token).unwrap();
    // Swap two letters of one word: same size, same inode.
    let at = text_before
        .find("circle")
        .or_else(|| text_before.find("square"));
    let at = at.expect("a shape word in the captions");
    let mut bytes = text_before.into_bytes();
    bytes.swap(at, at + 1);
    fs::OpenOptions::new()
        .write(true)
        .open(&token)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(&bytes)?;
            f.set_modified(before.modified()?)
        })
        .unwrap();
    let after = fs::metadata(&token).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());

    let status = p.status(&[]);
    assert_eq!(status["captions"].0, "stale", "{status:?}");
    assert_eq!(
        status["captions"].1,
        ["param root: 1 file changed (Flickr8k.token.txt)"]
    );
    let rerun = p.run(&[]);
    assert_eq!(rerun["captions"], "computed");
}

#[test]
fn a_source_changed_while_its_stage_runs_is_not_committed() {
    let p = project_with_data_folder(DATA_FOLDER);
    let token = p.path().join("data/Flickr8k_text/Flickr8k.token.txt");
    let child = p
        .command(&["run", "captions", "--format", "json"])
        .env("ONENET_TEST_STAGE_DELAY", "captions:2500")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run plans (and hashes the file), opens the stage's temporary output, then waits
    // before computing: change the file once that output folder exists.
    support::wait_for_pending_output(&p.store());
    let mut captions = fs::read_to_string(&token).unwrap();
    captions.push_str(&captions.lines().next().unwrap().replace("#0", "#9"));
    captions.push('\n');
    fs::write(&token, &captions).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("Flickr8k.token.txt"), "{said}");
    assert!(said.contains("changed while the stage ran"), "{said}");
    assert!(
        !p.store().join("latest/captions").exists(),
        "an output was committed"
    );

    let rerun = p.run(&["captions"]);
    assert_eq!(rerun["captions"], "computed");
    let recorded = &p.object_meta("captions")["key_inputs"]["sources"]
        ["root/Flickr8k_text/Flickr8k.token.txt"];
    let read = blake3::hash(captions.as_bytes()).to_hex().to_string();
    assert_eq!(recorded.as_str(), Some(read.as_str()));
}

#[test]
fn status_json_gives_typed_reasons() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let status = p.status_json(&["--set", "captions.min_count=3", "--set", "demo.seed=4"]);
    let param = &status["captions"]["reasons"][0];
    assert_eq!(param["kind"], "param");
    assert_eq!(param["name"], "min_count");
    assert_eq!(param["old"], 1);
    assert_eq!(param["new"], 3);
    assert_eq!(param["text"], "param min_count 1 → 3");
    assert_eq!(
        status["captions"]["reasons"][1],
        serde_json::json!({"kind": "upstream", "stage": "demo", "text": "upstream demo changed"})
    );
    assert_eq!(status["demo"]["reasons"][0]["old"], 3);

    // Files: the typed lists name each file under its root.
    let data = project_with_data_folder(DATA_FOLDER);
    data.run(&[]);
    let images = data.path().join("data/Flicker8k_Dataset");
    let first = fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(&first).unwrap();
    let status = data.status_json(&[]);
    let files = &status["images"]["reasons"][0];
    assert_eq!(files["kind"], "files");
    assert_eq!(files["param"], "root");
    let name = first.file_name().unwrap().to_string_lossy();
    assert_eq!(
        files["removed"],
        serde_json::json!([format!("Flicker8k_Dataset/{name}")])
    );
    assert_eq!(files["added"], serde_json::json!([]));
    assert_eq!(status["captions"]["reasons"], serde_json::json!([]));

    // Never computed.
    let fresh = Project::new(SMALL_DEMO);
    let status = fresh.status_json(&[]);
    assert_eq!(
        status["demo"]["reasons"],
        serde_json::json!([{"kind": "never_computed", "text": "never computed"}])
    );
}

#[test]
fn speed_only_params_leave_every_key_unchanged() {
    // The whole demo pipeline: every stage kind with a speed-only param.
    let pipeline = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml"))
        .unwrap()
        .replace("weights/efficientnet-lite0-57934424.pth", "random");
    let p = Project::new(&pipeline);
    let plain = p.keys(&[]);
    let mut args = Vec::new();
    for stage in ["features", "train", "embed", "evaluate", "tsne"] {
        args.push("--set".to_string());
        args.push(format!("{stage}.threads=1"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(p.keys(&args), plain);
    // A param that changes results does change the key.
    assert_ne!(p.keys(&["--set", "tsne.seed=8"])["tsne"], plain["tsne"]);
}

#[test]
fn a_weights_file_enters_the_key_by_content_not_by_name() {
    let p = Project::new(
        r#"
[stages.demo]
kind = "demo_data"
params = { images = 12, image_size = 32 }

[stages.images]
kind = "images"
inputs = ["demo"]

[stages.features]
kind = "features"
inputs = ["images"]
params = { weights = "w/backbone.pth" }
"#,
    );
    let weights = p.path().join("w/backbone.pth");
    fs::create_dir_all(weights.parent().unwrap()).unwrap();
    fs::write(&weights, b"first weights").unwrap();
    let relative = p.keys(&[])["features"].clone();
    let absolute = format!("features.weights={}", weights.display());
    assert_eq!(p.keys(&["--set", &absolute])["features"], relative);
    let dotted = p.keys(&["--set", "features.weights=./w/../w/backbone.pth"]);
    assert_eq!(dotted["features"], relative);

    let other = p.path().join("w/other.pth");
    fs::write(&other, b"first weights").unwrap();
    assert_eq!(
        p.keys(&["--set", "features.weights=w/other.pth"])["features"],
        relative,
        "same bytes under another name"
    );
    fs::write(&weights, b"other weights").unwrap();
    assert_ne!(p.keys(&[])["features"], relative);
}
