//! Test support: runs a Python script that checks our metrics against the reference
//! implementations (NLTK, the COCO caption evaluation code), passing JSON both ways.
//!
//! A missing interpreter or package fails the test with a message naming `make test-deps`, which
//! installs them: a comparison that quietly does not run would look like one that passed.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The interpreter: `$PYTHON`, else `python3` (as the Makefile's `PYTHON`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `script` with `input` as JSON on stdin and parses its stdout as JSON.
///
/// # Panics
/// If `import {module}` fails (with a message that `make test-deps` installs it), or the script
/// fails or prints something that is not the expected JSON.
pub fn run_json<I: Serialize, O: DeserializeOwned>(module: &str, script: &str, input: &I) -> O {
    let python = python();
    let import = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match import {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`{python} -c 'import {module}'` failed (`make test-deps` installs it): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => panic!("cannot run {python} (`make test-deps` needs it): {e}"),
    }
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    // The scripts read all of their input before writing anything, so writing first cannot
    // deadlock.
    let input = serde_json::to_vec(input).expect("test input serialises");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&input)
        .expect("writing to the script");
    let output = child.wait_with_output().expect("waiting for the script");
    assert!(output.status.success(), "the {module} script failed");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the {module} script printed no valid JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
