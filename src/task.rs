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
    let what = format!("{} (key {})", task.stage, key.short());
    let _lock = if task.lock_held {
        if !task.replace && store.has(&key) {
            return Ok(false);
        }
        None
    } else {
        match store.lock_to_make(&key, &what, task.replace, lock_timeout, &|_| {})? {
            Some(lock) => Some(lock),
            None => return Ok(false),
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use onenet_contract::{
        InputRule, NoProgress, ParamValue, Params, StageContext, StageError, StageJob, StageKind,
        StageReport,
    };
    use std::collections::BTreeMap;

    /// Writes its output, then rewrites the file its `touch` param names with `with`'s text.
    fn touching(ctx: &StageContext) -> Result<StageReport, StageError> {
        std::fs::write(ctx.out_dir.join("out.txt"), b"output").unwrap();
        std::fs::write(ctx.params.str("touch")?, ctx.params.str("with")?).unwrap();
        Ok(StageReport::default())
    }

    const TOUCHING: StageKind = StageKind {
        name: "touching",
        version: 1,
        about: "test",
        params: &[],
        inputs: InputRule {
            kinds: &[],
            min: 0,
            max: 0,
        },
        sources: |_, _, _| Ok(Vec::new()),
        device: onenet_contract::DeviceUse::NoLibtorch,
        run: touching,
        shards: None,
        files_root: None,
    };

    /// A cluster task of kind `touching` whose key was planned from `source` (as it is now);
    /// the task writes `with` into it while it runs.
    fn task(store: &std::path::Path, source: &std::path::Path, with: &str) -> StageTask {
        let params = Params::with_defaults(
            &[],
            BTreeMap::from([
                (
                    "touch".to_string(),
                    ParamValue::Str(source.display().to_string()),
                ),
                ("with".to_string(), ParamValue::Str(with.to_string())),
            ]),
        );
        let planned = crate::execute::PlannedSource {
            path: source.to_path_buf(),
            stamp: crate::hashing::stamp_of(source).unwrap(),
            hash: onenet_contract::hash_file(source).unwrap(),
        };
        StageTask {
            store: store.to_path_buf(),
            stage: "touching".into(),
            key_inputs: crate::key::KeyInputs {
                format: crate::key::KEY_FORMAT,
                kind: "touching".into(),
                version: 1,
                params: BTreeMap::new(),
                upstream: Vec::new(),
                sources: BTreeMap::from([("./source.txt".to_string(), planned.hash.clone())]),
                environment: BTreeMap::new(),
                recorded: BTreeMap::new(),
            },
            job: StageJob::new("touching", "touching", params, Vec::new(), store, store),
            sources: vec![planned],
            replace: false,
            lock_held: false,
        }
    }

    #[test]
    fn a_source_changed_while_a_cluster_task_runs_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let source = dir.path().join("source.txt");
        std::fs::write(&source, "planned").unwrap();
        let changing = task(&store, &source, "changed");
        let err = run_task(&changing, &[TOUCHING], Duration::from_secs(5), &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.txt") && err.contains("changed while"),
            "{err}"
        );
        let key = changing.key_inputs.key();
        assert!(!ArtifactStore::open(&store).unwrap().has(&key));

        // Rewritten with the same bytes: the content the key names, so it is committed.
        std::fs::write(&source, "planned").unwrap();
        let same = task(&store, &source, "planned");
        assert!(run_task(&same, &[TOUCHING], Duration::from_secs(5), &NoProgress).unwrap());
        // A second task of the same key finds it committed.
        assert!(!run_task(&same, &[TOUCHING], Duration::from_secs(5), &NoProgress).unwrap());
    }
}
