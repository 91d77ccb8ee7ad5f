//! Runs the stage kinds that need libtorch in a separate process, `onenet-torch`, so the engine
//! itself never loads libtorch: a no-op `run` or `status` then starts in milliseconds instead of
//! the quarter second libtorch's initialisation takes.
//!
//! The engine side (`run_in_worker`) sends the stage's context as JSON on the command line; the
//! worker (`serve`) runs the stage and answers with one JSON event per line on stdout: progress
//! as it goes, then the report or the error. The worker dies with the engine (parent-death
//! signal), so killing a run kills its stage too.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::{Params, Progress, StageContext, StageError, StageInput, StageReport};

/// The worker binary's file name; it sits beside the `onenet` binary.
pub const WORKER_BINARY: &str = "onenet-torch";

/// Everything a worker needs to run one stage.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageJob {
    pub kind: String,
    pub name: String,
    pub params: Params,
    /// (name, kind, dir) of each input.
    pub inputs: Vec<(String, String, PathBuf)>,
    pub base_dir: PathBuf,
    pub out_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub previous: Option<PathBuf>,
    #[serde(default)]
    pub lineage: Vec<crate::UpstreamRecord>,
}

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
    },
    Error {
        message: String,
    },
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
    let job = StageJob {
        kind: ctx.kind.to_string(),
        name: ctx.name.to_string(),
        params: ctx.params.clone(),
        inputs: ctx
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.kind.clone(), i.dir.clone()))
            .collect(),
        base_dir: ctx.base_dir.to_path_buf(),
        out_dir: ctx.out_dir.to_path_buf(),
        scratch_dir: ctx.scratch_dir.to_path_buf(),
        previous: ctx.previous.map(Path::to_path_buf),
        lineage: ctx.lineage.to_vec(),
    };
    let worker = worker_path();
    let job_json = serde_json::to_string(&job).map_err(|e| StageError::Input(e.to_string()))?;
    let mut child = Command::new(&worker)
        .args(["run-stage", &job_json])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            StageError::file(
                &worker,
                format!("cannot start the libtorch worker ({e}); it is built with `cargo build`"),
            )
        })?;
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
                }) => {
                    outcome = Some(Ok(StageReport {
                        warnings,
                        notes,
                        device,
                    }))
                }
                Ok(WorkerEvent::Error { message }) => {
                    outcome = Some(Err(StageError::Input(message)))
                }
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
    let inputs: Vec<StageInput> = job
        .inputs
        .iter()
        .map(|(name, kind, dir)| StageInput {
            name: name.clone(),
            kind: kind.clone(),
            dir: dir.clone(),
        })
        .collect();
    let ctx = StageContext {
        kind: &job.kind,
        name: &job.name,
        params: &job.params,
        inputs: &inputs,
        base_dir: &job.base_dir,
        out_dir: &job.out_dir,
        scratch_dir: &job.scratch_dir,
        previous: job.previous.as_deref(),
        lineage: &job.lineage,
        progress: &WorkerProgress,
    };
    match run(&ctx) {
        Ok(report) => {
            WorkerProgress::send(&WorkerEvent::Report {
                warnings: report.warnings,
                notes: report.notes,
                device: Some(device.to_string()),
            });
            true
        }
        Err(e) => {
            WorkerProgress::send(&WorkerEvent::Error {
                message: e.to_string(),
            });
            false
        }
    }
}
