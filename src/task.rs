//! A stage computed away from the engine's process, as a cluster job runs it: the engine writes
//! a [`StageTask`] as JSON, the job runs `onenet stage-task FILE` on a node, which computes the
//! stage's job and commits the output into the store the nodes share. The engine then learns the
//! result from the store alone, never from the scheduler.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::KeyInputs;
use crate::store::ArtifactStore;

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
    /// The files the key was computed from, as the submitter planned them: checked again on
    /// the node before its output is committed.
    #[serde(default)]
    pub sources: Vec<crate::execute::PlannedSource>,
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
    let execution = crate::execute::Execution {
        store: &store,
        name: &task.stage,
        key_inputs: &task.key_inputs,
        sources: &task.sources,
        replace: task.replace,
    };
    match execution.run(task.job.clone(), kind.run, progress) {
        Ok(crate::execute::Executed::Committed(_)) => Ok(true),
        Ok(crate::execute::Executed::AlreadyCommitted) => Ok(false),
        Err(crate::execute::ExecuteError::Store(e)) => Err(e.into()),
        Err(e) => Err(TaskError::Stage(e.to_string())),
    }
}
