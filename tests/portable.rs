//! Tables name files by their place in the dataset and their content, never by this machine's
//! path: two folders sharing a store, and a copied project, compute nothing twice, read their own
//! pictures, give byte-identical outputs and keep working when the first folder is gone; a
//! picture that differs from its record is never read into a result; finished results are
//! readable without the dataset or the weights, and a store that cannot be written still serves
//! a run that has nothing to compute.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use support::{actions, copy_tree, text, weights, Project, SMALL_DEMO};

/// The whole pipeline (random backbone weights, tiny sizes) reading the dataset folder `root`,
/// with its store at `store` (relative to the pipeline file).
fn pipeline(root: &str, store: &str, weights: &str) -> String {
    format!(
        r#"
[store]
path = "{store}"

[stages.captions]
kind = "captions"
params = {{ root = "{root}" }}

[stages.images]
kind = "images"
params = {{ root = "{root}" }}

[stages.features]
kind = "features"
inputs = ["images"]
params = {{ weights = "{weights}", batch_size = 4 }}

[stages.order]
kind = "order"
inputs = ["captions", "features"]

[stages.train]
kind = "train"
inputs = ["order", "features", "captions"]
params = {{ epochs = 1, hidden_dim = 32, image_dim = 16, embed_dim = 16, dev_images = 3 }}

[stages.embed]
kind = "embed"
inputs = ["train", "features", "captions"]

[stages.evaluate]
kind = "evaluate"
inputs = ["train", "features", "order", "captions"]
params = {{ queries = 5, invert_steps = 2, invert_restarts = 1 }}

[stages.tsne]
kind = "tsne"
inputs = ["embed"]
params = {{ iterations = 250 }}

[stages.report]
kind = "report"
inputs = ["train", "evaluate", "embed", "tsne"]
params = {{ words = "red" }}
"#
    )
}

/// A folder holding one demo dataset (30 pictures), exported once per test.
fn dataset() -> (Project, PathBuf) {
    let demo = Project::new(SMALL_DEMO);
    demo.run(&["demo"]);
    let data = demo.path().join("exported");
    demo.export_demo_dataset(&data);
    (demo, data)
}

/// A project folder `dir` (created) with `pipeline.toml` and its dataset copied to `root`.
fn project_in(dir: &Path, data: &Path, root: &str, store: &str) -> Project {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("pipeline.toml"), pipeline(root, store, "random")).unwrap();
    copy_tree(data, &dir.join(root));
    Project::at(dir)
}

/// Every string value of every Parquet table under `dir` (the store's objects), with its file.
fn table_strings(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let table = onenet_stages::table::read_parquet(&path).unwrap();
                for field in table.schema().fields() {
                    if format!("{:?}", field.data_type()) == "Utf8" {
                        for value in
                            onenet_stages::table::strings(&path, &table, field.name()).unwrap()
                        {
                            found.push((path.clone(), value));
                        }
                    }
                }
            }
        }
    }
    found
}

/// The bytes of a file of the output stage `stage` of `p` resolves to now, in `store`.
fn output_in(p: &Project, store: &Path, stage: &str, file: &str) -> Vec<u8> {
    let key = &p.keys(&[])[stage];
    let path = store.join("objects").join(key).join(file);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `output_in` the project's own store.
fn output(p: &Project, stage: &str, file: &str) -> Vec<u8> {
    output_in(p, &p.store(), stage, file)
}

fn assert_no_absolute_paths(store: &Path, folders: &[&Path]) {
    let strings = table_strings(&store.join("objects"));
    assert!(
        strings.iter().any(|(_, s)| s.ends_with(".jpg")),
        "no file names found"
    );
    for (file, value) in &strings {
        for folder in folders {
            assert!(
                !value.contains(&*folder.to_string_lossy()),
                "{} names {value}",
                file.display()
            );
        }
        assert!(!value.starts_with('/'), "{} names {value}", file.display());
    }
}

#[test]
fn two_folders_sharing_a_store_read_their_own_pictures_and_outlive_each_other() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let store = top.path().join("store");
    let a = project_in(&top.path().join("a"), &data, "data", "../store");
    let b = project_in(&top.path().join("b"), &data, "otherdata", "../store");
    let first = a.json(&["run"]);
    assert!(actions(&first).values().all(|a| a == "computed"), "{first}");
    let second = b.json(&["run"]);
    assert!(
        actions(&second).values().all(|a| a == "cached"),
        "the second folder computed again: {second}"
    );
    assert_no_absolute_paths(&store, &[a.path(), b.path()]);
    let features = output_in(&b, &store, "features", "features.safetensors");
    let tsne = output_in(&b, &store, "tsne", "image_tsne.parquet");
    let plot = output_in(&b, &store, "tsne", "image_tsne.png");

    // The task commands show this folder's files.
    let found = b.onenet(&[
        "similar-images",
        "--id",
        "demo_000003.jpg",
        "--format",
        "json",
    ]);
    assert!(found.status.success(), "{}", text(&found));
    let shown = String::from_utf8_lossy(&found.stdout).to_string();
    assert!(
        shown.contains(&*b.path().join("otherdata").to_string_lossy()),
        "{shown}"
    );
    assert!(!shown.contains(&*a.path().to_string_lossy()), "{shown}");

    // So do they for a variant run chosen by name, whoever computed its `images` first.
    b.json(&["run", "--set", "tsne.iterations=260", "--name", "longer"]);
    let found = b.onenet(&[
        "similar-images",
        "--id",
        "demo_000003.jpg",
        "--exp",
        "longer",
    ]);
    let shown = text(&found);
    assert!(found.status.success(), "{shown}");
    assert!(
        shown.contains(&*b.path().join("otherdata").to_string_lossy()),
        "{shown}"
    );

    fs::remove_dir_all(a.path()).unwrap();
    let forced = b.json(&[
        "run", "--force", "features", "--force", "tsne", "--force", "report",
    ]);
    let forced_actions = actions(&forced);
    for stage in ["features", "tsne", "report"] {
        assert_eq!(forced_actions[stage], "computed", "{forced}");
    }
    assert_eq!(
        output_in(&b, &store, "features", "features.safetensors"),
        features
    );
    assert_eq!(output_in(&b, &store, "tsne", "image_tsne.parquet"), tsne);
    assert_eq!(output_in(&b, &store, "tsne", "image_tsne.png"), plot);
    assert!(
        !forced.to_string().contains("could not be read"),
        "{forced}"
    );
}

#[test]
fn a_copied_project_works_once_its_original_is_deleted() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let original = project_in(&top.path().join("original"), &data, "data", "artifacts");
    original.run(&[]);
    let copy_dir = top.path().join("copy");
    copy_tree(original.path(), &copy_dir);
    fs::remove_dir_all(original.path()).unwrap();
    let copy = Project::at(&copy_dir);
    let rerun = copy.run(&[]);
    assert!(rerun.values().all(|a| a == "cached"), "{rerun:?}");
    assert_no_absolute_paths(&copy.store(), &[original.path(), copy.path()]);
    let features = output(&copy, "features", "features.safetensors");
    let forced = copy.run(&["--force", "features", "--force", "tsne"]);
    assert_eq!(forced["features"], "computed");
    assert_eq!(forced["tsne"], "computed");
    assert_eq!(output(&copy, "features", "features.safetensors"), features);
}

#[test]
fn outputs_computed_in_two_folders_are_the_same_bytes() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let one = project_in(&top.path().join("one"), &data, "data", "artifacts");
    let two = project_in(&top.path().join("two"), &data, "pictures", "artifacts");
    for p in [&one, &two] {
        let run = p.run(&["evaluate"]);
        assert!(run.values().all(|a| a == "computed"), "{run:?}");
    }
    for (stage, file) in [
        ("images", "images.parquet"),
        ("features", "rows.parquet"),
        ("features", "features.safetensors"),
        ("evaluate", "per_image.parquet"),
        ("evaluate", "examples.parquet"),
        ("evaluate", "metrics.parquet"),
    ] {
        assert!(
            output(&one, stage, file) == output(&two, stage, file),
            "{stage}/{file} differs between the two folders"
        );
    }
}

#[test]
fn a_picture_that_changes_while_features_runs_is_not_committed() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let p = project_in(&top.path().join("p"), &data, "data", "artifacts");
    p.run(&["images"]);
    let picture = p.path().join("data/Flicker8k_Dataset/demo_000004.jpg");
    let child = p
        .command(&["run", "features", "--format", "json"])
        .env("ONENET_TEST_STAGE_DELAY", "features:2500")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run plans (hashing the pictures into the images key), opens the stage's temporary
    // output, then waits: change the picture once that folder exists.
    support::wait_for_pending_output(&p.store());
    let other = fs::read(p.path().join("data/Flicker8k_Dataset/demo_000005.jpg")).unwrap();
    fs::write(&picture, other).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("demo_000004.jpg"), "{said}");
    assert!(said.contains("content differs"), "{said}");
    assert!(said.contains("run the `images` stage again"), "{said}");
    assert!(
        !p.store().join("latest/features").exists(),
        "an output was committed"
    );
    // The next run reads the folder as it is now.
    let rerun = p.run(&["features"]);
    assert_eq!(rerun["images"], "computed");
    assert_eq!(rerun["features"], "computed");
}

#[test]
fn finished_results_are_readable_without_the_dataset_or_the_weights() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("p");
    let p = project_in(&dir, &data, "data", "artifacts");
    fs::copy(weights(), dir.join("w.pth")).unwrap();
    fs::write(
        dir.join("pipeline.toml"),
        pipeline("data", "artifacts", "w.pth"),
    )
    .unwrap();
    p.run(&[]);

    // First the weights go, then the dataset folder too.
    fs::remove_file(dir.join("w.pth")).unwrap();
    let unknown = [("features", "w.pth"), ("train", "could not be planned")];
    assert_unknown(&p, &unknown, &["images", "captions"]);
    answers_with_a_warning(&p);
    fs::rename(dir.join("data"), dir.join("data-away")).unwrap();
    let unknown = [
        ("images", "data"),
        ("captions", "data"),
        ("report", "could not be planned"),
    ];
    assert_unknown(&p, &unknown, &[]);
    answers_with_a_warning(&p);
}

/// `status` succeeds, saying each of `unknown` (stage, part of the reason) is unknown and each of
/// `fresh` is fresh.
fn assert_unknown(p: &Project, unknown: &[(&str, &str)], fresh: &[&str]) {
    let status = p.status(&[]);
    for (stage, why) in unknown {
        let (state, reasons) = &status[*stage];
        assert_eq!(state, "unknown", "{stage}: {status:?}");
        assert!(reasons[0].contains(why), "{stage}: {reasons:?}");
    }
    for stage in fresh {
        assert_eq!(status[*stage].0, "fresh", "{stage}: {status:?}");
    }
}

/// The commands that read finished outputs answer, warning that freshness was not checked.
fn answers_with_a_warning(p: &Project) {
    for args in [
        vec!["metrics"],
        vec!["caption", "--id", "demo_000003.jpg"],
        vec!["similar-images", "--id", "demo_000003.jpg"],
        vec!["find-images", "a red circle"],
    ] {
        let out = p.onenet(&args);
        let said = text(&out);
        assert!(out.status.success(), "{args:?}: {said}");
        assert!(
            said.contains("freshness could not be checked"),
            "{args:?}: {said}"
        );
    }
    for args in [
        vec!["query", "SELECT count(*) AS n FROM images.images"],
        vec!["show", "train"],
        vec!["exp", "show"],
        vec!["dag"],
    ] {
        let out = p.onenet(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let show = p.json(&["show", "features"]);
    assert_eq!(show["state"], "unknown", "{show}");
    let reason = show["reasons"][0]["text"].as_str().unwrap();
    assert!(reason.contains("freshness"), "{show}");
}

/// Runs `args` as a user who cannot write the store: as another user when the tests run as
/// root (whom permissions do not stop), else with the store made read-only.
fn run_without_write_access(p: &Project, top: &Path, args: &[&str]) -> std::process::Output {
    let root = running_as_root();
    let mut cmd = if root {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_onenet"))
            .args(args)
            .current_dir(p.path())
            .env("HOME", top);
        cmd
    } else {
        p.command(args)
    };
    cmd.output().expect("run onenet")
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chmod(args: &[&str], path: &Path) {
    let status = std::process::Command::new("chmod")
        .args(args)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_store_that_cannot_be_written_serves_a_run_with_nothing_to_compute() {
    let (_demo, data) = dataset();
    let top = tempfile::tempdir().unwrap();
    let p = project_in(&top.path().join("p"), &data, "data", "artifacts");
    // The stages that need no libtorch: the other user need not reach this user's libtorch.
    let plain = pipeline("data", "artifacts", "random");
    fs::write(
        p.path().join("pipeline.toml"),
        plain.split("[stages.features]").next().unwrap(),
    )
    .unwrap();
    p.run(&[]);
    let store = p.store();
    // Everyone may read the project; only its owner may write the store.
    chmod(&["-R", "a+rX"], top.path());
    if !running_as_root() {
        chmod(&["-R", "a-w"], &store);
    }
    let result = std::panic::catch_unwind(|| {
        let out = run_without_write_access(&p, top.path(), &["run"]);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert_eq!(said.matches("cannot be written").count(), 1, "{said}");
        for args in [
            &["status"][..],
            &["query", "SELECT count(*) AS n FROM images.images"][..],
            &["show", "images", "--format", "json"][..],
        ] {
            let out = run_without_write_access(&p, top.path(), args);
            assert!(out.status.success(), "{args:?}: {}", text(&out));
        }
        // A stage that must be computed says why it cannot be.
        let out =
            run_without_write_access(&p, top.path(), &["run", "--set", "captions.min_count=2"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("cannot be written here"), "{said}");
    });
    chmod(&["-R", "u+w"], &store);
    result.unwrap();
}
