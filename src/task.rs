//! A stage computed away from the engine's process, as a cluster job runs it: the engine writes
//! a [`StageTask`] as JSON, the job runs `onenet stage-task FILE` on a node, which computes the
//! stage's job and commits the output into the store the nodes share. The engine then learns the
//! result from the store alone, never from the scheduler.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::KeyInputs;
use crate::store::{ArtifactStore, CommitInfo};

/// What a cluster job needs to compute one stage (or one shard of one) and commit it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTask {
    /// The store's root folder (shared between the nodes).
    pub store: PathBuf,
    /// The name the output is committed under (a stage's name, or `<stage>#shard`).
    pub stage: String,
    pub key_inputs: KeyInputs,
    /// The stage's job; its `out_dir` and `scratch_dir` are replaced on the node.
    pub job: onenet_contract::StageJob,
    /// Compute even if the store has the key (`--force`); the old output is swapped out only
    /// once the new one is complete.
    #[serde(default)]
    pub replace: bool,
    /// The submitting run holds the key's lock for the task's whole life, so the task must not
    /// take it (it would wait for its own submitter).
    #[serde(default)]
    pub lock_held: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Stage(String),
}

/// Computes the task's output and commits it into its store, unless it is there already and
/// `replace` is not set (then false). Unless the submitter holds it, runs under the key's lock,
/// so two processes (or a resubmitted cluster task) computing the same shard do it once; where
/// the file system ignores locks, both compute and the commit (a rename) keeps one whole copy.
pub fn run_task(
    task: &StageTask,
    kinds: &[onenet_contract::StageKind],
    lock_timeout: Duration,
    progress: &dyn onenet_contract::Progress,
) -> Result<bool, TaskError> {
    let store = ArtifactStore::open(&task.store)?;
    let key = task.key_inputs.key();
    if !task.replace && store.has(&key) {
        return Ok(false);
    }
    let what = format!("{} (key {})", task.stage, key.short());
    let _lock = if task.lock_held {
        None
    } else {
        Some(store.lock(&key, &what, lock_timeout, &|_| {})?)
    };
    if !task.replace && store.has(&key) {
        return Ok(false);
    }
    let kind = kinds
        .iter()
        .find(|k| k.name == task.job.kind)
        .ok_or_else(|| TaskError::Stage(format!("unknown stage kind `{}`", task.job.kind)))?;
    let pending = store.begin(&key)?;
    let mut job = task.job.clone();
    job.out_dir = pending.dir.clone();
    job.scratch_dir = store.scratch_dir(&key)?;
    crate::engine::test_delay(&task.stage);
    let start = std::time::Instant::now();
    let ctx = onenet_contract::StageContext::new(&job, progress);
    let report = match (kind.run)(&ctx) {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&pending.dir);
            return Err(TaskError::Stage(e.to_string()));
        }
    };
    // The key names the device the submitter expected (a GPU partition: cuda); an output
    // computed elsewhere would be filed under a key that does not describe it.
    if let (Some(ran), Some(keyed)) = (
        report.device.as_deref(),
        task.key_inputs.environment.get("device"),
    ) {
        if ran != keyed {
            let _ = std::fs::remove_dir_all(&pending.dir);
            return Err(TaskError::Stage(format!(
                "ran on {ran}, but its key was computed for {keyed} (does the job's partition \
                 have the GPU its `gpus` setting asks for?); nothing was committed"
            )));
        }
    }
    // Where locks are not honoured another process may have committed it meanwhile: its copy
    // is as good, and replacing it would pull it from under a reader.
    if !task.replace && store.has(&key) {
        let _ = std::fs::remove_dir_all(&pending.dir);
        return Ok(false);
    }
    store.commit(
        pending,
        &task.stage,
        &task.key_inputs,
        CommitInfo {
            warnings: report.warnings,
            notes: report.notes,
            seconds: start.elapsed().as_secs_f64(),
            device: report.device,
            metrics: report.metrics,
        },
    )?;
    let _ = std::fs::remove_dir_all(&job.scratch_dir);
    Ok(true)
}
