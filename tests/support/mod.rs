//! Shared helpers of the integration tests: a temporary project folder driven through the real
//! `onenet` binary.
#![allow(dead_code)]

pub mod s3;
pub mod slurm;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A project folder holding a pipeline file and its store: temporary (removed when dropped), or
/// one a test made itself.
pub struct Project {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

/// A demo dataset and the two stages that read it.
pub const SMALL_DEMO: &str = r#"
[stages.demo]
kind = "demo_data"
params = { images = 30, image_size = 48, seed = 3 }

[stages.captions]
kind = "captions"
inputs = ["demo"]

[stages.images]
kind = "images"
inputs = ["demo"]
"#;

/// The stages of `SMALL_DEMO` reading a dataset folder `data` beside the pipeline instead.
pub const DATA_FOLDER: &str = r#"
[stages.captions]
kind = "captions"
params = { root = "data" }

[stages.images]
kind = "images"
params = { root = "data" }
"#;

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("pipeline.toml"), pipeline).expect("write pipeline");
        Project {
            path: dir.path().to_path_buf(),
            _temporary: Some(dir),
        }
    }

    /// The project in `dir`, which the test made (and removes).
    pub fn at(dir: &Path) -> Project {
        Project {
            path: dir.to_path_buf(),
            _temporary: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onenet"));
        cmd.current_dir(self.path()).args(args);
        cmd
    }

    pub fn onenet(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run onenet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "onenet panicked: {stderr}");
        out
    }

    /// Runs onenet expecting success and JSON on stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.onenet(&all);
        assert!(
            out.status.success(),
            "onenet {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Each stage's action (`computed`, `cached`) in a run.
    pub fn run(&self, args: &[&str]) -> HashMap<String, String> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        actions(&self.json(&all))
    }

    /// Each stage's state and the text of its reasons.
    pub fn status(&self, args: &[&str]) -> HashMap<String, (String, Vec<String>)> {
        self.status_json(args)
            .into_iter()
            .map(|(name, s)| {
                let reasons = s["reasons"]
                    .as_array()
                    .expect("reasons")
                    .iter()
                    .map(|r| r["text"].as_str().unwrap_or_default().to_string())
                    .collect();
                let state = s["state"].as_str().unwrap_or_default().to_string();
                (name, (state, reasons))
            })
            .collect()
    }

    /// Each stage's `status --format json` object.
    pub fn status_json(&self, args: &[&str]) -> HashMap<String, Value> {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        self.json(&all)["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s.clone(),
                )
            })
            .collect()
    }

    /// Each stage's key, from `status`.
    pub fn keys(&self, args: &[&str]) -> HashMap<String, String> {
        self.status_json(args)
            .into_iter()
            .map(|(name, s)| (name, s["key"].as_str().unwrap_or_default().to_string()))
            .collect()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("artifacts")
    }

    /// The `_onenet.json` of a stage's newest output.
    pub fn object_meta(&self, stage: &str) -> Value {
        let text = fs::read_to_string(self.store().join("latest").join(stage).join("_onenet.json"))
            .expect("object metadata");
        serde_json::from_str(&text).expect("object metadata JSON")
    }

    /// Copies the demo stage's output out of the store, as a user's own dataset folder.
    pub fn export_demo_dataset(&self, to: &Path) {
        let from = self.store().join("latest/demo");
        copy_tree(&from, to);
        let _ = fs::remove_file(to.join("_onenet.json"));
    }
}

/// A project reading its own dataset folder `data` (made by the demo generator) with `pipeline`.
pub fn project_with_data_folder(pipeline: &str) -> Project {
    let demo = Project::new(SMALL_DEMO);
    demo.run(&["demo"]);
    let p = Project::new(pipeline);
    demo.export_demo_dataset(&p.path().join("data"));
    p
}

pub fn actions(v: &Value) -> HashMap<String, String> {
    v["stages"]
        .as_array()
        .expect("stages array")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Copies a folder tree; symbolic links are copied as links (the store's `latest/` is made of
/// relative ones).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn all(actions: &HashMap<String, String>, what: &str) -> bool {
    actions.values().all(|a| a == what)
}

/// The EfficientNet-Lite0 weights `make setup` installs.
pub fn weights() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet-lite0-57934424.pth");
    assert!(
        path.is_file(),
        "{} is missing: run `make setup` (it installs the EfficientNet-Lite0 weights)",
        path.display()
    );
    path
}

/// Waits (at most a minute) until a run has opened a stage's temporary output in `store`: the
/// stage is about to compute (or, with `ONENET_TEST_STAGE_DELAY`, waiting to).
pub fn wait_for_pending_output(store: &Path) {
    let tmp = store.join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
