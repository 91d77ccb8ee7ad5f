//! The engine: computes each stage's cache key, says which stages are fresh or stale and why,
//! and runs what is stale — independent stages in parallel — committing outputs to the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use onenet_contract::{Effect, Progress, StageContext, StageInput, StageJob, UpstreamRecord};
use serde::Serialize;

use crate::config::Pipeline;
use crate::execute::{ExecuteError, Executed, Execution, PlannedSource};
use crate::hashing::StatCache;
use crate::key::{CacheKey, KeyInputs, KeyParam, Reason, ReasonJson, KEY_FORMAT};
use crate::store::{now_unix, ArtifactStore, RunRecord, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage `{stage}`: {message}")]
    Stage { stage: String, message: String },
}

/// A stage with its key worked out.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Index into `Pipeline::stages`.
    pub index: usize,
    pub name: String,
    pub key_inputs: KeyInputs,
    pub key: CacheKey,
    /// Each source file the key was computed from, as it was then: checked again before the
    /// stage's output is committed.
    pub sources: Vec<PlannedSource>,
    /// The folder on this machine that the file names in its upstream tables are relative to
    /// (`StageJob::files_root`); never part of the key, which covers the files by content.
    pub files_root: Option<PathBuf>,
}

/// Whether a stage's output for its current key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    /// The output for the current key is in the store.
    Fresh,
    /// An earlier output exists, for a different key.
    Stale,
    /// The stage was never computed (or its output was removed).
    Missing,
    /// The output for the current key is not here but in the remote cache: `run` pulls it.
    Remote,
    /// The key cannot be computed on this machine (a source file or folder is missing), so
    /// whether the last output is fresh cannot be told.
    Unknown,
}

/// A stage's state and the reasons for it.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub name: String,
    pub kind: String,
    pub state: StageState,
    pub key: String,
    #[serde(serialize_with = "reasons_json")]
    pub reasons: Vec<Reason>,
}

impl StageStatus {
    /// The reasons as text, `; `-separated.
    pub fn reasons_text(&self) -> String {
        let text: Vec<String> = self.reasons.iter().map(Reason::to_string).collect();
        text.join("; ")
    }
}

fn reasons_json<S: serde::Serializer>(reasons: &[Reason], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(reasons.iter().map(ReasonJson::from))
}

/// What happened to a stage in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Computed,
    Cached,
    /// Brought from the remote cache, verified, instead of computed.
    Pulled,
    Failed,
    /// Not run because an input failed.
    Skipped,
}

/// One stage's outcome in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    pub name: String,
    pub action: Action,
    pub key: String,
    pub seconds: f64,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    /// The device a libtorch stage ran on, as the worker reported it (computed stages only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub error: Option<String>,
}

/// How `run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stage names to recompute from scratch even if their output exists: no reuse of their
    /// previous output either (e.g. per-image features).
    pub force: Vec<String>,
    /// How long to wait for another process computing the same key.
    pub lock_timeout: Duration,
    /// Upload what is computed to the remote cache (when there is one).
    pub push: bool,
}

/// Draws progress and reports outcomes as they happen (the CLI implements it).
pub trait RunObserver: Sync {
    /// A progress sink for a stage about to compute.
    fn stage_started(&self, name: &str) -> Box<dyn Progress + '_>;
    /// Another process holds the key's lock.
    fn waiting_for_lock(&self, name: &str, lock: &Path);
    fn stage_finished(&self, outcome: &StageOutcome);
    /// A problem with the store itself that the user should see whatever the verbosity (a torn
    /// run record repaired, a record that could not be written).
    fn store_warning(&self, _text: &str) {}
    /// Bytes moved to or from the remote cache for a stage: `done` of `total`.
    fn transfer(&self, _name: &str, _what: &str, _done: u64, _total: u64) {}
}

/// A pipeline bound to its store.
pub struct Engine {
    pub pipeline: Pipeline,
    pub store: ArtifactStore,
    stat_cache: StatCache,
    /// The device a `DeviceUse::Best` stage runs on, asked of the worker at most once per run.
    best_device: std::sync::OnceLock<Result<String, String>>,
    /// Whether planning may start the worker to learn the device (commands that only read
    /// tables must not: they use the cached answer, or the view's links when there is none).
    worker_allowed: bool,
    /// The remote cache, if one is configured and not turned off (`--offline`).
    remote: Option<crate::remote::Remote>,
    /// Whether this run already warned that the store cannot be written (said once, not once
    /// per stage).
    read_only_warned: std::sync::atomic::AtomicBool,
    /// The stages whose outputs a reading command took from the last run because their
    /// freshness could not be checked, each with why (see `output_of_kind`); said by
    /// `take_warnings`.
    unchecked: std::sync::Mutex<Vec<(String, String)>>,
}

impl Engine {
    pub fn open(pipeline: Pipeline) -> Result<Engine, EngineError> {
        let store = ArtifactStore::open(&pipeline.store_dir)?;
        let view = view_of(&pipeline, &store);
        let store = store.with_view(&view);
        let stat_cache = StatCache::open(&store.stat_cache_file());
        Ok(Engine {
            pipeline,
            store,
            stat_cache,
            best_device: std::sync::OnceLock::new(),
            worker_allowed: true,
            remote: None,
            read_only_warned: Default::default(),
            unchecked: Default::default(),
        })
    }

    /// The same engine with a remote cache: `run` pulls what the remote has instead of
    /// computing it, pushes what it computes, and `status` says which outputs are only there.
    pub fn with_remote(mut self, remote: Option<crate::remote::Remote>) -> Engine {
        self.remote = remote;
        self
    }

    /// The remote cache, if any.
    pub fn remote(&self) -> Option<&crate::remote::Remote> {
        self.remote.as_ref()
    }

    /// The same engine, never starting the libtorch worker: keys of GPU-capable stages use the
    /// device this store's cache remembers, and are unknown without it.
    pub fn without_worker(mut self) -> Engine {
        self.worker_allowed = false;
        self
    }

    fn device_cache_file(&self) -> PathBuf {
        self.store.file(crate::store::StoreFile::DeviceCache)
    }

    /// The key's environment for a stage whose spec says `device_use`.
    fn environment(
        &self,
        device_use: onenet_contract::DeviceUse,
    ) -> Result<BTreeMap<String, String>, String> {
        crate::environment::for_stage(device_use, || {
            self.best_device
                .get_or_init(|| {
                    if self.worker_allowed {
                        crate::environment::best_device(&self.device_cache_file())
                            .map_err(|e| e.to_string())
                    } else {
                        crate::environment::cached_best_device(&self.device_cache_file())
                            .ok_or_else(|| DEVICE_UNKNOWN.to_string())
                    }
                })
                .clone()
                .map_err(|message| crate::environment::DeviceError {
                    worker: onenet_contract::worker::worker_path(),
                    message,
                })
        })
        .map_err(|e| e.message)
    }

    /// Keys for the stages at `indices` (in execution order, upstream included).
    pub fn plan(&self, indices: &[usize]) -> Result<Vec<PlannedStage>, EngineError> {
        // In execution order, so the first error is the cause of any later one.
        self.plan_each(indices).into_iter().collect()
    }

    /// As `plan`, but each stage planned or the error that stopped it, so that one stage whose
    /// key cannot be computed (a dataset folder not mounted, a weights file gone) leaves the
    /// others planned; a stage downstream of it cannot be planned either.
    pub fn plan_each(&self, indices: &[usize]) -> Vec<Result<PlannedStage, EngineError>> {
        let mut keys: HashMap<&str, CacheKey> = HashMap::new();
        let mut roots: HashMap<&str, Option<PathBuf>> = HashMap::new();
        let mut planned = Vec::with_capacity(indices.len());
        for &index in indices {
            let decl = &self.pipeline.stages[index];
            let stage_err = |message: String| EngineError::Stage {
                stage: decl.name.clone(),
                message,
            };
            let mut plan_one = || -> Result<PlannedStage, EngineError> {
                let mut upstream = Vec::new();
                let mut inputs = Vec::new();
                for input in &decl.inputs {
                    let key = keys.get(input.as_str()).ok_or_else(|| {
                        stage_err(format!("input `{input}` could not be planned"))
                    })?;
                    upstream.push((input.clone(), key.hex()));
                    inputs.push(self.stage_input(input, key));
                }
                let (params, recorded) = split_params(decl);
                let files_root = match decl.kind.files_root {
                    Some(root) => Some(
                        root(&decl.params, &inputs, &self.pipeline.base_dir)
                            .map_err(|e| stage_err(e.to_string()))?,
                    ),
                    None => inherited_files_root(
                        decl.inputs
                            .iter()
                            .filter_map(|input| roots.get(input.as_str()).cloned().flatten()),
                    ),
                };
                roots.insert(decl.name.as_str(), files_root.clone());
                let sources = (decl.kind.sources)(&decl.params, &inputs, &self.pipeline.base_dir)
                    .map_err(|e| stage_err(e.to_string()))?;
                for (name, value) in &params {
                    if *value == KeyParam::Path && !sources.iter().any(|s| s.param == Some(name)) {
                        return Err(stage_err(format!(
                        "param `{name}` names a path, but kind `{}` lists no file under it, so \
                         its content would not enter the key (a bug in the kind)",
                        decl.kind.name
                    )));
                    }
                }
                let source_paths: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
                let (hashes, _) = self
                    .stat_cache
                    .hash_files(&source_paths)
                    .map_err(|e| stage_err(format!("reading its source files: {e}")))?;
                let mut environment = self.environment(decl.kind.device).map_err(stage_err)?;
                // A cluster job runs on whatever node the scheduler picks: its device is the one
                // its resources ask for, not this machine's.
                if self.pipeline.executor.kind == crate::config::ExecutorKind::Slurm
                    && decl.kind.device == onenet_contract::DeviceUse::Best
                    && !decl.resources.local
                {
                    let gpus = decl.resources.over(&self.pipeline.executor.slurm).gpus;
                    let device = if gpus.unwrap_or(0) > 0 { "cuda" } else { "cpu" };
                    environment.insert("device".into(), device.into());
                }
                let key_inputs = KeyInputs {
                    format: KEY_FORMAT,
                    kind: decl.kind.name.to_string(),
                    version: decl.kind.version,
                    params,
                    upstream,
                    sources: sources
                        .iter()
                        .map(onenet_contract::Source::label)
                        .zip(hashes.iter().map(|h| h.hash.clone()))
                        .collect(),
                    environment,
                    recorded,
                };
                let key = key_inputs.key();
                keys.insert(decl.name.as_str(), key);
                Ok(PlannedStage {
                    index,
                    name: decl.name.clone(),
                    key_inputs,
                    key,
                    sources: source_paths
                        .into_iter()
                        .zip(&hashes)
                        .map(|(path, h)| PlannedSource {
                            path,
                            stamp: h.stamp,
                            hash: h.hash.clone(),
                        })
                        .collect(),
                    files_root,
                })
            };
            planned.push(plan_one());
        }
        // Only a cache: failing to save it costs a re-hash next time, nothing more.
        let _ = self.stat_cache.save();
        planned
    }

    fn stage_input(&self, name: &str, key: &CacheKey) -> StageInput {
        let decl = self.pipeline.stage(name);
        StageInput {
            name: name.to_string(),
            kind: decl.map(|d| d.kind.name.to_string()).unwrap_or_default(),
            dir: self.store.object_dir(key),
        }
    }

    /// Fresh, stale or missing, with the reasons, for each planned stage (the local store only).
    pub fn status(&self, planned: &[PlannedStage]) -> Vec<StageStatus> {
        planned
            .iter()
            .map(|p| {
                let (state, reasons) = self.state_of(p);
                StageStatus {
                    name: p.name.clone(),
                    kind: p.key_inputs.kind.clone(),
                    state,
                    key: p.key.hex(),
                    reasons,
                }
            })
            .collect()
    }

    /// As `status` for every stage of `indices`, with a stage whose key cannot be computed here
    /// (and each one downstream of it) `Unknown`, the error as its reason, instead of failing
    /// whole; and the planned stages.
    pub fn status_each(&self, indices: &[usize]) -> (Vec<StageStatus>, Vec<PlannedStage>) {
        let mut statuses = Vec::new();
        let mut planned = Vec::new();
        for (&index, result) in indices.iter().zip(self.plan_each(indices)) {
            match result {
                Ok(p) => {
                    statuses.extend(self.status(std::slice::from_ref(&p)));
                    planned.push(p);
                }
                Err(e) => {
                    let decl = &self.pipeline.stages[index];
                    let why = match e {
                        EngineError::Stage { message, .. } => message,
                        other => other.to_string(),
                    };
                    statuses.push(StageStatus {
                        name: decl.name.clone(),
                        kind: decl.kind.name.to_string(),
                        state: StageState::Unknown,
                        key: String::new(),
                        reasons: vec![Reason::Unchecked { why }],
                    });
                }
            }
        }
        (statuses, planned)
    }

    /// As `status`, and a stage not fresh here whose output the remote cache has is `Remote`
    /// (one request per such stage; none when everything is local). A remote that cannot be
    /// asked leaves the local states, with the error.
    pub fn status_with_remote(
        &self,
        planned: &[PlannedStage],
    ) -> (Vec<StageStatus>, Option<crate::remote::RemoteError>) {
        let mut statuses = self.status(planned);
        let Some(remote) = &self.remote else {
            return (statuses, None);
        };
        for (status, p) in statuses.iter_mut().zip(planned) {
            if status.state == StageState::Fresh {
                continue;
            }
            match remote.has(&p.key) {
                Ok(true) => status.state = StageState::Remote,
                Ok(false) => {}
                Err(e) => return (statuses, Some(e)),
            }
        }
        (statuses, None)
    }

    fn state_of(&self, p: &PlannedStage) -> (StageState, Vec<Reason>) {
        if self.store.has(&p.key) {
            let reasons = match self.store.latest_key(&p.name) {
                Some(latest) if latest != p.key => vec![Reason::EarlierOutput],
                _ => Vec::new(),
            };
            return (StageState::Fresh, reasons);
        }
        let Some(latest) = self.store.latest_key(&p.name) else {
            return (StageState::Missing, vec![Reason::NeverComputed]);
        };
        match self.store.meta(&latest) {
            Some(old) => {
                let mut reasons = p.key_inputs.changes_from(&old.key_inputs);
                if reasons.is_empty() {
                    reasons.push(Reason::OutputMissing);
                }
                (StageState::Stale, reasons)
            }
            None => (StageState::Missing, vec![Reason::OutputRemoved]),
        }
    }

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

    fn run_one(
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
    fn warn_read_only(&self, error: &dyn std::fmt::Display, observer: &dyn RunObserver) {
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

    fn compute_or_reuse(
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
        if !forced && self.store.has(&stage.key) {
            return reuse(self.store.meta(&stage.key));
        }
        let what = format!("stage {} (key {})", stage.name, stage.key.short());
        let _lock = self
            .store
            .lock(&stage.key, &what, options.lock_timeout, &|lock| {
                observer.waiting_for_lock(&stage.name, lock)
            })?;
        // Another process may have computed it while we waited.
        if !forced && self.store.has(&stage.key) {
            return reuse(self.store.meta(&stage.key));
        }
        let mut remote_warnings = Vec::new();
        if let (false, Some(remote)) = (forced, &self.remote) {
            let on_bytes = |done: u64, total: u64| {
                observer.transfer(&stage.name, "pulling", done, total);
            };
            let stage_err = |e: crate::remote::RemoteError| EngineError::Stage {
                stage: stage.name.clone(),
                message: e.to_string(),
            };
            match remote
                .pull(&stage.key, &self.store, &on_bytes)
                .map_err(stage_err)?
            {
                crate::remote::Pulled::Done { meta, .. } => {
                    self.set_newest(stage)?;
                    return Ok(Done {
                        action: Action::Pulled,
                        warnings: meta.warnings,
                        notes: meta.notes,
                        device: None,
                    });
                }
                crate::remote::Pulled::Missing => {}
                crate::remote::Pulled::Unusable(reason) => remote_warnings.push(format!(
                    "the remote's copy ({}) cannot be used, so it was computed: {reason}",
                    remote.url()
                )),
            }
        }
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
                    stage,
                    spec,
                    per_shard as usize,
                    inputs,
                    options,
                    observer,
                    history,
                    remote_warnings,
                );
            }
        }
        if self.pipeline.executor.kind == crate::config::ExecutorKind::Slurm
            && decl.kind.device.uses_libtorch()
            && !decl.resources.local
        {
            return self.compute_on_slurm(
                stage,
                inputs,
                forced,
                options,
                observer,
                history,
                remote_warnings,
            );
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

    /// The job of `stage` reading `inputs`, with no earlier output, lineage or shard, and no
    /// folders yet (`Execution::run` sets them).
    fn job_of(&self, stage: &PlannedStage, inputs: Vec<StageInput>) -> StageJob {
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
    fn execution<'a>(
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
    fn executed(
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
    fn finish_computed(
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
    fn push_computed(
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

    /// Computes a libtorch stage as one Slurm job (with its `[stages.NAME.resources]`): the
    /// job commits the output into the shared store; this run, which holds the key's lock
    /// throughout, then treats it as computed.
    #[allow(clippy::too_many_arguments)]
    fn compute_on_slurm(
        &self,
        stage: &PlannedStage,
        inputs: Vec<StageInput>,
        forced: bool,
        options: &RunOptions,
        observer: &dyn RunObserver,
        history: &RunHistory,
        warnings: Vec<String>,
    ) -> Result<Done, EngineError> {
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
    fn submit(
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

    /// Points the pipeline's view at a stage's output, unless this run is a variant (`--set`):
    /// a variant's outputs stay in the store, reachable by key, but never become what the
    /// pipeline file's `latest` shows or what the task commands read.
    fn set_newest(&self, stage: &PlannedStage) -> Result<(), StoreError> {
        if self.pipeline.overrides.is_empty() {
            self.store.set_latest(&stage.name, &stage.key)?;
        }
        Ok(())
    }

    /// Records, for `gc`, what the pipeline file resolved to in a run without `--set`.
    fn record_pipeline(&self, planned: &[PlannedStage]) {
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

    /// Removes what no pipeline file that ran against the store resolves to (each file as it
    /// reads now, and as it last ran), nor any view's newest outputs, nor anything upstream of
    /// those, nor any pin, nor (with `keep_sweeps`) any experiment's objects. `dry_run` only
    /// reports.
    pub fn gc(
        &self,
        dry_run: bool,
        keep_sweeps: bool,
    ) -> Result<crate::store::GcReport, EngineError> {
        let keep = self.gc_roots(keep_sweeps);
        let report = self.store.gc(&keep, dry_run)?;
        if !dry_run {
            // An experiment some of whose outputs were removed can no longer be read or
            // compared whole: forget it, so that `--exp` and `exp show` do not offer it.
            for exp in self.store.named(crate::store::Bucket::Experiments) {
                let whole = exp
                    .keys
                    .values()
                    .all(|hex| CacheKey::from_hex(hex).is_some_and(|key| self.store.has(&key)));
                if !whole {
                    self.store
                        .remove_named(crate::store::Bucket::Experiments, &exp.name)?;
                }
            }
        }
        Ok(report)
    }

    /// What `gc` keeps (here and in the remote cache), with why: what every pipeline file that
    /// ran against the store resolves to (as it reads now and as it last ran), every view's
    /// newest outputs, every pin, and with `keep_sweeps` every experiment's outputs. Objects
    /// upstream of these are kept too (the store and the remote follow each object's inputs).
    pub fn gc_roots(&self, keep_sweeps: bool) -> BTreeMap<CacheKey, Vec<String>> {
        let mut keep: std::collections::BTreeMap<CacheKey, Vec<String>> = Default::default();
        let mut add = |key: CacheKey, why: String| {
            let reasons = keep.entry(key).or_default();
            if !reasons.contains(&why) {
                reasons.push(why);
            }
        };
        let mut records = self.store.pipeline_records();
        if !records.iter().any(|r| r.path == self.pipeline.path) {
            records.push(crate::store::PipelineRecord {
                path: self.pipeline.path.clone(),
                view: self.store.view().to_string_lossy().into_owned(),
                keys: Default::default(),
                updated_unix: 0,
            });
        }
        for record in &records {
            let file = record.path.display();
            let gone = if record.path.is_file() {
                String::new()
            } else {
                format!(
                    "; the file is gone: delete {} to let gc collect these",
                    self.store
                        .bucket(crate::store::Bucket::Pipelines)
                        .join(format!("{}.json", record.view.replace('/', "__")))
                        .display()
                )
            };
            for (stage, hex) in &record.keys {
                if let Some(key) = CacheKey::from_hex(hex) {
                    add(key, format!("{file}: {stage} (its last run{gone})"));
                }
            }
            let resolved =
                if record.path == self.pipeline.path && self.pipeline.overrides.is_empty() {
                    self.resolve_all()
                } else {
                    crate::config::load(&record.path, self.pipeline.kinds)
                        .ok()
                        .and_then(|p| Engine::open(p).ok())
                        .and_then(|e| e.resolve_all())
                };
            for (stage, key) in resolved.unwrap_or_default() {
                add(key, format!("{file}: {stage} (as the file reads now)"));
            }
        }
        for (view, stage, key) in self.store.view_keys() {
            add(key, format!("{view}/{stage}"));
        }
        for pin in self.store.named(crate::store::Bucket::Pins) {
            for (stage, hex) in &pin.keys {
                if let Some(key) = CacheKey::from_hex(hex) {
                    add(key, format!("pin {}: {stage}", pin.name));
                }
            }
        }
        if keep_sweeps {
            for exp in self.store.named(crate::store::Bucket::Experiments) {
                let label = match &exp.sweep {
                    Some(sweep) => format!("sweep {sweep}, experiment {}", exp.name),
                    None => format!("experiment {}", exp.name),
                };
                for (stage, hex) in &exp.keys {
                    if let Some(key) = CacheKey::from_hex(hex) {
                        add(key, format!("{label}: {stage}"));
                    }
                }
            }
        }
        // A sharded stage's last shards: without them, adding ten images to the dataset would
        // compute every shard again.
        for (stage, key) in
            crate::shards::remembered_keys(&self.store.bucket(crate::store::Bucket::Shards))
        {
            add(key, format!("{stage}: a shard of its last run"));
        }
        keep
    }

    /// Brings the object `key` of stage `name` from the remote cache, unless it is here already,
    /// under the key's lock; with `newest`, it then becomes the stage's newest output (as a run
    /// would make it).
    pub fn pull_key(
        &self,
        name: &str,
        key: &CacheKey,
        newest: bool,
        lock_timeout: Duration,
        on_bytes: &dyn Fn(u64, u64),
    ) -> Result<PullOutcome, EngineError> {
        let stage_err = |message: String| EngineError::Stage {
            stage: name.to_string(),
            message,
        };
        let Some(remote) = &self.remote else {
            return Err(stage_err("no remote cache is configured".into()));
        };
        let set_newest = |this: &Engine| -> Result<(), StoreError> {
            if newest && this.pipeline.overrides.is_empty() {
                this.store.set_latest(name, key)?;
            }
            Ok(())
        };
        if self.store.has(key) {
            set_newest(self)?;
            return Ok(PullOutcome::Local);
        }
        let what = format!("stage {name} (key {})", key.short());
        let _lock = self.store.lock(key, &what, lock_timeout, &|_| {})?;
        if self.store.has(key) {
            set_newest(self)?;
            return Ok(PullOutcome::Local);
        }
        let pulled = remote
            .pull(key, &self.store, on_bytes)
            .map_err(|e| stage_err(e.to_string()))?;
        Ok(match pulled {
            crate::remote::Pulled::Done { bytes, .. } => {
                set_newest(self)?;
                PullOutcome::Pulled { bytes }
            }
            crate::remote::Pulled::Missing => PullOutcome::NotInRemote,
            crate::remote::Pulled::Unusable(reason) => PullOutcome::Unusable(reason),
        })
    }

    /// Every stage's key as the pipeline reads now, or None if it cannot be planned (a source
    /// file missing, say).
    fn resolve_all(&self) -> Option<Vec<(String, CacheKey)>> {
        let order = crate::plan::select(&self.pipeline, &[]).ok()?;
        let planned = self.plan(&order).ok()?;
        Some(planned.into_iter().map(|p| (p.name, p.key)).collect())
    }
}

impl Engine {
    /// Computes a sharded stage: each shard not in the store (nor the remote) is computed —
    /// here one after another, or as one Slurm array job — and committed as an object of its
    /// own; then the merge puts the shards' outputs together, computing nothing, and is
    /// committed under the stage's key. `--force` recomputes every shard too.
    #[allow(clippy::too_many_arguments)]
    fn compute_sharded(
        &self,
        stage: &PlannedStage,
        spec: &onenet_contract::ShardSpec,
        per_shard: usize,
        inputs: Vec<StageInput>,
        options: &RunOptions,
        observer: &dyn RunObserver,
        history: &RunHistory,
        mut warnings: Vec<String>,
    ) -> Result<Done, EngineError> {
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
            if let (false, Some(remote)) = (forced, &self.remote) {
                let on_bytes = |done: u64, total: u64| {
                    observer.transfer(&stage.name, "pulling a shard", done, total);
                };
                match remote
                    .pull(&shard.key, &self.store, &on_bytes)
                    .map_err(|e| stage_err(e.to_string()))?
                {
                    crate::remote::Pulled::Done { .. } => {
                        pulled += 1;
                        continue;
                    }
                    crate::remote::Pulled::Missing => {}
                    crate::remote::Pulled::Unusable(reason) => warnings.push(format!(
                        "a shard's copy in the remote cannot be used, so it was computed: {reason}"
                    )),
                }
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

/// `text` as one word for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// What `pull_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The object was here already.
    Local,
    /// Brought from the remote: `bytes` of files.
    Pulled { bytes: u64 },
    /// The remote has no such object.
    NotInRemote,
    /// The remote's copy cannot be used (a blob missing or damaged): why.
    Unusable(String),
}

/// A stage computed or reused.
struct Done {
    action: Action,
    warnings: Vec<String>,
    notes: Vec<String>,
    device: Option<String>,
}

/// The params of a stage's key, and those only recorded beside it: a param that only changes
/// speed is recorded, a path param enters the key as the `Path` marker (its content comes in
/// through the sources) with its spelling recorded.
fn split_params(
    decl: &crate::config::StageDecl,
) -> (BTreeMap<String, KeyParam>, BTreeMap<String, KeyParam>) {
    let mut keyed = BTreeMap::new();
    let mut recorded = BTreeMap::new();
    for (name, value) in decl.params.iter() {
        let spec = decl.kind.params.iter().find(|s| s.name == name);
        match spec {
            Some(spec) if spec.effect == Effect::SpeedOnly => {
                recorded.insert(name.clone(), KeyParam::from(value));
            }
            Some(spec) if spec.names_path(value) => {
                keyed.insert(name.clone(), KeyParam::Path);
                recorded.insert(name.clone(), KeyParam::from(value));
            }
            _ => {
                keyed.insert(name.clone(), KeyParam::from(value));
            }
        }
    }
    (keyed, recorded)
}

/// Tests make a stage slow to change its inputs while it runs: `ONENET_TEST_STAGE_DELAY` =
/// `stage:milliseconds` sleeps that long before the stage named starts computing (a shard task:
/// `<stage>#shard`).
pub(crate) fn test_delay(stage: &str) {
    let Ok(spec) = std::env::var("ONENET_TEST_STAGE_DELAY") else {
        return;
    };
    if let Some((name, ms)) = spec.split_once(':') {
        if name == stage {
            if let Ok(ms) = ms.parse::<u64>() {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
}

/// What a stage started by `Engine::run` may learn about the run so far.
struct RunHistory<'a> {
    /// The run's id, for the records of the shards it computes.
    run_id: &'a str,
    /// Every stage of the run, in execution order.
    planned: &'a [PlannedStage],
    /// The stages the run has computed (not reused) so far.
    computed_in_run: &'a HashSet<String>,
}

impl Engine {
    /// The records of every stage upstream of `stage`, in execution order. Only read when a stage
    /// is computed, so a run that reuses everything never parses the upstream metadata.
    fn lineage(&self, stage: &PlannedStage, history: &RunHistory) -> Vec<UpstreamRecord> {
        let mut wanted: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = stage
            .key_inputs
            .upstream
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        while let Some(name) = stack.pop() {
            if wanted.insert(name) {
                if let Some(p) = history.planned.iter().find(|p| p.name == name) {
                    stack.extend(p.key_inputs.upstream.iter().map(|(n, _)| n.as_str()));
                }
            }
        }
        history
            .planned
            .iter()
            .filter(|p| wanted.contains(p.name.as_str()))
            .map(|p| {
                let meta = self.store.meta(&p.key);
                UpstreamRecord {
                    name: p.name.clone(),
                    kind: p.key_inputs.kind.clone(),
                    key: p.key.hex(),
                    inputs: p
                        .key_inputs
                        .upstream
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect(),
                    // As the pipeline gave them: what the key holds, with the spelling of
                    // path params and the speed-only params it leaves out.
                    params: p
                        .key_inputs
                        .params
                        .iter()
                        .chain(&p.key_inputs.recorded)
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .map(|(name, value)| format!("{name} = {value}"))
                        .collect(),
                    seconds: meta.as_ref().map_or(0.0, |m| m.seconds),
                    created_unix: meta.as_ref().map_or(0, |m| m.created_unix),
                    computed_in_run: history.computed_in_run.contains(&p.name),
                }
            })
            .collect()
    }
}

/// The object directory `latest/<stage>` resolves to, for commands that read outputs.
pub fn latest_dir(store: &ArtifactStore, stage: &str) -> Option<PathBuf> {
    let key = store.latest_key(stage)?;
    store.has(&key).then(|| store.object_dir(&key))
}

impl Engine {
    /// The output of the pipeline's stage of kind `kind` (`stage` chooses among several; else
    /// the first in the file) that the pipeline file resolves to now — exactly what `status`
    /// calls fresh — with the stage's name; an error saying what to run when that output is not
    /// in the store.
    pub fn output_of_kind(
        &self,
        kind: &str,
        stage: Option<&str>,
        choice: &crate::experiments::Choice,
    ) -> Result<(String, PathBuf), String> {
        let of_kind: Vec<&crate::config::StageDecl> = self
            .pipeline
            .stages
            .iter()
            .filter(|s| s.kind.name == kind)
            .collect();
        let decl =
            match stage {
                Some(name) => {
                    *of_kind.iter().find(|s| s.name == name).ok_or_else(|| {
                        format!(
                    "{} has no stage `{name}` of kind `{kind}` (its stages of that kind: {})",
                    self.pipeline.path.display(),
                    of_kind.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )
                    })?
                }
                None => *of_kind.first().ok_or_else(|| {
                    format!(
                        "{} has no stage of kind `{kind}`",
                        self.pipeline.path.display()
                    )
                })?,
            };
        if let Some(dir) = self.chosen_object(&decl.name, kind, choice)? {
            return Ok((decl.name.clone(), dir));
        }
        let order = crate::plan::select(&self.pipeline, std::slice::from_ref(&decl.name))?;
        let planned = match self.plan(&order) {
            Ok(planned) => planned,
            // Not allowed to ask the worker and nothing cached: the pipeline's view holds what
            // its last run without `--set` made; a variant's key cannot be known.
            Err(e) if !self.worker_allowed && e.to_string().contains(DEVICE_UNKNOWN) => {
                if !self.pipeline.overrides.is_empty() {
                    return Err(format!(
                        "stage `{}` of this variant cannot be found before the device is known \
                         on this machine: run `{}` (it computes only what is missing)",
                        decl.name,
                        self.run_command(&decl.name)
                    ));
                }
                return latest_dir(&self.store, &decl.name)
                    .map(|dir| (decl.name.clone(), dir))
                    .ok_or_else(|| {
                        format!(
                            "stage `{}` has not been run yet: run `{}` first",
                            decl.name,
                            self.run_command(&decl.name)
                        )
                    });
            }
            // The dataset folder is not mounted, the weights file is gone: the key cannot be
            // computed, but the outputs the pipeline file last resolved to can still be read.
            Err(e) if self.pipeline.overrides.is_empty() => {
                return match latest_dir(&self.store, &decl.name) {
                    Some(dir) => {
                        self.unchecked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((decl.name.clone(), e.to_string()));
                        Ok((decl.name.clone(), dir))
                    }
                    None => Err(e.to_string()),
                };
            }
            Err(e) => return Err(e.to_string()),
        };
        let current = planned
            .iter()
            .find(|p| p.name == decl.name)
            .ok_or_else(|| format!("stage `{}` missing from its own plan", decl.name))?;
        if self.store.has(&current.key) {
            return Ok((decl.name.clone(), self.store.object_dir(&current.key)));
        }
        let (state, reasons) = self.state_of(current);
        let state = match state {
            StageState::Missing if reasons == [Reason::NeverComputed] => {
                "has not been run yet".to_string()
            }
            _ => {
                let reasons: Vec<String> = reasons.iter().map(Reason::to_string).collect();
                format!("is not up to date ({})", reasons.join("; "))
            }
        };
        Err(format!(
            "stage `{}` {state}: run `{}` first",
            decl.name,
            self.run_command(&decl.name)
        ))
    }

    /// The warnings `output_of_kind` gathered since the last call: one per cause, naming the
    /// stages it affected. A command that read outputs prints them.
    pub fn take_warnings(&self) -> Vec<String> {
        let taken = std::mem::take(&mut *self.unchecked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_cause: Vec<(String, Vec<String>)> = Vec::new();
        for (stage, why) in taken {
            match by_cause.iter_mut().find(|(cause, _)| *cause == why) {
                Some((_, stages)) if !stages.contains(&stage) => stages.push(stage),
                Some(_) => {}
                None => by_cause.push((why, vec![stage])),
            }
        }
        by_cause
            .into_iter()
            .map(|(why, stages)| {
                let stages: Vec<String> = stages.iter().map(|s| format!("`{s}`")).collect();
                format!(
                    "freshness could not be checked ({why}): using the outputs of {} from the \
                     last run",
                    stages.join(", ")
                )
            })
            .collect()
    }

    /// The command that computes `stage` as this engine sees it: with the same overrides, so
    /// that it computes what was asked for.
    fn run_command(&self, stage: &str) -> String {
        let sets: String = self
            .pipeline
            .overrides
            .iter()
            .map(|o| {
                if o.chars()
                    .all(|c| c.is_alphanumeric() || "._=-+/:,".contains(c))
                {
                    format!(" --set {o}")
                } else {
                    format!(" --set {}", shell_quote(o))
                }
            })
            .collect();
        format!("onenet run {stage}{sets}")
    }

    /// The stage of kind `kind` a task command reads, given the stage the user chose with
    /// `--stage` (of that kind, or one it feeds or is fed by), or else the first in the file;
    /// with a note naming the choice when the file has several of that kind.
    pub fn task_output(
        &self,
        kind: &str,
        chosen: Option<&str>,
        choice: &crate::experiments::Choice,
    ) -> Result<(String, PathBuf, Option<String>), String> {
        let of_kind: Vec<usize> = (0..self.pipeline.stages.len())
            .filter(|&i| self.pipeline.stages[i].kind.name == kind)
            .collect();
        let name = |i: usize| self.pipeline.stages[i].name.clone();
        let picked = match chosen {
            None => None,
            Some(chosen) => {
                let Some(c) = self.pipeline.stages.iter().position(|s| s.name == chosen) else {
                    return Err(format!(
                        "--stage {chosen}: no such stage in {}",
                        self.pipeline.path.display()
                    ));
                };
                if of_kind.contains(&c) {
                    Some(c)
                } else {
                    // A stage of this kind upstream of the chosen one, else one downstream.
                    let upstream = crate::plan::select(&self.pipeline, &[chosen.to_string()])?;
                    let downstream = crate::plan::downstream(&self.pipeline, c);
                    let found = of_kind
                        .iter()
                        .find(|i| upstream.contains(i))
                        .or_else(|| of_kind.iter().find(|i| downstream.contains(i)));
                    Some(*found.ok_or_else(|| {
                        format!("stage `{chosen}` is not connected to any stage of kind `{kind}`")
                    })?)
                }
            }
        };
        let note = match (picked, of_kind.len()) {
            (None, n) if n > 1 => Some(format!(
                "using stage `{}` of kind {kind}; the pipeline also has {} (choose with --stage)",
                name(of_kind[0]),
                of_kind[1..]
                    .iter()
                    .map(|&i| format!("`{}`", name(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        };
        let stage = picked.map(name);
        let (stage, dir) = self.output_of_kind(kind, stage.as_deref(), choice)?;
        Ok((stage, dir, note))
    }
}

impl Engine {
    /// The folder on this machine that the file names in the tables of object `dir` (an object
    /// of this store) are relative to: found by walking the object's recorded lineage up to the
    /// kind that names files (`StageKind::files_root`) and resolving it, against this pipeline
    /// file's folder, with the inputs recorded there and the params of this pipeline's stage of
    /// that name and kind (`--set` included) — or, for an object chosen by `--exp`/`--key`
    /// (`from_record`) or one this pipeline has no such stage for, the params recorded with it.
    /// The store may be shared, so the record holds the spelling of whoever computed the object
    /// first: this folder's own spelling wins. Needs neither the dataset nor the weights to be
    /// here. None when nothing upstream names files or the record is unreadable.
    pub fn files_root_of_object(&self, dir: &Path, from_record: bool) -> Option<PathBuf> {
        let key = CacheKey::from_hex(&dir.file_name()?.to_string_lossy())?;
        let mut stack = vec![key];
        let mut seen = HashSet::new();
        let mut roots = Vec::new();
        while let Some(key) = stack.pop() {
            if !seen.insert(key) {
                continue;
            }
            let meta = self.store.meta(&key)?;
            let inputs = &meta.key_inputs;
            let kind = self.pipeline.kinds.iter().find(|k| k.name == inputs.kind)?;
            let upstream: Vec<(String, CacheKey)> = inputs
                .upstream
                .iter()
                .filter_map(|(name, hex)| Some((name.clone(), CacheKey::from_hex(hex)?)))
                .collect();
            match kind.files_root {
                Some(files_root) => {
                    let declared = self
                        .pipeline
                        .stage(&meta.stage)
                        .filter(|decl| !from_record && decl.kind.name == kind.name);
                    let given = inputs
                        .params
                        .iter()
                        .chain(&inputs.recorded)
                        .filter_map(|(name, value)| {
                            let value = match value {
                                KeyParam::Int(v) => onenet_contract::ParamValue::Int(*v),
                                KeyParam::Float(v) => onenet_contract::ParamValue::Float(*v),
                                KeyParam::Bool(v) => onenet_contract::ParamValue::Bool(*v),
                                KeyParam::Str(v) => onenet_contract::ParamValue::Str(v.clone()),
                                KeyParam::Path => return None,
                            };
                            Some((name.clone(), value))
                        })
                        .collect();
                    let params = match declared {
                        Some(decl) => decl.params.clone(),
                        None => onenet_contract::Params::with_defaults(kind.params, given),
                    };
                    let stage_inputs: Vec<StageInput> = upstream
                        .iter()
                        .map(|(name, key)| StageInput {
                            name: name.clone(),
                            kind: self
                                .store
                                .meta(key)
                                .map(|m| m.key_inputs.kind)
                                .unwrap_or_default(),
                            dir: self.store.object_dir(key),
                        })
                        .collect();
                    roots.push(files_root(&params, &stage_inputs, &self.pipeline.base_dir).ok()?);
                }
                None => stack.extend(upstream.into_iter().map(|(_, key)| key)),
            }
        }
        inherited_files_root(roots.into_iter())
    }
}

/// Whether a store error means the store cannot be written here (permissions, a read-only
/// mount), rather than that something is wrong with it.
fn is_read_only(error: &StoreError) -> bool {
    let io = match error {
        StoreError::Io { source, .. } | StoreError::RunLog { source, .. } => source,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// The files root a stage inherits from its inputs' (`PlannedStage::files_root`): theirs when
/// they agree, None when none has one or when two name different folders (two datasets: a stage
/// that then opens a file says no single folder holds it).
fn inherited_files_root(roots: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    let mut found: Option<PathBuf> = None;
    for root in roots {
        match &found {
            Some(known) if *known != root => return None,
            _ => found = Some(root),
        }
    }
    found
}

/// Why a key could not be computed without the worker.
const DEVICE_UNKNOWN: &str = "the device of GPU-capable stages is not known yet on this machine";

/// The view (newest-output links) of a pipeline file in its store: `latest/` for the
/// `pipeline.toml` whose store is its own `artifacts/` folder, `views/<file stem>/` for any other
/// (a second pipeline file sharing the store, or a store shared by several folders), made
/// unique if another pipeline file already uses that name.
fn view_of(pipeline: &Pipeline, store: &ArtifactStore) -> String {
    let stem = pipeline
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    let own_store = pipeline.store_dir == pipeline.base_dir.join(crate::config::DEFAULT_STORE);
    let wanted = if stem == "pipeline" && own_store {
        "latest".to_string()
    } else {
        format!("views/{stem}")
    };
    let taken_by_other = store
        .pipeline_records()
        .into_iter()
        .any(|r| r.view == wanted && r.path != pipeline.path && r.path.is_file());
    if !taken_by_other || wanted == "latest" {
        return wanted;
    }
    let hash = blake3::hash(pipeline.path.to_string_lossy().as_bytes()).to_hex();
    format!("views/{stem}-{}", &hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use onenet_contract::NoProgress;

    struct Quiet;

    impl RunObserver for Quiet {
        fn stage_started(&self, _name: &str) -> Box<dyn Progress + '_> {
            Box::new(NoProgress)
        }
        fn waiting_for_lock(&self, _name: &str, _lock: &Path) {}
        fn stage_finished(&self, _outcome: &StageOutcome) {}
    }

    const PIPELINE: &str = r#"
[stages.demo]
kind = "demo_data"
params = { images = 12, image_size = 32 }

[stages.captions]
kind = "captions"
inputs = ["demo"]

[stages.images]
kind = "images"
inputs = ["demo"]
"#;

    #[test]
    fn lineage_lists_every_upstream_stage_with_its_record_and_what_the_run_computed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, PIPELINE).unwrap();
        let engine =
            Engine::open(crate::config::parse(&path, PIPELINE, onenet_stages::kinds()).unwrap())
                .unwrap();
        let order = crate::plan::select(&engine.pipeline, &[]).unwrap();
        let planned = engine.plan(&order).unwrap();
        let options = RunOptions {
            force: Vec::new(),
            lock_timeout: Duration::from_secs(5),
            push: false,
        };
        let outcomes = engine.run(&planned, &options, &Quiet);
        assert!(outcomes.iter().all(|o| o.action == Action::Computed));

        let stage = |name: &str| planned.iter().find(|p| p.name == name).unwrap();
        let computed: HashSet<String> = ["demo".to_string()].into();
        let history = RunHistory {
            run_id: "test",
            planned: &planned,
            computed_in_run: &computed,
        };
        let lineage = engine.lineage(stage("captions"), &history);
        assert_eq!(lineage.len(), 1, "captions reads demo only: {lineage:?}");
        let demo = &lineage[0];
        assert_eq!(
            (demo.name.as_str(), demo.kind.as_str()),
            ("demo", "demo_data")
        );
        assert_eq!(demo.key, stage("demo").key.hex());
        assert!(demo.inputs.is_empty());
        assert!(
            demo.params.contains(&"images = 12".to_string()),
            "{:?}",
            demo.params
        );
        assert!(demo.seconds > 0.0 && demo.created_unix > 0);
        assert!(demo.computed_in_run);
        assert!(engine.lineage(stage("demo"), &history).is_empty());

        // A second run reuses everything, so nothing in it was computed.
        let nothing = HashSet::new();
        let history = RunHistory {
            run_id: "test",
            planned: &planned,
            computed_in_run: &nothing,
        };
        assert!(!engine.lineage(stage("images"), &history)[0].computed_in_run);
    }
}
