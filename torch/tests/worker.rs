//! The `onenet-torch` worker binary on its own: what it answers to jobs it cannot run. (Being an
//! integration test of this package also makes `cargo test --workspace` build the worker, which
//! the engine's own tests start.)

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs the worker's `run-stage` with `job` on its stdin, as the engine does.
fn worker(job: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_onenet-torch"))
        .arg("run-stage")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run onenet-torch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.as_bytes())
        .expect("write the job");
    let out = child.wait_with_output().expect("wait for onenet-torch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code(), text)
}

#[test]
fn a_malformed_job_is_an_error_not_a_panic() {
    let (code, text) = worker("{not json");
    assert_eq!(code, Some(1));
    assert!(text.contains("reading the stage job"), "{text}");
}

#[test]
fn a_kind_the_worker_does_not_run_is_named() {
    let job = serde_json::json!({
        "kind": "captions", "name": "c", "params": {}, "inputs": [],
        "base_dir": ".", "out_dir": ".", "scratch_dir": ".", "previous": null
    });
    let (code, text) = worker(&job.to_string());
    assert_eq!(code, Some(1));
    assert!(
        text.contains("stage kind `captions` does not run in the worker"),
        "{text}"
    );
}

#[test]
fn a_stage_error_comes_back_as_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let job = serde_json::json!({
        "kind": "order", "name": "order", "params": {"seed": {"Int": 7}}, "inputs": [],
        "base_dir": dir.path(), "out_dir": dir.path(), "scratch_dir": dir.path(), "previous": null
    });
    let (code, text) = worker(&job.to_string());
    assert_eq!(code, Some(1));
    let event: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(event["event"], "error");
    // The error keeps its kind across the process boundary.
    assert_eq!(event["error"]["kind"], "input", "{event}");
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs an input of kind `captions`"),
        "{event}"
    );
}
