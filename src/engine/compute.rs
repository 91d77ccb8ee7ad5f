//! Computing one stage here: the remote asked first, then the job run and committed through
//! `Execution` (every guard in one place), the view moved and the output pushed.

use std::path::PathBuf;

use onenet_contract::{StageInput, StageJob};

use super::*;
use crate::execute::{ExecuteError, Executed, Execution};
use crate::key::CacheKey;
use crate::store::{now_unix, StoreError};

impl Engine {
    pub(super) fn compute_or_reuse(
        &self,
        stage: &PlannedStage,
        options: &RunOptions,
        observer: &dyn RunObserver,
        history: &RunHistory,
    ) -> Result<Done, EngineError> {
        let forced = options.force.contains(&stage.name);
        let reuse = |meta: Option<crate::store::ObjectMeta>| {
            match self.set_newest(stage) {
                Err(e) if is_read_only(&e) => self.warn_read_only(&e, observer),
                other => other?,
            }
            let (warnings, notes) = meta.map(|m| (m.warnings, m.notes)).unwrap_or_default();
            Ok::<_, EngineError>(Done {
                action: Action::Cached,
                warnings,
                notes,
                device: None,
            })
        };
        let what = format!("stage {} (key {})", stage.name, stage.key.short());
        let on_wait = |lock: &Path| observer.waiting_for_lock(&stage.name, lock);
        let lock =
            match self
                .store
                .lock_to_make(&stage.key, &what, forced, options.lock_timeout, &on_wait)
            {
                Err(e) if is_read_only(&e) => {
                    return Err(EngineError::Stage {
                        stage: stage.name.clone(),
                        message: format!(
                            "must be computed, but the store {} cannot be written here ({e}); run \
                         where it can be, or give this project a store of its own ([store] path)",
                            self.store.root().display()
                        ),
                    })
                }
                lock => lock?,
            };
        let Some(_lock) = lock else {
            return reuse(self.store.meta(&stage.key));
        };
        let mut remote_warnings = Vec::new();
        if !forced {
            if let Some(meta) =
                self.try_pull(stage, &stage.key, "pulling", observer, &mut remote_warnings)?
            {
                self.set_newest(stage)?;
                return Ok(Done {
                    action: Action::Pulled,
                    warnings: meta.warnings,
                    notes: meta.notes,
                    device: None,
                });
            }
        }
        let run = StageRun {
            stage,
            options,
            observer,
            history,
        };
        let decl = &self.pipeline.stages[stage.index];
        let inputs: Vec<StageInput> = stage
            .key_inputs
            .upstream
            .iter()
            .filter_map(|(name, hex)| CacheKey::from_hex(hex).map(|k| self.stage_input(name, &k)))
            .collect();
        if let Some(spec) = decl.kind.shards {
            let per_shard = decl.params.int(spec.param).unwrap_or(0);
            if per_shard > 0 {
                return self.compute_sharded(
                    &run,
                    spec,
                    per_shard as usize,
                    inputs,
                    remote_warnings,
                );
            }
        }
        if self.pipeline.executor.kind == crate::config::ExecutorKind::Slurm
            && decl.kind.device.uses_libtorch()
            && !decl.resources.local
        {
            return self.compute_on_slurm(&run, inputs, forced, remote_warnings);
        }
        // A forced stage starts from scratch: no checkpoint of a killed run and nothing of its
        // earlier output is reused.
        if forced {
            let _ = std::fs::remove_dir_all(self.store.scratch_dir(&stage.key)?);
        }
        let previous = if forced {
            None
        } else {
            latest_dir(&self.store, &stage.name)
        };
        let job = StageJob {
            previous,
            lineage: self.lineage(stage, history),
            ..self.job_of(stage, inputs)
        };
        let progress = observer.stage_started(&stage.name);
        let executed =
            self.execution(stage, &stage.name, forced)
                .run(job, decl.kind.run, progress.as_ref());
        drop(progress);
        match self.executed(stage, executed)? {
            Some(meta) => self.finish_computed(stage, meta, remote_warnings, options, observer),
            None => reuse(self.store.meta(&stage.key)),
        }
    }

    /// Brings object `key` (the stage's output, or one of its shards) from the remote cache,
    /// if there is one and it has the object: its metadata, or None (no remote, not there, or
    /// a copy that cannot be used, which adds a warning saying why it is computed instead).
    /// `what` names the transfer in the progress line.
    pub(super) fn try_pull(
        &self,
        stage: &PlannedStage,
        key: &CacheKey,
        what: &str,
        observer: &dyn RunObserver,
        warnings: &mut Vec<String>,
    ) -> Result<Option<crate::store::ObjectMeta>, EngineError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let on_bytes = |done: u64, total: u64| observer.transfer(&stage.name, what, done, total);
        let pulled = remote
            .pull(key, &self.store, &on_bytes)
            .map_err(|e| EngineError::Stage {
                stage: stage.name.clone(),
                message: e.to_string(),
            })?;
        Ok(match pulled {
            crate::remote::Pulled::Done { meta, .. } => Some(*meta),
            crate::remote::Pulled::Missing => None,
            crate::remote::Pulled::Unusable(reason) => {
                warnings.push(format!(
                    "the remote's copy ({}) cannot be used, so it was computed: {reason}",
                    remote.url()
                ));
                None
            }
        })
    }

    /// The job of `stage` reading `inputs`, with no earlier output, lineage or shard, and no
    /// folders yet (`Execution::run` sets them).
    pub(super) fn job_of(&self, stage: &PlannedStage, inputs: Vec<StageInput>) -> StageJob {
        let decl = &self.pipeline.stages[stage.index];
        StageJob {
            kind: decl.kind.name.to_string(),
            name: stage.name.clone(),
            params: decl.params.clone(),
            inputs,
            base_dir: self.pipeline.base_dir.clone(),
            out_dir: PathBuf::new(),
            scratch_dir: PathBuf::new(),
            previous: None,
            lineage: Vec::new(),
            shard: None,
            files_root: stage.files_root.clone(),
        }
    }

    /// How a job of `stage` (or of one of its shards, committed as `name`) is run and
    /// committed: into this store, checked against the stage's planned sources.
    pub(super) fn execution<'a>(
        &'a self,
        stage: &'a PlannedStage,
        name: &'a str,
        replace: bool,
    ) -> Execution<'a> {
        Execution {
            store: &self.store,
            name,
            key_inputs: &stage.key_inputs,
            sources: &stage.sources,
            replace,
        }
    }

    /// The committed object's metadata, None when another process committed the key first, or
    /// the error as the stage's. A job that ran on another device than its key names makes
    /// this machine ask the worker for its device again next time.
    pub(super) fn executed(
        &self,
        stage: &PlannedStage,
        executed: Result<Executed, ExecuteError>,
    ) -> Result<Option<crate::store::ObjectMeta>, EngineError> {
        match executed {
            Ok(Executed::Committed(meta)) => Ok(Some(*meta)),
            Ok(Executed::AlreadyCommitted) => Ok(None),
            Err(ExecuteError::Store(e)) => Err(e.into()),
            Err(e) => {
                if matches!(e, ExecuteError::Device { .. }) {
                    crate::environment::forget(&self.device_cache_file());
                }
                Err(EngineError::Stage {
                    stage: stage.name.clone(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// The end of computing a stage whose output (`meta`) is committed: the pipeline's view
    /// follows it, its checkpoints go (they are only worth keeping until the output they lead
    /// to exists), the remote gets it, and the run reports it with `warnings` of its own.
    pub(super) fn finish_computed(
        &self,
        stage: &PlannedStage,
        meta: crate::store::ObjectMeta,
        mut warnings: Vec<String>,
        options: &RunOptions,
        observer: &dyn RunObserver,
    ) -> Result<Done, EngineError> {
        self.set_newest(stage)?;
        let _ = std::fs::remove_dir_all(self.store.scratch_dir(&stage.key)?);
        warnings.extend(meta.warnings);
        let mut notes = meta.notes;
        self.push_computed(
            &stage.name,
            &stage.key,
            options,
            observer,
            &mut warnings,
            &mut notes,
        );
        Ok(Done {
            action: Action::Computed,
            warnings,
            notes,
            device: meta.device,
        })
    }

    /// Uploads an object this run computed, unless `--no-push` or no remote. The output is
    /// committed here whatever happens to the upload: a failed push is a warning, not fatal
    /// (`onenet push` retries it).
    pub(super) fn push_computed(
        &self,
        stage: &str,
        key: &CacheKey,
        options: &RunOptions,
        observer: &dyn RunObserver,
        warnings: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) {
        let (true, Some(remote)) = (options.push, &self.remote) else {
            return;
        };
        let on_bytes = |done: u64, total: u64| {
            observer.transfer(stage, "pushing", done, total);
        };
        match remote.push(key, &self.store, &on_bytes) {
            Ok(crate::remote::Pushed::AlreadyThere { .. }) => notes.push(
                "already in the remote (another machine pushed it first): its copy is kept".into(),
            ),
            Ok(crate::remote::Pushed::Done { .. }) => {}
            Err(e) => warnings.push(format!("not pushed: {e}")),
        }
    }

    /// Points the pipeline's view at a stage's output, unless this run is a variant (`--set`):
    /// a variant's outputs stay in the store, reachable by key, but never become what the
    /// pipeline file's `latest` shows or what the task commands read.
    pub(super) fn set_newest(&self, stage: &PlannedStage) -> Result<(), StoreError> {
        if self.pipeline.overrides.is_empty() {
            self.store.set_latest(&stage.name, &stage.key)?;
        }
        Ok(())
    }

    /// Records, for `gc`, what the pipeline file resolved to in a run without `--set`.
    pub(super) fn record_pipeline(&self, planned: &[PlannedStage]) {
        if !self.pipeline.overrides.is_empty() {
            return;
        }
        let view = self.store.view().to_string_lossy().into_owned();
        let mut keys = self
            .store
            .pipeline_records()
            .into_iter()
            .find(|r| r.view == view && r.path == self.pipeline.path)
            .map(|r| r.keys)
            .unwrap_or_default();
        keys.retain(|name, _| self.pipeline.stage(name).is_some());
        for p in planned {
            keys.insert(p.name.clone(), p.key.hex());
        }
        // Only bookkeeping for gc: a failure to write it must not fail the run; gc then also
        // keeps what the view's links point at.
        let _ = self.store.record_pipeline(&crate::store::PipelineRecord {
            path: self.pipeline.path.clone(),
            view,
            keys,
            updated_unix: now_unix() as u64,
        });
    }
}

/// One stage being computed in a run: what every way of computing it needs.
pub(super) struct StageRun<'a> {
    pub(super) stage: &'a PlannedStage,
    pub(super) options: &'a RunOptions,
    pub(super) observer: &'a dyn RunObserver,
    pub(super) history: &'a RunHistory<'a>,
}
