//! Runs the stage kinds that need libtorch in a separate process, `onenet-torch`, so the engine
//! itself never loads libtorch: a no-op `run` or `status` then starts in milliseconds instead of
//! the quarter second libtorch's initialisation takes.
//!
//! The engine side (`run_in_worker`) writes the stage's job (`StageJob`, the serialisable context
//! itself) as JSON to the worker's stdin — not on the command line, where Linux refuses a single
//! argument over 128 KiB, which a long lineage or a shard of thousands of images exceeds; the
//! worker (`serve`) runs the stage and answers with one JSON event per line on stdout: progress
//! as it goes, then the report or the error, which keeps its kind (a param error stays a param
//! error). The worker dies with the engine (parent-death signal), so killing a run kills its
//! stage too.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::{Progress, StageContext, StageError, StageJob, StageReport};

/// The worker binary's file name; it sits beside the `onenet` binary.
pub const WORKER_BINARY: &str = "onenet-torch";

/// What a worker says, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum WorkerEvent {
    Start {
        len: u64,
        what: String,
    },
    Inc {
        n: u64,
    },
    Message {
        text: String,
    },
    Report {
        warnings: Vec<String>,
        notes: Vec<String>,
        /// The device the stage ran on, as the worker's runtime decided it.
        #[serde(default)]
        device: Option<String>,
        #[serde(default)]
        metrics: std::collections::BTreeMap<String, f64>,
    },
    Error {
        error: WireError,
    },
}

/// A `StageError` as it crosses the process boundary: the same variants, with I/O errors as
/// their message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WireError {
    Io {
        path: PathBuf,
        message: String,
    },
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    File {
        path: PathBuf,
        message: String,
    },
    Param {
        name: String,
        message: String,
    },
    Input {
        message: String,
    },
    Table {
        path: PathBuf,
        message: String,
    },
}

impl From<&StageError> for WireError {
    fn from(e: &StageError) -> Self {
        match e {
            StageError::Io { path, source } => WireError::Io {
                path: path.clone(),
                message: source.to_string(),
            },
            StageError::Parse {
                path,
                line,
                message,
            } => WireError::Parse {
                path: path.clone(),
                line: *line,
                message: message.clone(),
            },
            StageError::File { path, message } => WireError::File {
                path: path.clone(),
                message: message.clone(),
            },
            StageError::Param { name, message } => WireError::Param {
                name: name.clone(),
                message: message.clone(),
            },
            StageError::Input(message) => WireError::Input {
                message: message.clone(),
            },
            StageError::Table { path, message } => WireError::Table {
                path: path.clone(),
                message: message.clone(),
            },
        }
    }
}

impl From<WireError> for StageError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io { path, message } => StageError::Io {
                path,
                source: std::io::Error::other(message),
            },
            WireError::Parse {
                path,
                line,
                message,
            } => StageError::Parse {
                path,
                line,
                message,
            },
            WireError::File { path, message } => StageError::File { path, message },
            WireError::Param { name, message } => StageError::Param { name, message },
            WireError::Input { message } => StageError::Input(message),
            WireError::Table { path, message } => StageError::Table { path, message },
        }
    }
}

/// The worker binary: `$ONENET_TORCH` if set, else `onenet-torch` beside the running binary.
pub fn worker_path() -> PathBuf {
    if let Some(path) = std::env::var_os("ONENET_TORCH") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(WORKER_BINARY)))
        .unwrap_or_else(|| PathBuf::from(WORKER_BINARY))
}

/// The `run` of every libtorch stage kind as the engine sees it: runs the stage in the worker.
pub fn run_in_worker(ctx: &StageContext) -> Result<StageReport, StageError> {
    let worker = worker_path();
    let job_json = serde_json::to_vec(ctx.job).map_err(|e| StageError::Input(e.to_string()))?;
    let mut child = Command::new(&worker)
        .arg("run-stage")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            StageError::file(
                &worker,
                format!("cannot start the libtorch worker ({e}); it is built with `cargo build`"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A worker that dies before reading its job says so through its exit status below.
        let _ = stdin.write_all(&job_json);
    }
    let mut outcome: Option<Result<StageReport, StageError>> = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<WorkerEvent>(&line) {
                Ok(WorkerEvent::Start { len, what }) => ctx.progress.start(len, &what),
                Ok(WorkerEvent::Inc { n }) => ctx.progress.inc(n),
                Ok(WorkerEvent::Message { text }) => ctx.progress.set_message(&text),
                Ok(WorkerEvent::Report {
                    warnings,
                    notes,
                    device,
                    metrics,
                }) => {
                    outcome = Some(Ok(StageReport {
                        warnings,
                        notes,
                        device,
                        metrics,
                    }))
                }
                Ok(WorkerEvent::Error { error }) => outcome = Some(Err(error.into())),
                // Anything else a library printed goes to the user as it is.
                Err(_) => eprintln!("{line}"),
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| StageError::file(&worker, e.to_string()))?;
    match outcome {
        Some(Ok(report)) if status.success() => Ok(report),
        Some(Err(e)) => Err(e),
        _ => Err(StageError::file(
            &worker,
            format!("the libtorch worker stopped without a result ({status})"),
        )),
    }
}

/// Progress that a worker reports to the engine on stdout.
pub struct WorkerProgress;

impl WorkerProgress {
    fn send(event: &WorkerEvent) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

impl Progress for WorkerProgress {
    fn start(&self, len: u64, what: &str) {
        Self::send(&WorkerEvent::Start {
            len,
            what: what.to_string(),
        });
    }

    fn inc(&self, n: u64) {
        Self::send(&WorkerEvent::Inc { n });
    }

    fn set_message(&self, message: &str) {
        Self::send(&WorkerEvent::Message {
            text: message.to_string(),
        });
    }
}

/// The worker side: runs `job` with `run` and reports the outcome as the last event, with the
/// `device` the worker's runtime decided for it. Returns whether the stage succeeded.
pub fn serve(job: &StageJob, run: crate::RunFn, device: &str) -> bool {
    // A worker of a killed run may take a moment to die after its engine; until it has, it may
    // still be writing checkpoints, which this one must not read half-replaced.
    let _scratch_lock = match lock_scratch(job) {
        Ok(lock) => lock,
        Err(e) => {
            WorkerProgress::send(&WorkerEvent::Error {
                error: WireError::from(&e),
            });
            return false;
        }
    };
    let ctx = StageContext::new(job, &WorkerProgress);
    match run(&ctx) {
        Ok(report) => {
            WorkerProgress::send(&WorkerEvent::Report {
                warnings: report.warnings,
                notes: report.notes,
                device: Some(device.to_string()),
                metrics: report.metrics,
            });
            true
        }
        Err(e) => {
            WorkerProgress::send(&WorkerEvent::Error {
                error: WireError::from(&e),
            });
            false
        }
    }
}

/// The lock file a worker holds in its scratch directory while it runs.
pub const SCRATCH_LOCK: &str = ".worker.lock";

/// Takes the scratch directory's lock for the worker's lifetime, waiting for a previous holder
/// (the kernel drops it when that process dies). None when the scratch directory is the output
/// directory (one-off jobs), which must not gain a stray file.
fn lock_scratch(job: &StageJob) -> Result<Option<std::fs::File>, StageError> {
    if job.scratch_dir == job.out_dir {
        return Ok(None);
    }
    let path = job.scratch_dir.join(SCRATCH_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StageError::io(&path, e))?;
    file.lock().map_err(|e| StageError::io(&path, e))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_across_the_process_boundary() {
        let errors = [
            StageError::Param {
                name: "weights".into(),
                message: "is not set".into(),
            },
            StageError::Parse {
                path: "a.txt".into(),
                line: 3,
                message: "no tab".into(),
            },
            StageError::io("b.jpg", std::io::Error::other("denied")),
            StageError::Input("needs an input".into()),
        ];
        for e in errors {
            let event = WorkerEvent::Error {
                error: WireError::from(&e),
            };
            let line = serde_json::to_string(&event).unwrap();
            let WorkerEvent::Error { error } = serde_json::from_str(&line).unwrap() else {
                panic!("{line}");
            };
            let back = StageError::from(error);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{line}"
            );
        }
    }

    #[test]
    fn a_worker_waits_for_the_scratch_lock_of_a_worker_still_alive() {
        let dir = tempfile::tempdir().unwrap();
        let (out, scratch) = (dir.path().join("out"), dir.path().join("scratch"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let mut job = StageJob::new(
            "k",
            "s",
            crate::Params::default(),
            Vec::new(),
            dir.path(),
            &out,
        );
        job.scratch_dir = scratch.clone();
        let first = lock_scratch(&job).unwrap();
        assert!(first.is_some());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = std::thread::spawn(move || {
            let lock = lock_scratch(&job);
            tx.send(()).unwrap();
            lock.map(|l| l.is_some())
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second worker did not wait"
        );
        drop(first);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        assert!(waiting.join().unwrap().unwrap());
        // One-off jobs write nothing beside their outputs.
        let one_off = StageJob::new(
            "k",
            "s",
            crate::Params::default(),
            Vec::new(),
            dir.path(),
            &out,
        );
        assert!(lock_scratch(&one_off).unwrap().is_none());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }
}
