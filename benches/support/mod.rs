//! Helpers the benchmarks share: the synthetic Flickr8k-style dataset, running the `onenet`
//! binary and reading its JSON output.
// Each benchmark uses some of these.
#![allow(dead_code)]

pub mod dataset;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `onenet ARGS` in `dir`, timing the whole process. Panics, with its stderr, unless it
/// exits with status 0. Returns the time and stdout.
pub fn onenet_cmd(onenet: &Path, dir: &Path, args: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = Command::new(onenet)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("start onenet");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "`onenet {}` in {} failed ({}):\n{}\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `stages` array of `onenet run --format json`.
pub fn stages(stdout: &str) -> Vec<Value> {
    let value: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("onenet printed invalid JSON ({e}):\n{stdout}"));
    match value.get("stages") {
        Some(Value::Array(stages)) => stages.clone(),
        _ => panic!("onenet's JSON has no `stages` array:\n{stdout}"),
    }
}

/// `name action (seconds)` for each stage of a `run --format json` output.
pub fn describe_actions(stdout: &str) -> String {
    stages(stdout)
        .iter()
        .map(|s| {
            format!(
                "{} {} ({:.2} s)",
                s["name"].as_str().unwrap_or("?"),
                s["action"].as_str().unwrap_or("?"),
                s["seconds"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `text` to `path` unless it already holds exactly that (so its mtime stays put).
pub fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// The repository root: the nearest folder at or above the benchmark's crate that holds
/// `Cargo.lock` (the workspace's).
pub fn repo_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(crate_dir)
        .to_path_buf()
}

/// The program to run for `cargo` (the one running this benchmark, when there is one).
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace's target folder (`CARGO_TARGET_DIR`, else `<repo>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Builds the workspace's default members in release mode (the `onenet` engine and its
/// `onenet-torch` worker, as `make build` does) and returns the `onenet` binary.
pub fn build_release() -> PathBuf {
    let status = Command::new(cargo())
        .args(["build", "--release"])
        .current_dir(repo_root())
        .status()
        .expect("start cargo build");
    assert!(status.success(), "cargo build --release failed: {status}");
    let release = target_dir().join("release");
    for binary in ["onenet", "onenet-torch"] {
        assert!(
            release.join(binary).is_file(),
            "{binary} not found in {} after the build",
            release.display()
        );
    }
    release.join("onenet")
}
