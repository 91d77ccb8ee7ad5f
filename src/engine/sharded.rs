//! A data-parallel stage in shards: each shard a cached object of its own, computed here or on
//! the cluster, then merged into the stage's output without computing anything.

use std::path::PathBuf;
use std::time::Instant;

use onenet_contract::{StageContext, StageInput, StageJob};

use super::*;
use crate::store::now_unix;

impl Engine {
    /// Computes a sharded stage: each shard not in the store (nor the remote) is computed —
    /// here one after another, or as one Slurm array job — and committed as an object of its
    /// own; then the merge puts the shards' outputs together, computing nothing, and is
    /// committed under the stage's key. `--force` recomputes every shard too.
    pub(super) fn compute_sharded(
        &self,
        run: &StageRun,
        spec: &onenet_contract::ShardSpec,
        per_shard: usize,
        inputs: Vec<StageInput>,
        mut warnings: Vec<String>,
    ) -> Result<Done, EngineError> {
        let StageRun {
            stage,
            options,
            observer,
            history,
        } = *run;
        use crate::shards::Shard;
        let decl = &self.pipeline.stages[stage.index];
        let forced = options.force.contains(&stage.name);
        let stage_err = |message: String| EngineError::Stage {
            stage: stage.name.clone(),
            message,
        };
        let items = (spec.items)(&decl.params, &inputs).map_err(|e| stage_err(e.to_string()))?;
        let layout = self
            .store
            .bucket(crate::store::Bucket::Shards)
            .join(format!("{}.json", stage.name));
        let shards: Vec<Shard> = crate::shards::plan(&stage.key_inputs, &items, per_shard, &layout);
        let shard_name = crate::shards::shard_kind(&stage.name);
        let mut missing: Vec<&Shard> = Vec::new();
        let mut pulled = 0;
        for shard in &shards {
            if !forced && self.store.has(&shard.key) {
                continue;
            }
            if !forced
                && self
                    .try_pull(
                        stage,
                        &shard.key,
                        "pulling a shard",
                        observer,
                        &mut warnings,
                    )?
                    .is_some()
            {
                pulled += 1;
                continue;
            }
            missing.push(shard);
        }
        let task = |shard: &Shard| crate::task::StageTask {
            store: self.store.root().to_path_buf(),
            stage: shard_name.clone(),
            key_inputs: shard.key_inputs.clone(),
            job: StageJob {
                shard: Some(shard.hashes.clone()),
                ..self.job_of(stage, inputs.clone())
            },
            sources: stage.sources.clone(),
            replace: forced,
            lock_held: false,
        };
        let executor = self.pipeline.executor.kind;
        let start = Instant::now();
        match executor {
            crate::config::ExecutorKind::Local => {
                for (i, shard) in missing.iter().enumerate() {
                    let progress = observer.stage_started(&format!(
                        "{} shard {}/{}",
                        stage.name,
                        i + 1,
                        missing.len()
                    ));
                    crate::task::run_task(
                        &task(shard),
                        self.pipeline.kinds,
                        options.lock_timeout,
                        progress.as_ref(),
                    )
                    .map_err(|e| stage_err(e.to_string()))?;
                }
            }
            crate::config::ExecutorKind::Slurm if !missing.is_empty() => {
                let progress = observer.stage_started(&stage.name);
                progress.start(missing.len() as u64, "shards on Slurm");
                let tasks = missing.iter().map(|s| task(s)).collect();
                self.submit(
                    stage,
                    &format!("{} shards", stage.name),
                    tasks,
                    progress.as_ref(),
                    observer,
                )?;
            }
            crate::config::ExecutorKind::Slurm => {}
        }
        let shard_seconds = start.elapsed().as_secs_f64();
        for shard in &missing {
            let record = crate::store::RunRecord {
                run_id: history.run_id.to_string(),
                time_unix: now_unix(),
                stage: shard_name.clone(),
                kind: shard.key_inputs.kind.clone(),
                key: shard.key.hex(),
                action: "computed".into(),
                seconds: shard_seconds / missing.len() as f64,
                inputs: Vec::new(),
                warnings: 0,
                error: None,
            };
            if let Err(e) = self.store.append_record(&record) {
                observer.store_warning(&format!("could not record the run: {e}"));
            }
        }
        let mut shard_notes = Vec::new();
        for shard in &missing {
            self.push_computed(
                &shard_name,
                &shard.key,
                options,
                observer,
                &mut warnings,
                &mut shard_notes,
            );
        }
        crate::shards::remember(&shards, &layout);

        let job = StageJob {
            lineage: self.lineage(stage, history),
            ..self.job_of(stage, inputs)
        };
        let progress = observer.stage_started(&stage.name);
        let shard_dirs: Vec<PathBuf> = shards
            .iter()
            .map(|s| self.store.object_dir(&s.key))
            .collect();
        let merge = |ctx: &StageContext| {
            let mut report = (spec.merge)(ctx, &shard_dirs)?;
            report.notes.push(format!(
                "{} shard(s) of at most {per_shard} item(s): {} computed{}, {pulled} pulled, {} \
                 reused",
                shards.len(),
                missing.len(),
                match executor {
                    crate::config::ExecutorKind::Slurm if !missing.is_empty() => " on Slurm",
                    _ => "",
                },
                shards.len() - missing.len() - pulled
            ));
            Ok(report)
        };
        let executed =
            self.execution(stage, &stage.name, forced)
                .run(job, merge, progress.as_ref());
        drop(progress);
        match self.executed(stage, executed)? {
            Some(meta) => self.finish_computed(stage, meta, warnings, options, observer),
            // Another process merged it first: its copy is as good.
            None => Ok(Done {
                action: Action::Cached,
                warnings,
                notes: Vec::new(),
                device: None,
            }),
        }
    }
}
