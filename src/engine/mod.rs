//! The engine: computes each stage's cache key, says which stages are fresh or stale and why,
//! and runs what is stale — independent stages in parallel — committing outputs to the store.
//!
//! One concept a file: `keys` (planning keys, status), `schedule` (the run: which stage starts
//! when, the run log), `compute` (one stage here: pull or run and commit, through
//! `crate::execute`, the one place every commit guard lives), `sharded` (a stage in shards),
//! `cluster` (jobs on Slurm), `lineage` (what a stage learns of its upstream), `lookup` (outputs
//! for the reading commands), `gc` (what the store keeps) and `transfer` (`pull`). This file
//! holds the types they share and the `Engine` itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use onenet_contract::Progress;
use serde::Serialize;

use crate::config::Pipeline;
use crate::execute::PlannedSource;
use crate::hashing::StatCache;
use crate::key::{CacheKey, KeyInputs, Reason, ReasonJson, KEY_FORMAT};
use crate::store::{ArtifactStore, StoreError};

mod cluster;
mod compute;
mod gc;
mod keys;
mod lineage;
mod lookup;
mod schedule;
mod sharded;
mod transfer;

pub use lookup::Choice;
pub use transfer::PullOutcome;
// Shared by the sibling modules (through their `use super::*`).
use cluster::shell_quote;
use compute::StageRun;
use keys::{inherited_files_root, DEVICE_UNKNOWN};
use schedule::{is_read_only, Done, RunHistory};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage `{stage}`: {message}")]
    Stage { stage: String, message: String },
    /// A command that may not start the libtorch worker (one that only reads outputs) needed
    /// the device of a GPU-capable stage, and this machine has not recorded it yet.
    #[error("stage `{stage}`: {DEVICE_UNKNOWN}")]
    DeviceUnknown { stage: String },
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
    /// The device a `DeviceUse::Best` stage runs on, asked of the worker at most once per run;
    /// the worker's error, or None when it may not be asked and no answer is recorded.
    best_device: std::sync::OnceLock<Result<String, Option<String>>>,
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

    pub(super) fn device_cache_file(&self) -> PathBuf {
        self.store.file(crate::store::StoreFile::DeviceCache)
    }
}

/// The object directory `latest/<stage>` resolves to, for commands that read outputs.
pub fn latest_dir(store: &ArtifactStore, stage: &str) -> Option<PathBuf> {
    let key = store.latest_key(stage)?;
    store.has(&key).then(|| store.object_dir(&key))
}

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
    use std::collections::HashSet;

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
