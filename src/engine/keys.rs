//! Cache keys and status: each stage's key planned from its declaration, inputs, params, source
//! files and environment, and whether its output for that key is here (fresh, stale, missing,
//! remote or unknown) and why.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use onenet_contract::{Effect, StageInput};

use super::*;
use crate::execute::PlannedSource;
use crate::key::{CacheKey, KeyParam, Reason};

impl Engine {
    /// The key's environment for a stage whose spec says `device_use`.
    pub(super) fn environment(
        &self,
        device_use: onenet_contract::DeviceUse,
    ) -> Result<BTreeMap<String, String>, Option<String>> {
        // None: the device is not known here and the worker may not be asked.
        let mut unknown = false;
        let environment = crate::environment::for_stage(device_use, || {
            self.best_device
                .get_or_init(|| {
                    if self.worker_allowed {
                        crate::environment::best_device(&self.device_cache_file())
                            .map_err(|e| Some(e.to_string()))
                    } else {
                        crate::environment::cached_best_device(&self.device_cache_file())
                            .ok_or(None)
                    }
                })
                .clone()
                .map_err(|message| {
                    unknown = message.is_none();
                    crate::environment::DeviceError {
                        worker: onenet_contract::worker::worker_path(),
                        message: message.unwrap_or_default(),
                    }
                })
        });
        environment.map_err(|e| (!unknown).then_some(e.message))
    }

    /// Keys for the stages at `indices` (in execution order, upstream included).
    pub fn plan(&self, indices: &[usize]) -> Result<Vec<PlannedStage>, EngineError> {
        // Stops at the first stage that cannot be planned: nothing after it is hashed.
        self.plan_stages(indices, false).into_iter().collect()
    }

    /// As `plan`, but each stage planned or the error that stopped it, so that one stage whose
    /// key cannot be computed (a dataset folder not mounted, a weights file gone) leaves the
    /// others planned; a stage downstream of it cannot be planned either.
    pub fn plan_each(&self, indices: &[usize]) -> Vec<Result<PlannedStage, EngineError>> {
        self.plan_stages(indices, true)
    }

    /// Plans the stages at `indices` in order; after a stage that cannot be planned, goes on
    /// with the others only if `keep_going`.
    fn plan_stages(
        &self,
        indices: &[usize],
        keep_going: bool,
    ) -> Vec<Result<PlannedStage, EngineError>> {
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
                let mut environment = self.environment(decl.kind.device).map_err(|e| match e {
                    None => EngineError::DeviceUnknown {
                        stage: decl.name.clone(),
                    },
                    Some(message) => stage_err(message),
                })?;
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
            let result = plan_one();
            let failed = result.is_err();
            planned.push(result);
            if failed && !keep_going {
                break;
            }
        }
        // Only a cache: failing to save it costs a re-hash next time, nothing more.
        let _ = self.stat_cache.save();
        planned
    }

    pub(super) fn stage_input(&self, name: &str, key: &CacheKey) -> StageInput {
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

    pub(super) fn state_of(&self, p: &PlannedStage) -> (StageState, Vec<Reason>) {
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
}

/// The params of a stage's key, and those only recorded beside it: a param that only changes
/// speed is recorded, a path param enters the key as the `Path` marker (its content comes in
/// through the sources) with its spelling recorded.
pub(super) fn split_params(
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

/// The files root a stage inherits from its inputs' (`PlannedStage::files_root`): theirs when
/// they agree, None when none has one or when two name different folders (two datasets: a stage
/// that then opens a file says no single folder holds it).
pub(super) fn inherited_files_root(roots: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
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
pub(super) const DEVICE_UNKNOWN: &str =
    "the device of GPU-capable stages is not known yet on this machine";
