//! Reading `pipeline.toml`: the declared stages, their kinds, inputs and params, checked against
//! the built-in stage kinds. Every error names the file, line and column of the offending key or
//! value, so a typo is never silently ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use onenet_contract::{ParamType, ParamValue, Params, RawValue, StageKind};
use serde::Deserialize;
use toml::Spanned;

/// The default store folder, relative to the pipeline file.
pub const DEFAULT_STORE: &str = "artifacts";

/// A problem with the pipeline file or a command-line override.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A problem at a known place in the file.
    #[error("{}:{line}:{column}: {message}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A problem in a `--set` override.
    #[error("--set {assignment}: {message}")]
    Override { assignment: String, message: String },
}

impl ConfigError {
    /// Whether the command line, not the file, is at fault (a malformed `--set`): command-line
    /// tools give such errors exit status 2, as for any other usage error.
    pub fn is_usage(&self) -> bool {
        matches!(self, ConfigError::Override { .. })
    }
}

/// One stage as declared, checked and with every param default filled in.
#[derive(Debug, Clone)]
pub struct StageDecl {
    pub name: String,
    pub kind: &'static StageKind,
    /// Upstream stage names, in declared order.
    pub inputs: Vec<String>,
    pub params: Params,
    /// What its cluster jobs ask for (`[stages.NAME.resources]`), over `[executor]`'s.
    pub resources: Resources,
}

/// Where stages compute: here, or as jobs of a Slurm cluster (`[executor]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Executor {
    pub kind: ExecutorKind,
    /// Submission settings (used when `kind` is Slurm).
    pub slurm: crate::slurm::SlurmSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    /// In this process (and its libtorch worker), one shard after another.
    #[default]
    Local,
    /// On a Slurm cluster: a sharded stage's shards as one array job (the merge here), every
    /// other libtorch stage as one job with its resources; plain table stages here.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(text: &str) -> Option<ExecutorKind> {
        match text {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }
}

/// Per-stage overrides of the job settings: each given field replaces `[executor]`'s.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub gpus: Option<u32>,
    /// Run this stage in the submitting process even with the Slurm executor (a quick libtorch
    /// stage such as `order`, not worth a place in the queue).
    #[serde(default)]
    pub local: bool,
}

impl Resources {
    /// `base` with these overrides applied.
    pub fn over(&self, base: &crate::slurm::SlurmSettings) -> crate::slurm::SlurmSettings {
        let mut s = base.clone();
        let pick = |mine: &Option<String>, theirs: &mut Option<String>| {
            if mine.is_some() {
                theirs.clone_from(mine);
            }
        };
        pick(&self.partition, &mut s.partition);
        pick(&self.account, &mut s.account);
        pick(&self.time, &mut s.time);
        pick(&self.mem, &mut s.mem);
        s.cpus_per_task = self.cpus_per_task.or(s.cpus_per_task);
        s.gpus = self.gpus.or(s.gpus);
        s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutor {
    kind: Option<Spanned<String>>,
    partition: Option<String>,
    account: Option<String>,
    time: Option<String>,
    cpus_per_task: Option<Spanned<u32>>,
    mem: Option<String>,
    gpus: Option<u32>,
    max_parallel: Option<u32>,
    #[serde(default)]
    extra_args: Vec<String>,
    retries: Option<u32>,
    poll_seconds: Option<Spanned<f64>>,
}

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    /// Its directory: relative paths in params and `store` resolve against it.
    pub base_dir: PathBuf,
    /// The artifact store folder.
    pub store_dir: PathBuf,
    /// The remote cache's URL (`[store] remote`), checked for its form only.
    pub remote: Option<String>,
    /// Where stages compute (`[executor]`).
    pub executor: Executor,
    /// Stages in declaration order (see `plan` for execution order).
    pub stages: Vec<StageDecl>,
    /// The stage kinds it was checked against.
    pub kinds: &'static [StageKind],
    /// The `STAGE.PARAM=VALUE` overrides applied (`--set`): a pipeline with any is a variant,
    /// whose outputs never become the file's own newest outputs.
    pub overrides: Vec<String>,
    /// The sweeps declared in `[sweeps.NAME]` tables, checked, in file order.
    pub sweeps: IndexMap<String, Vec<SweepAxis>>,
}

/// One param a sweep varies, with the values it takes (as `--set` spells them).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepAxis {
    /// `STAGE.PARAM`.
    pub target: String,
    pub values: Vec<String>,
}

impl SweepAxis {
    /// The axes of `--set` assignments: a value with commas (`train.rnn=gru,lstm`) is one axis
    /// per value, any other assignment an axis of one value. A list with an empty value
    /// (`train.epochs=`, `a=1,,2`) is refused here; a value of the wrong type is refused when
    /// the variants are checked.
    pub fn from_assignments(assignments: &[String]) -> Result<Vec<SweepAxis>, ConfigError> {
        assignments
            .iter()
            .map(|assignment| {
                let err = |message: &str| ConfigError::Override {
                    assignment: assignment.clone(),
                    message: message.to_string(),
                };
                let (target, values) = assignment
                    .split_once('=')
                    .ok_or_else(|| err("expected STAGE.PARAM=VALUE"))?;
                let values: Vec<String> = values.split(',').map(str::to_string).collect();
                if values.iter().any(String::is_empty) {
                    return Err(err(
                        "empty value (give one, or several separated by commas: STAGE.PARAM=A,B)",
                    ));
                }
                Ok(SweepAxis {
                    target: target.to_string(),
                    values,
                })
            })
            .collect()
    }

    /// Every combination of one value per axis (the grid), each as `--set` assignments, the
    /// last axis varying fastest. Axes naming the same param: the later one wins.
    pub fn grid(axes: &[SweepAxis]) -> Vec<Vec<String>> {
        let mut variants: Vec<Vec<String>> = vec![Vec::new()];
        for axis in axes {
            variants = variants
                .into_iter()
                .flat_map(|done| {
                    axis.values.iter().map(move |value| {
                        let mut next = done.clone();
                        next.push(format!("{}={value}", axis.target));
                        next
                    })
                })
                .collect();
        }
        variants
    }
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Applies `STAGE.PARAM=VALUE` overrides, checked exactly as values in the file are.
    pub fn apply_overrides(&mut self, assignments: &[String]) -> Result<(), ConfigError> {
        for assignment in assignments {
            let err = |message: String| ConfigError::Override {
                assignment: assignment.clone(),
                message,
            };
            let (target, value) = assignment
                .split_once('=')
                .ok_or_else(|| err("expected STAGE.PARAM=VALUE".into()))?;
            let (stage_name, param) = target
                .split_once('.')
                .ok_or_else(|| err("expected STAGE.PARAM=VALUE".into()))?;
            let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
            let stage = self
                .stages
                .iter_mut()
                .find(|s| s.name == stage_name)
                .ok_or_else(|| {
                    err(format!(
                        "no stage `{stage_name}` in the pipeline{}",
                        did_you_mean(stage_name, names.iter().map(String::as_str))
                    ))
                })?;
            let spec = stage
                .kind
                .params
                .iter()
                .find(|p| p.name == param)
                .ok_or_else(|| {
                    err(format!(
                        "stage `{stage_name}` (kind {}) has no param `{param}`{}",
                        stage.kind.name,
                        did_you_mean(param, stage.kind.params.iter().map(|p| p.name))
                    ))
                })?;
            // A string param's value may be quoted as the file would write it ("bf16").
            let unquote = |value: &str| match spec.ty {
                ParamType::Str | ParamType::Choice(_) | ParamType::Path { .. } => {
                    toml_string(value).unwrap_or_else(|| value.to_string())
                }
                _ => value.to_string(),
            };
            let check = |value: &str| spec.ty.check(&spec.ty.parse_cli(&unquote(value)));
            let checked = check(value).map_err(|message| {
                // A list of good values is a sweep, which only `run` expands.
                let sweep = value.contains(',') && value.split(',').all(|v| check(v).is_ok());
                err(if sweep {
                    "several values (a sweep) are run only by `onenet run`, which computes each; \
                     give one value here"
                        .to_string()
                } else {
                    message
                })
            })?;
            let mut given: BTreeMap<String, ParamValue> = stage
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            given.insert(param.to_string(), checked);
            let params = Params::with_defaults(stage.kind.params, given);
            // Only a value that differs from the file's makes the run a variant.
            if params != stage.params {
                stage.params = params;
                self.overrides.push(assignment.clone());
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    executor: Option<RawExecutor>,
    #[serde(default)]
    stages: IndexMap<String, Spanned<RawStage>>,
    /// `[sweeps.NAME]` with `STAGE.PARAM = [values]` (TOML's dotted keys: stage → param).
    #[serde(default)]
    sweeps: IndexMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<Spanned<String>>,
    remote: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: Spanned<String>,
    #[serde(default)]
    inputs: Vec<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    resources: Resources,
}

/// Reads and checks the pipeline file at `path` against the stage kinds `kinds` (the binaries
/// pass the registry of `onenet-stages`; the engine itself knows only the contract).
pub fn load(path: &Path, kinds: &'static [StageKind]) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Absolute paths, so that paths printed or written into tables work from any directory.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&path, &text, kinds)
}

/// Checks pipeline text; `path` is used for messages and to resolve relative paths.
pub fn parse(
    path: &Path,
    text: &str,
    kinds: &'static [StageKind],
) -> Result<Pipeline, ConfigError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_column(text, span.start);
        ConfigError::At {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawPipeline = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().replace('\n', " ");
        let hint = unknown_field_hint(&message);
        at(e.span().unwrap_or(0..0), message + &hint)
    })?;
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let (store_path, remote) = raw.store.map(|s| (s.path, s.remote)).unwrap_or_default();
    let store_dir = match store_path {
        Some(p) => base_dir.join(p.get_ref()),
        None => base_dir.join(DEFAULT_STORE),
    };
    let remote = match remote {
        Some(url) => {
            crate::remote::Remote::new(url.get_ref()).map_err(|e| at(url.span(), e.to_string()))?;
            Some(url.into_inner())
        }
        None => None,
    };
    let executor = match raw.executor {
        None => Executor::default(),
        Some(e) => {
            let kind = match &e.kind {
                None => ExecutorKind::Local,
                Some(k) => ExecutorKind::parse(k.get_ref()).ok_or_else(|| {
                    at(
                        k.span(),
                        format!(
                            "unknown executor `{}`; the executors are: local, slurm",
                            k.get_ref()
                        ),
                    )
                })?,
            };
            if let Some(n) = e.cpus_per_task.as_ref().filter(|n| *n.get_ref() == 0) {
                return Err(at(
                    n.span(),
                    "[executor] cpus_per_task must be at least 1".into(),
                ));
            }
            let poll_seconds = match &e.poll_seconds {
                None => 5.0,
                Some(p) if p.get_ref().is_finite() && *p.get_ref() >= 0.1 => *p.get_ref(),
                Some(p) => {
                    return Err(at(
                        p.span(),
                        format!(
                            "[executor] poll_seconds = {} is too short: the queue is asked once \
                             per interval, and at least 0.1 s spares the controller",
                            p.get_ref()
                        ),
                    ))
                }
            };
            Executor {
                kind,
                slurm: crate::slurm::SlurmSettings {
                    partition: e.partition,
                    account: e.account,
                    time: e.time,
                    cpus_per_task: e.cpus_per_task.map(|n| n.into_inner()),
                    mem: e.mem,
                    gpus: e.gpus,
                    max_parallel: e.max_parallel.unwrap_or(0),
                    extra_args: e.extra_args,
                    retries: e.retries.unwrap_or(2),
                    poll_seconds,
                },
            }
        }
    };
    if raw.stages.is_empty() {
        return Err(at(
            0..0,
            "no stages declared (expected [stages.NAME] tables)".into(),
        ));
    }

    let names: HashSet<&str> = raw.stages.keys().map(String::as_str).collect();
    let mut stages = Vec::with_capacity(raw.stages.len());
    let mut kind_mismatches = Vec::new();
    for (name, raw_stage) in &raw.stages {
        let stage_span = raw_stage.span();
        let raw_stage = raw_stage.get_ref();
        if !valid_stage_name(name) {
            return Err(at(
                stage_span,
                format!("stage name `{name}` must be letters, digits, `_` or `-`"),
            ));
        }
        let kind_name = raw_stage.kind.get_ref();
        let kind = kinds.iter().find(|k| k.name == kind_name).ok_or_else(|| {
            at(
                raw_stage.kind.span(),
                format!(
                    "unknown stage kind `{kind_name}`{}; the kinds are: {}",
                    did_you_mean(kind_name, kinds.iter().map(|k| k.name)),
                    kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;

        let mut inputs = Vec::new();
        for input in &raw_stage.inputs {
            let input_name = input.get_ref();
            if !names.contains(input_name.as_str()) {
                return Err(at(
                    input.span(),
                    format!(
                        "stage `{name}` reads `{input_name}`, which is not a stage in this file{}",
                        did_you_mean(input_name, names.iter().copied())
                    ),
                ));
            }
            if inputs.contains(input_name) {
                return Err(at(
                    input.span(),
                    format!("input `{input_name}` is listed twice"),
                ));
            }
            let upstream_kind = raw.stages[input_name.as_str()].get_ref().kind.get_ref();
            if !kind.inputs.kinds.contains(&upstream_kind.as_str()) {
                let accepted = if kind.inputs.kinds.is_empty() {
                    "no inputs".to_string()
                } else {
                    format!("inputs of kind {}", kind.inputs.kinds.join(", "))
                };
                // Reported after the cycle check: a cycle is the more useful message.
                kind_mismatches.push(at(
                    input.span(),
                    format!(
                        "stage `{name}` (kind {}) takes {accepted}, but `{input_name}` is of kind {upstream_kind}",
                        kind.name
                    ),
                ));
            }
            inputs.push(input_name.clone());
        }
        let count = inputs.len();
        if count < kind.inputs.min || count > kind.inputs.max {
            let expected = if kind.inputs.min == kind.inputs.max {
                format!("{}", kind.inputs.min)
            } else {
                format!("{} to {}", kind.inputs.min, kind.inputs.max)
            };
            return Err(at(
                stage_span,
                format!(
                    "stage `{name}` (kind {}) takes {expected} input(s), {count} given",
                    kind.name
                ),
            ));
        }

        let mut given = BTreeMap::new();
        for (param, value) in &raw_stage.params {
            let spec = kind
                .params
                .iter()
                .find(|p| p.name == param)
                .ok_or_else(|| {
                    let known: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
                    at(
                        value.span(),
                        format!(
                            "stage `{name}` (kind {}) has no param `{param}`{}; its params are: {}",
                            kind.name,
                            did_you_mean(param, known.iter().copied()),
                            if known.is_empty() {
                                "(none)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
            let checked = spec.ty.check(&raw_value(value.get_ref())).map_err(|m| {
                at(
                    value.span(),
                    format!("param `{param}` of stage `{name}`: {m}"),
                )
            })?;
            given.insert(param.clone(), checked);
        }
        stages.push(StageDecl {
            name: name.clone(),
            kind,
            inputs,
            params: Params::with_defaults(kind.params, given),
            resources: raw_stage.resources.clone(),
        });
        if !kind.device.uses_libtorch() && raw_stage.resources != Resources::default() {
            return Err(at(
                stage_span,
                format!(
                    "[stages.{name}.resources]: stage `{name}` ({}) runs in the submitting \
                     process whatever the executor (only libtorch stages become cluster jobs), so \
                     its resources would have no effect; remove them",
                    kind.name
                ),
            ));
        }
        if raw_stage.resources.cpus_per_task == Some(0) {
            return Err(at(
                stage_span,
                format!("[stages.{name}.resources] cpus_per_task must be at least 1"),
            ));
        }
    }

    if let Some(cycle) = find_cycle(&stages) {
        let first = &raw.stages[cycle[0].as_str()];
        return Err(at(
            first.span(),
            format!(
                "the stages form a cycle (each reads the next): {}",
                cycle.join(" -> ")
            ),
        ));
    }
    if let Some(mismatch) = kind_mismatches.into_iter().next() {
        return Err(mismatch);
    }

    let mut sweeps = IndexMap::new();
    for (sweep, by_stage) in &raw.sweeps {
        if crate::store::check_name(sweep).is_err() {
            return Err(at(
                by_stage.span(),
                format!("sweep name `{sweep}` must be letters, digits, `.`, `_` or `-`"),
            ));
        }
        let mut axes = Vec::new();
        let toml::Value::Table(by_stage_table) = by_stage.get_ref() else {
            return Err(at(
                by_stage.span(),
                format!("sweep `{sweep}`: expected a table of `STAGE.PARAM = [values]`"),
            ));
        };
        // Where `STAGE.PARAM` is written in the sweep's table, for messages (toml keeps no
        // spans inside a dotted-key table).
        let place = |stage: &str, param: &str| {
            let from = by_stage.span().start;
            let found = text[from..]
                .find(&format!("{stage}.{param}"))
                .or_else(|| text[from..].find(stage));
            found.map_or(by_stage.span(), |i| from + i..from + i + 1)
        };
        for (stage_name, params) in by_stage_table {
            let decl = stages
                .iter()
                .find(|s| &s.name == stage_name)
                .ok_or_else(|| {
                    at(
                        place(stage_name, ""),
                        format!(
                        "sweep `{sweep}` varies stage `{stage_name}`, which is not in this file{}",
                        did_you_mean(stage_name, stages.iter().map(|s| s.name.as_str()))
                    ),
                    )
                })?;
            let toml::Value::Table(table) = params else {
                return Err(at(
                    place(stage_name, ""),
                    format!(
                        "sweep `{sweep}`: expected `{stage_name}.PARAM = [values]` (TOML's dotted keys)"
                    ),
                ));
            };
            for (param, list) in table {
                let span = place(stage_name, param);
                let spec = decl.kind.params.iter().find(|p| p.name == param).ok_or_else(|| {
                    at(
                        span.clone(),
                        format!(
                            "sweep `{sweep}`: stage `{stage_name}` (kind {}) has no param `{param}`{}",
                            decl.kind.name,
                            did_you_mean(param, decl.kind.params.iter().map(|p| p.name))
                        ),
                    )
                })?;
                let toml::Value::Array(list) = list else {
                    return Err(at(
                        span.clone(),
                        format!(
                            "sweep `{sweep}`: `{stage_name}.{param}` must be a list of values, e.g. [1, 2]"
                        ),
                    ));
                };
                if list.is_empty() {
                    return Err(at(
                        span.clone(),
                        format!("sweep `{sweep}`: `{stage_name}.{param}` lists no values"),
                    ));
                }
                let mut texts = Vec::new();
                for value in list {
                    spec.ty.check(&raw_value(value)).map_err(|m| {
                        at(
                            span.clone(),
                            format!("sweep `{sweep}`: `{stage_name}.{param}`: {m}"),
                        )
                    })?;
                    texts.push(match value {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                }
                axes.push(SweepAxis {
                    target: format!("{stage_name}.{param}"),
                    values: texts,
                });
            }
        }
        sweeps.insert(sweep.clone(), axes);
    }

    Ok(Pipeline {
        path: path.to_path_buf(),
        base_dir,
        store_dir,
        remote,
        executor,
        stages,
        overrides: Vec::new(),
        sweeps,
        kinds,
    })
}

fn raw_value(value: &toml::Value) -> RawValue {
    match value {
        toml::Value::Integer(v) => RawValue::Int(*v),
        toml::Value::Float(v) => RawValue::Float(*v),
        toml::Value::Boolean(v) => RawValue::Bool(*v),
        toml::Value::String(v) => RawValue::Str(v.clone()),
        toml::Value::Array(_) => RawValue::Other("array"),
        toml::Value::Table(_) => RawValue::Other("table"),
        toml::Value::Datetime(_) => RawValue::Other("date"),
    }
}

fn valid_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// ", did you mean `x`?" when a known name is close to `given`.
/// A did-you-mean for serde's "unknown field `x`, expected one of `a`, `b`, …" (a misspelt key
/// of `[executor]`, `[store]`, a stage table or its resources); empty for other messages.
fn unknown_field_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(given, known.into_iter())
}

/// The string a TOML string literal (`"…"` or `'…'`, escapes and all) denotes; `None` for any
/// other text.
fn toml_string(text: &str) -> Option<String> {
    if !text.starts_with(['"', '\'']) {
        return None;
    }
    let mut table: toml::Table = toml::from_str(&format!("value = {text}")).ok()?;
    match table.remove("value")? {
        toml::Value::String(s) => Some(s),
        _ => None,
    }
}

pub fn did_you_mean<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (strsim::jaro_winkler(given, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

impl fmt::Display for StageDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind.name)
    }
}

/// A cycle among `stages`, as the names along it (each reads the next) with the first repeated
/// at the end.
pub fn find_cycle(stages: &[StageDecl]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::Unvisited; stages.len()];
    let mut path: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        stages: &[StageDecl],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for input in &stages[i].inputs {
            let Some(&j) = index.get(input.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..]
                        .iter()
                        .map(|&p| stages[p].name.clone())
                        .collect();
                    cycle.push(cycle[0].clone());
                    return Some(cycle);
                }
                Mark::Unvisited => {
                    if let Some(c) = visit(j, stages, index, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }

    (0..stages.len()).find_map(|i| {
        if marks[i] == Mark::Unvisited {
            visit(i, stages, &index, &mut marks, &mut path)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("p.toml"), text, onenet_stages::kinds())
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"
[stages.demo]
kind = "demo_data"
params = { images = 20 }

[stages.captions]
kind = "captions"
inputs = ["demo"]
params = { min_count = 2 }
"#;

    #[test]
    fn executor_settings_are_checked_with_their_place() {
        let with = |executor: &str| format!("[executor]\n{executor}\n{GOOD}");
        let e = err(&with("kind = \"slurm\"\npoll_seconds = 0"));
        assert!(
            e.contains("p.toml:3:") && e.contains("poll_seconds = 0 is too short"),
            "{e}"
        );
        let e = err(&with("kind = \"slurm\"\ncpus_per_task = 0"));
        assert!(
            e.contains("p.toml:3:") && e.contains("cpus_per_task must be at least 1"),
            "{e}"
        );
        let e = err(&with("kind = \"slurmm\""));
        assert!(e.contains("unknown executor `slurmm`"), "{e}");
        let e = err(&with("kind = \"slurm\"\npartiton = \"gpu\""));
        assert!(e.contains("did you mean `partition`?"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[stages.demo.resources]\ncpus_per_task = 2\n"
        ));
        assert!(e.contains("would have no effect"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[stages.images]\nkind = \"images\"\ninputs = [\"demo\"]\n\n\
             [stages.features]\nkind = \"features\"\ninputs = [\"images\"]\n\
             params = {{ weights = \"random\" }}\n\n[stages.features.resources]\n\
             cpus_per_task = 0\n"
        ));
        assert!(
            e.contains("[stages.features.resources] cpus_per_task"),
            "{e}"
        );
        let p = parse(
            Path::new("p.toml"),
            &with("kind = \"slurm\"\npoll_seconds = 0.5\ncpus_per_task = 2"),
            onenet_stages::kinds(),
        )
        .unwrap();
        assert_eq!(p.executor.slurm.poll_seconds, 0.5);
        assert_eq!(p.executor.slurm.cpus_per_task, Some(2));
    }

    #[test]
    fn good_file_fills_defaults() {
        let p = parse(Path::new("dir/p.toml"), GOOD, onenet_stages::kinds()).unwrap();
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.store_dir, Path::new("dir/artifacts"));
        let captions = p.stage("captions").unwrap();
        assert_eq!(captions.inputs, vec!["demo".to_string()]);
        assert_eq!(captions.params.int("min_count").unwrap(), 2);
        assert_eq!(captions.params.str("variant").unwrap(), "raw");
    }

    #[test]
    fn the_remote_is_read_and_a_malformed_one_names_its_line() {
        let with = |remote: &str| format!("[store]\nremote = \"{remote}\"\n{GOOD}");
        let p = parse(
            Path::new("p.toml"),
            &with("s3://b/team"),
            onenet_stages::kinds(),
        )
        .unwrap();
        assert_eq!(p.remote.as_deref(), Some("s3://b/team"));
        let e = err(&with("ftp://host/x"));
        assert!(e.starts_with("p.toml:2:10: remote `ftp://host/x`"), "{e}");
        assert!(
            e.contains("unknown scheme `ftp`") && e.contains("s3://"),
            "{e}"
        );
        let e = err("[store]\nremot = \"s3://b\"\n[stages.demo]\nkind = \"demo_data\"\n");
        assert!(e.starts_with("p.toml:2:1: unknown field `remot`"), "{e}");
    }

    #[test]
    fn unknown_stage_key_names_line_and_column() {
        let e = err("[stages.demo]\nkind = \"demo_data\"\nparms = {}\n");
        assert!(e.starts_with("p.toml:3:1: unknown field `parms`"), "{e}");
    }

    #[test]
    fn unknown_param_suggests_the_close_one() {
        let e = err(&GOOD.replace("min_count = 2", "min_cont = 2"));
        assert!(e.starts_with("p.toml:9:"), "{e}");
        assert!(e.contains("no param `min_cont`"), "{e}");
        assert!(e.contains("did you mean `min_count`"), "{e}");
    }

    #[test]
    fn unknown_kind_and_undefined_input_and_wrong_type() {
        let e = err(&GOOD.replace("kind = \"captions\"", "kind = \"caption\""));
        assert!(
            e.starts_with("p.toml:7:8: unknown stage kind `caption`"),
            "{e}"
        );
        let e = err(&GOOD.replace("inputs = [\"demo\"]", "inputs = [\"dmo\"]"));
        assert!(e.starts_with("p.toml:8:11:"), "{e}");
        assert!(e.contains("`dmo`, which is not a stage"), "{e}");
        let e = err(&GOOD.replace("min_count = 2", "min_count = \"2\""));
        assert!(e.contains("expected integer >= 1, found string"), "{e}");
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let text = r#"
[stages.a]
kind = "captions"
inputs = ["b"]
[stages.b]
kind = "captions"
inputs = ["a"]
"#;
        let e = err(text);
        assert!(
            e.starts_with("p.toml:2:1: the stages form a cycle (each reads the next): a -> b -> a"),
            "{e}"
        );
        let e = err(&text.replace("inputs = [\"b\"]", "inputs = [\"a\"]"));
        assert!(e.ends_with("a -> a"), "{e}");
    }

    #[test]
    fn overrides_are_checked_like_the_file() {
        let mut p = parse(Path::new("p.toml"), GOOD, onenet_stages::kinds()).unwrap();
        p.apply_overrides(&["captions.min_count=3".into()]).unwrap();
        assert_eq!(
            p.stage("captions")
                .unwrap()
                .params
                .int("min_count")
                .unwrap(),
            3
        );
        let e = p
            .apply_overrides(&["captions.min_count=x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected integer"), "{e}");
        let e = p
            .apply_overrides(&["captoins.min_count=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `captions`"), "{e}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
