//! The scheduler: runs the planned stages, independent ones in parallel, each reused, pulled or
//! computed, and records every outcome in the run log.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::Instant;

use super::*;
use crate::store::{now_unix, RunRecord, StoreError};

impl Engine {
    /// Runs the planned stages: cached ones are reused, the rest computed, independent stages in
    /// parallel. A failed stage skips its dependents; the others still run.
    pub fn run(
        &self,
        planned: &[PlannedStage],
        options: &RunOptions,
        observer: &dyn RunObserver,
    ) -> Vec<StageOutcome> {
        let run_id = format!("{}-{}", (now_unix() * 1000.0) as u64, std::process::id());
        #[derive(Clone, Copy, PartialEq)]
        enum Job {
            Waiting,
            Running,
            Ok,
            Bad,
        }
        let mut jobs = vec![Job::Waiting; planned.len()];
        let position: HashMap<&str, usize> = planned
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut outcomes: Vec<Option<StageOutcome>> = vec![None; planned.len()];
        let mut computed_in_run: HashSet<String> = HashSet::new();
        let (tx, rx) = mpsc::channel::<(usize, StageOutcome)>();

        std::thread::scope(|scope| loop {
            for i in 0..planned.len() {
                if jobs[i] != Job::Waiting {
                    continue;
                }
                let inputs = &self.pipeline.stages[planned[i].index].inputs;
                let input_jobs: Vec<Job> = inputs
                    .iter()
                    .filter_map(|n| position.get(n.as_str()).map(|&j| jobs[j]))
                    .collect();
                if input_jobs.contains(&Job::Bad) {
                    jobs[i] = Job::Bad;
                    let failed: Vec<&str> = inputs
                        .iter()
                        .filter(|n| {
                            position
                                .get(n.as_str())
                                .is_some_and(|&j| jobs[j] == Job::Bad)
                        })
                        .map(String::as_str)
                        .collect();
                    let outcome = StageOutcome {
                        name: planned[i].name.clone(),
                        action: Action::Skipped,
                        key: planned[i].key.hex(),
                        seconds: 0.0,
                        warnings: Vec::new(),
                        notes: Vec::new(),
                        device: None,
                        error: Some(format!("not run: input {} failed", failed.join(", "))),
                    };
                    observer.stage_finished(&outcome);
                    outcomes[i] = Some(outcome);
                } else if input_jobs.iter().all(|j| *j == Job::Ok) {
                    jobs[i] = Job::Running;
                    let tx = tx.clone();
                    let stage = &planned[i];
                    let run_id = run_id.as_str();
                    let computed = computed_in_run.clone();
                    scope.spawn(move || {
                        let history = RunHistory {
                            run_id,
                            planned,
                            computed_in_run: &computed,
                        };
                        let outcome = self.run_one(stage, options, observer, run_id, &history);
                        let _ = tx.send((i, outcome));
                    });
                }
            }
            if !jobs.contains(&Job::Running) {
                break;
            }
            let Ok((i, outcome)) = rx.recv() else { break };
            if outcome.action == Action::Computed {
                computed_in_run.insert(outcome.name.clone());
            }
            jobs[i] = if outcome.action == Action::Failed {
                Job::Bad
            } else {
                Job::Ok
            };
            observer.stage_finished(&outcome);
            outcomes[i] = Some(outcome);
        });
        let done: Vec<PlannedStage> = planned
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| {
                o.as_ref().is_some_and(|o| {
                    matches!(o.action, Action::Computed | Action::Cached | Action::Pulled)
                })
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.record_pipeline(&done);
        outcomes.into_iter().flatten().collect()
    }

    pub(super) fn run_one(
        &self,
        stage: &PlannedStage,
        options: &RunOptions,
        observer: &dyn RunObserver,
        run_id: &str,
        history: &RunHistory,
    ) -> StageOutcome {
        let start = Instant::now();
        let result = self.compute_or_reuse(stage, options, observer, history);
        let seconds = start.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(done) => StageOutcome {
                name: stage.name.clone(),
                action: done.action,
                key: stage.key.hex(),
                seconds,
                warnings: done.warnings,
                notes: done.notes,
                device: done.device,
                error: None,
            },
            Err(e) => StageOutcome {
                name: stage.name.clone(),
                action: Action::Failed,
                key: stage.key.hex(),
                seconds,
                warnings: Vec::new(),
                notes: Vec::new(),
                device: None,
                error: Some(e.to_string()),
            },
        };
        let record = RunRecord {
            run_id: run_id.to_string(),
            time_unix: now_unix(),
            stage: stage.name.clone(),
            kind: stage.key_inputs.kind.clone(),
            key: stage.key.hex(),
            action: match outcome.action {
                Action::Computed => "computed",
                Action::Cached => "cached",
                Action::Pulled => "pulled",
                Action::Failed | Action::Skipped => "failed",
            }
            .to_string(),
            seconds,
            inputs: stage.key_inputs.upstream.clone(),
            warnings: outcome.warnings.len(),
            error: outcome.error.clone(),
        };
        match self.store.append_record(&record) {
            Ok(None) => {}
            Ok(Some(repaired)) => observer.store_warning(&repaired),
            Err(e) if is_read_only(&e) => self.warn_read_only(&e, observer),
            Err(e) => observer.store_warning(&format!("could not record the run: {e}")),
        }
        outcome
    }

    /// Says once per run that the store cannot be written: a run whose stages are all in the
    /// store still succeeds (a store shared read-only, another user's), but its view and run
    /// records stay as they were.
    pub(super) fn warn_read_only(&self, error: &dyn std::fmt::Display, observer: &dyn RunObserver) {
        if !self
            .read_only_warned
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            observer.store_warning(&format!(
                "the store {} cannot be written ({error}): outputs already in it are used, but \
                 its view ({}) and run records are not updated",
                self.store.root().display(),
                self.store.view().display()
            ));
        }
    }
}

/// Whether a store error means the store cannot be written here (permissions, a read-only
/// mount), rather than that something is wrong with it.
pub(super) fn is_read_only(error: &StoreError) -> bool {
    let io = match error {
        StoreError::Io { source, .. } | StoreError::RunLog { source, .. } => source,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// What a stage started by `Engine::run` may learn about the run so far.
pub(super) struct RunHistory<'a> {
    /// The run's id, for the records of the shards it computes.
    pub(super) run_id: &'a str,
    /// Every stage of the run, in execution order.
    pub(super) planned: &'a [PlannedStage],
    /// The stages the run has computed (not reused) so far.
    pub(super) computed_in_run: &'a HashSet<String>,
}

/// A stage computed or reused.
pub(super) struct Done {
    pub(super) action: Action,
    pub(super) warnings: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) device: Option<String>,
}
