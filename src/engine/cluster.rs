//! A stage (or its shards) as Slurm array jobs: the task files, the submission, and waiting
//! until each task has committed its output to the shared store.

use onenet_contract::{Progress, StageInput, StageJob};

use super::*;

impl Engine {
    /// Computes a libtorch stage as one Slurm job (with its `[stages.NAME.resources]`): the
    /// job commits the output into the shared store; this run, which holds the key's lock
    /// throughout, then treats it as computed.
    pub(super) fn compute_on_slurm(
        &self,
        run: &StageRun,
        inputs: Vec<StageInput>,
        forced: bool,
        warnings: Vec<String>,
    ) -> Result<Done, EngineError> {
        let StageRun {
            stage,
            options,
            observer,
            history,
        } = *run;
        if forced {
            let _ = std::fs::remove_dir_all(self.store.scratch_dir(&stage.key)?);
        }
        let task = crate::task::StageTask {
            store: self.store.root().to_path_buf(),
            stage: stage.name.clone(),
            key_inputs: stage.key_inputs.clone(),
            job: StageJob {
                previous: if forced {
                    None
                } else {
                    latest_dir(&self.store, &stage.name)
                },
                lineage: self.lineage(stage, history),
                ..self.job_of(stage, inputs)
            },
            sources: stage.sources.clone(),
            replace: forced,
            lock_held: true,
        };
        let progress = observer.stage_started(&stage.name);
        progress.start(1, "job on Slurm");
        self.submit(stage, &stage.name, vec![task], progress.as_ref(), observer)?;
        drop(progress);
        let mut meta = self
            .store
            .meta(&stage.key)
            .ok_or_else(|| EngineError::Stage {
                stage: stage.name.clone(),
                message: "its Slurm job ended, but its output is not in the store".into(),
            })?;
        meta.notes.push("computed as a Slurm job".into());
        self.finish_computed(stage, meta, warnings, options, observer)
    }

    /// Submits `tasks` as one Slurm array job with `stage`'s resources and waits until each has
    /// committed its output: a new manifest for its key (not the one there before, which a
    /// forced task replaces). Task files and logs go under `logs/<stage key>/`.
    pub(super) fn submit(
        &self,
        stage: &PlannedStage,
        what: &str,
        tasks: Vec<crate::task::StageTask>,
        progress: &dyn Progress,
        observer: &dyn RunObserver,
    ) -> Result<(), EngineError> {
        let stage_err = |message: String| EngineError::Stage {
            stage: stage.name.clone(),
            message,
        };
        let log_dir = self
            .store
            .bucket(crate::store::Bucket::Logs)
            .join(stage.key.hex());
        let tasks_dir = log_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir)
            .map_err(|e| stage_err(format!("{}: {e}", tasks_dir.display())))?;
        let exe = std::env::current_exe().map_err(|e| stage_err(e.to_string()))?;
        let mut commands = Vec::new();
        let mut targets = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            let file = tasks_dir.join(format!("{i}.json"));
            let text = serde_json::to_vec(task).unwrap_or_default();
            std::fs::write(&file, text)
                .map_err(|e| stage_err(format!("{}: {e}", file.display())))?;
            commands.push(format!(
                "{} stage-task {}",
                shell_quote(&exe.to_string_lossy()),
                shell_quote(&file.to_string_lossy())
            ));
            let key = task.key_inputs.key();
            targets.push((key, self.store.manifest(&key)));
        }
        let seen = std::sync::atomic::AtomicU64::new(0);
        let job = crate::slurm::ArrayJob {
            what: what.to_string(),
            commands,
            log_dir,
            done: &|i| {
                let (key, before) = &targets[i];
                let now = self.store.manifest(key);
                now.is_some() && now != *before
            },
            progress: &|done, _| {
                let before = seen.swap(done as u64, std::sync::atomic::Ordering::Relaxed);
                // Only news: a poll that changed nothing draws nothing.
                if done as u64 > before {
                    progress.inc(done as u64 - before);
                }
            },
            note: &|text| observer.store_warning(&format!("stage {}: {text}", stage.name)),
        };
        let decl = &self.pipeline.stages[stage.index];
        let settings = decl.resources.over(&self.pipeline.executor.slurm);
        crate::slurm::run_array(&job, &settings).map_err(|e| stage_err(e.to_string()))?;
        Ok(())
    }
}

/// `text` as one word for `sh`.
pub(super) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
