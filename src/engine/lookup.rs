//! Finding outputs for the commands that read them (the task commands, `metrics`): the stage of
//! a kind the user chose, the output the pipeline (or a chosen run) resolves to, the folder its
//! tables' file names are relative to, and what to say when freshness cannot be checked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use onenet_contract::StageInput;

use super::*;
use crate::key::{CacheKey, KeyParam, Reason};

impl Engine {
    /// The output of the pipeline's stage of kind `kind` (`stage` chooses among several; else
    /// the first in the file) that the pipeline file resolves to now — exactly what `status`
    /// calls fresh — with the stage's name; an error saying what to run when that output is not
    /// in the store.
    pub fn output_of_kind(
        &self,
        kind: &str,
        stage: Option<&str>,
        choice: &Choice,
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
            Err(EngineError::DeviceUnknown { .. }) if !self.worker_allowed => {
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
    pub(super) fn run_command(&self, stage: &str) -> String {
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
        choice: &Choice,
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

    /// The folder on this machine that the file names in the tables of object `dir` (an object
    /// of this store) are relative to. The object's recorded lineage leads to the stage that
    /// names files (`StageKind::files_root`, the `images` stage) and to its inputs' objects; the
    /// folder is then resolved, against this pipeline file's folder, with the params of this
    /// pipeline's stage of that name and kind — with `--set`'s overrides, and for `--exp` the
    /// experiment's own — so that it is this folder's dataset, whoever computed the object. The
    /// params recorded with the object (the spelling of whoever computed it first, in a shared
    /// store) serve only when this pipeline has no such stage. Needs neither the dataset nor the
    /// weights to be here. None when nothing upstream names files or a record is unreadable.
    pub fn files_root_of_object(&self, dir: &Path, choice: &Choice) -> Option<PathBuf> {
        let with_experiment;
        let pipeline = match choice {
            Choice::Exp(name) => {
                let overrides = self
                    .store
                    .named(crate::store::Bucket::Experiments)
                    .into_iter()
                    .find(|e| e.name == *name)
                    .map(|e| e.overrides)
                    .unwrap_or_default();
                let mut pipeline = self.pipeline.clone();
                match pipeline.apply_overrides(&overrides) {
                    Ok(()) => {
                        with_experiment = pipeline;
                        &with_experiment
                    }
                    Err(_) => &self.pipeline,
                }
            }
            _ => &self.pipeline,
        };
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
                    let declared = pipeline
                        .stage(&meta.stage)
                        .filter(|decl| decl.kind.name == kind.name);
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

    /// The object a task command reads for the stage `stage` of kind `kind`, when `choice` names
    /// one explicitly: the experiment's object of that stage, or the object `--key` names if it
    /// is of that kind, else the object of that kind upstream of it. None for `Choice::File`.
    pub fn chosen_object(
        &self,
        stage: &str,
        kind: &str,
        choice: &Choice,
    ) -> Result<Option<std::path::PathBuf>, String> {
        let key = match choice {
            Choice::File => return Ok(None),
            Choice::Exp(name) => {
                let set = self
                    .store
                    .named(crate::store::Bucket::Experiments)
                    .into_iter()
                    .find(|s| s.name == *name)
                    .ok_or_else(|| {
                        let known: Vec<String> = self
                            .store
                            .named(crate::store::Bucket::Experiments)
                            .into_iter()
                            .map(|s| s.name)
                            .collect();
                        format!(
                            "--exp {name}: no such experiment (known: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )
                    })?;
                let hex = set
                    .keys
                    .get(stage)
                    .ok_or_else(|| format!("experiment `{name}` did not run stage `{stage}`"))?;
                CacheKey::from_hex(hex)
                    .ok_or_else(|| format!("experiment `{name}`: bad key {hex}"))?
            }
            Choice::Key(prefix) => {
                let key = self
                    .store
                    .key_by_prefix(prefix)
                    .map_err(|e| e.to_string())?;
                let mut stack = vec![key];
                let mut seen = std::collections::BTreeSet::new();
                let mut found = None;
                while let Some(k) = stack.pop() {
                    if !seen.insert(k) {
                        continue;
                    }
                    let Some(meta) = self.store.meta(&k) else {
                        continue;
                    };
                    if meta.key_inputs.kind == kind {
                        found = Some(k);
                        break;
                    }
                    stack.extend(
                        meta.key_inputs
                            .upstream
                            .iter()
                            .filter_map(|(_, hex)| CacheKey::from_hex(hex)),
                    );
                }
                found.ok_or_else(|| {
                    format!(
                        "--key {prefix}: neither that object nor anything upstream of it is a \
                         `{kind}` output; give the key of a later stage"
                    )
                })?
            }
        };
        if !self.store.has(&key) {
            return Err(format!(
                "the {kind} object {} is no longer in the store (removed by gc?)",
                key.short()
            ));
        }
        Ok(Some(self.store.object_dir(&key)))
    }
}

/// How the task commands and `metrics` choose the objects they read: what the pipeline file
/// (with any `--set`) resolves to, a recorded variant run (`--exp NAME`), or one object by key
/// (`--key PREFIX`; the other objects the command needs are taken from its lineage).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
    File,
    Exp(String),
    Key(String),
}
