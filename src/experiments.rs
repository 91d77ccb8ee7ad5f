//! Comparing runs: the experiments table (`onenet exp show`) and the difference of two objects
//! (`onenet exp diff`).
//!
//! Every object records the key inputs it was made from (`_onenet.json`), and those name the
//! keys of its upstream objects, so the params of a whole run are found by walking that lineage:
//! an `evaluate` object knows its own params and, through `train`'s object, `train.epochs`, and
//! through `captions`', `captions.min_count`. Nothing here knows what a stage computes; metrics are
//! the numbers each stage reported when it ran.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::key::{CacheKey, KeyParam};
use crate::store::{ArtifactStore, ObjectMeta};

/// How the reading commands choose the objects they read (it lives with the engine's lookup).
pub use crate::engine::Choice;

/// One object of the experiments table.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpRow {
    pub key: CacheKey,
    pub stage: String,
    pub kind: String,
    pub created_unix: u64,
    /// `stage.param` → value, for this object and every object upstream of it. Speed-only params
    /// are left out; a path param is given as it was spelled.
    pub params: BTreeMap<String, KeyParam>,
    /// The stage's reported numbers (`bleu4_beam`, `dev_loss`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// What names it: `latest`, `pin:NAME`, `exp:NAME` (a variant run).
    pub marks: Vec<String>,
}

/// A param's value as a table cell: strings without quotes.
pub fn param_text(value: &KeyParam) -> String {
    match value {
        KeyParam::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The params of `meta`'s object and of everything upstream of it, as `stage.param`. An upstream
/// object no longer in the store contributes nothing (its params are unknown).
pub fn lineage_params(store: &ArtifactStore, meta: &ObjectMeta) -> BTreeMap<String, KeyParam> {
    let mut params = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(String, ObjectMeta)> = vec![(meta.stage.clone(), meta.clone())];
    while let Some((stage, meta)) = stack.pop() {
        let inputs = &meta.key_inputs;
        for (name, value) in &inputs.params {
            // A path param enters the key as a marker; its spelling is recorded beside it.
            let shown = match value {
                KeyParam::Path => inputs.recorded.get(name).unwrap_or(value),
                _ => value,
            };
            params.insert(format!("{stage}.{name}"), shown.clone());
        }
        for (up_stage, hex) in &inputs.upstream {
            if !seen.insert(hex.clone()) {
                continue;
            }
            if let Some(up) = CacheKey::from_hex(hex).and_then(|k| store.meta(&k)) {
                stack.push((up_stage.clone(), up));
            }
        }
    }
    params
}

/// The rows for the objects `objects` (their metadata, already read), oldest first, with their
/// lineage params and metrics; `marks` names each key.
pub fn rows(
    store: &ArtifactStore,
    objects: Vec<ObjectMeta>,
    marks: &BTreeMap<CacheKey, Vec<String>>,
) -> Vec<ExpRow> {
    let mut rows: Vec<ExpRow> = objects
        .into_iter()
        .filter_map(|meta| CacheKey::from_hex(&meta.key).map(|key| (key, meta)))
        .map(|(key, meta)| ExpRow {
            key,
            params: lineage_params(store, &meta),
            stage: meta.stage.clone(),
            kind: meta.key_inputs.kind.clone(),
            created_unix: meta.created_unix,
            metrics: meta.metrics.clone(),
            marks: marks.get(&key).cloned().unwrap_or_default(),
        })
        .collect();
    // Rows made in the same second (a quick sweep) keep their experiments' order.
    rows.sort_by_cached_key(|r| {
        let exp = r.marks.iter().find(|m| m.starts_with("exp:")).cloned();
        (r.created_unix, exp.map(|e| natural_key(&e)), r.key)
    });
    rows
}

/// `grid-10` after `grid-9`: the text split into runs of digits (compared as numbers) and
/// other characters.
fn natural_key(text: &str) -> Vec<(String, u64)> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            parts.push((String::new(), rest[..digits].parse().unwrap_or(u64::MAX)));
            rest = &rest[digits..];
        } else {
            let other = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            parts.push((rest[..other].to_string(), 0));
            rest = &rest[other..];
        }
    }
    parts
}

/// The params whose values are not the same in every row (a param some rows lack counts as
/// differing), in name order.
pub fn differing_params(rows: &[ExpRow]) -> Vec<String> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    names
        .into_iter()
        .filter(|name| {
            let mut values = rows.iter().map(|r| r.params.get(*name));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .cloned()
        .collect()
}

/// Every metric name of the rows, in name order.
pub fn metric_names(rows: &[ExpRow]) -> Vec<String> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    names.into_iter().cloned().collect()
}

/// Why a `--where` or `--sort` cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExpError {
    #[error("--where {0}: expected STAGE.PARAM=VALUE")]
    BadFilter(String),
    #[error("--sort {wanted}: no such metric (the rows have: {known})")]
    UnknownMetric { wanted: String, known: String },
}

/// Keeps the rows whose lineage param `STAGE.PARAM` has the text `VALUE`, for each filter.
pub fn filter(rows: Vec<ExpRow>, filters: &[String]) -> Result<Vec<ExpRow>, ExpError> {
    let mut parsed = Vec::new();
    for f in filters {
        let (name, value) = f
            .split_once('=')
            .filter(|(name, _)| name.contains('.'))
            .ok_or_else(|| ExpError::BadFilter(f.clone()))?;
        parsed.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(rows
        .into_iter()
        .filter(|row| {
            parsed.iter().all(|(name, value)| {
                row.params
                    .get(name)
                    .is_some_and(|v| &param_text(v) == value)
            })
        })
        .collect())
}

/// Sorts by a metric, largest first (or smallest first with `ascending`); rows without it last.
pub fn sort_by_metric(rows: &mut [ExpRow], metric: &str, ascending: bool) -> Result<(), ExpError> {
    let known = metric_names(rows);
    if !known.iter().any(|m| m == metric) {
        return Err(ExpError::UnknownMetric {
            wanted: metric.to_string(),
            known: known.join(", "),
        });
    }
    rows.sort_by(
        |a, b| match (a.metrics.get(metric), b.metrics.get(metric)) {
            (Some(x), Some(y)) if ascending => x.total_cmp(y),
            (Some(x), Some(y)) => y.total_cmp(x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        },
    );
    Ok(())
}

/// What differs between two objects: params (lineage-wide) and metrics, each `(name, a, b)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpDiff {
    pub params: Vec<(String, Option<KeyParam>, Option<KeyParam>)>,
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
}

/// The params and metrics whose values differ between `a` and `b`.
pub fn diff(a: &ExpRow, b: &ExpRow) -> ExpDiff {
    let both = [a.clone(), b.clone()];
    let params = differing_params(&both)
        .into_iter()
        .map(|name| {
            let (x, y) = (a.params.get(&name).cloned(), b.params.get(&name).cloned());
            (name, x, y)
        })
        .collect();
    let metrics = metric_names(&both)
        .into_iter()
        .filter_map(|name| {
            let (x, y) = (a.metrics.get(&name).copied(), b.metrics.get(&name).copied());
            (x != y).then_some((name, x, y))
        })
        .collect();
    ExpDiff { params, metrics }
}

/// A row as JSON: `key`, `stage`, `kind`, `created_unix`, `marks`, and the `params` and
/// `metrics` objects (params typed as in the key: numbers, booleans, strings).
pub fn row_json(row: &ExpRow, params: &[String]) -> Value {
    let params: serde_json::Map<String, Value> = params
        .iter()
        .map(|name| {
            let value = row.params.get(name).map_or(Value::Null, |v| match v {
                KeyParam::Path => Value::Null,
                other => other.to_json(),
            });
            (name.clone(), value)
        })
        .collect();
    serde_json::json!({
        "key": row.key.hex(),
        "stage": row.stage,
        "kind": row.kind,
        "created_unix": row.created_unix,
        "marks": row.marks,
        "params": params,
        "metrics": row.metrics,
    })
}

impl crate::engine::Engine {
    /// What names each object: this pipeline's newest outputs (`latest`), pins and experiments.
    pub fn marks(&self) -> BTreeMap<CacheKey, Vec<String>> {
        let mut marks: BTreeMap<CacheKey, Vec<String>> = BTreeMap::new();
        for decl in &self.pipeline.stages {
            if let Some(key) = self.store.latest_key(&decl.name) {
                marks.entry(key).or_default().push("latest".into());
            }
        }
        for (bucket, prefix) in [
            (crate::store::Bucket::Pins, "pin"),
            (crate::store::Bucket::Experiments, "exp"),
        ] {
            for set in self.store.named(bucket) {
                for hex in set.keys.values() {
                    if let Some(key) = CacheKey::from_hex(hex) {
                        let mark = format!("{prefix}:{}", set.name);
                        let entry = marks.entry(key).or_default();
                        if !entry.contains(&mark) {
                            entry.push(mark);
                        }
                    }
                }
            }
        }
        marks
    }

    /// The experiments table: every object of stage `stage`, or by default every object of the
    /// kind of the furthest-downstream stage of this pipeline that reports metrics (e.g. every
    /// `evaluate`, whatever its stage is called; without metrics, the furthest-downstream stage
    /// with outputs); `sweep` keeps only that sweep's runs.
    pub fn exp_rows(
        &self,
        stage: Option<&str>,
        sweep: Option<&str>,
    ) -> Result<Vec<ExpRow>, String> {
        let in_sweep: Option<BTreeSet<String>> = match sweep {
            None => None,
            Some(name) => {
                let sets: Vec<_> = self
                    .store
                    .named(crate::store::Bucket::Experiments)
                    .into_iter()
                    .filter(|e| e.sweep.as_deref() == Some(name))
                    .collect();
                if sets.is_empty() {
                    return Err(format!(
                        "no sweep named `{name}` has run against this store"
                    ));
                }
                Some(
                    sets.into_iter()
                        .flat_map(|s| s.keys.into_values())
                        .collect(),
                )
            }
        };
        let metas: Vec<ObjectMeta> = self
            .store
            .object_keys()
            .iter()
            .filter_map(|k| self.store.meta(k))
            .filter(|m| in_sweep.as_ref().is_none_or(|keys| keys.contains(&m.key)))
            .collect();
        let chosen: Vec<ObjectMeta> = match stage {
            Some(stage) => {
                if !metas.iter().any(|m| m.stage == stage) {
                    let known: BTreeSet<&str> = metas.iter().map(|m| m.stage.as_str()).collect();
                    return Err(format!(
                        "--stage {stage}: the store has no output of a stage of that name{}",
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (it has: {})",
                                known.into_iter().collect::<Vec<_>>().join(", ")
                            )
                        }
                    ));
                }
                metas.into_iter().filter(|m| m.stage == stage).collect()
            }
            None => {
                // The furthest-downstream kind that reports metrics, else that has outputs.
                let with_metrics: BTreeSet<&str> = metas
                    .iter()
                    .filter(|m| !m.metrics.is_empty())
                    .map(|m| m.key_inputs.kind.as_str())
                    .collect();
                let with_outputs: BTreeSet<&str> =
                    metas.iter().map(|m| m.key_inputs.kind.as_str()).collect();
                let wanted = if with_metrics.is_empty() {
                    with_outputs
                } else {
                    with_metrics
                };
                let Some(kind) = crate::plan::topological_order(&self.pipeline)
                    .into_iter()
                    .rev()
                    .map(|i| self.pipeline.stages[i].kind.name)
                    .find(|k| wanted.contains(k))
                else {
                    return Err(
                        "the store has no output of this pipeline's stages yet: run it \
                                first"
                            .to_string(),
                    );
                };
                let kind = kind.to_string();
                metas
                    .into_iter()
                    .filter(|m| m.key_inputs.kind == kind)
                    .collect()
            }
        };
        Ok(rows(&self.store, chosen, &self.marks()))
    }

    /// The object that `name` means for `exp diff`: a pin's or experiment's object of the stage
    /// the table shows (`stage`, or the default), or an object by key prefix.
    pub fn exp_object(&self, name: &str, stage: Option<&str>) -> Result<ExpRow, String> {
        let table = self.exp_rows(stage, None)?;
        for bucket in [
            crate::store::Bucket::Pins,
            crate::store::Bucket::Experiments,
        ] {
            if let Some(set) = self
                .store
                .named(bucket)
                .into_iter()
                .find(|s| s.name == name)
            {
                return table
                    .into_iter()
                    .find(|row| set.keys.values().any(|hex| *hex == row.key.hex()))
                    .ok_or_else(|| {
                        format!("`{name}` names no object of the stage compared (choose one with --stage)")
                    });
            }
        }
        let key = self.store.key_by_prefix(name).map_err(|e| e.to_string())?;
        let meta = self.store.meta(&key).ok_or("object metadata unreadable")?;
        Ok(rows(&self.store, vec![meta], &self.marks())
            .pop()
            .ok_or("object metadata unreadable")?)
    }

    /// Records a variant run (a run with `--set`) as the experiment `name`, with the keys of the
    /// stages it ran, so that `exp show` names it, `--exp` reads it and `gc --keep-sweeps`
    /// keeps it.
    pub fn record_experiment(
        &self,
        name: &str,
        sweep: Option<&str>,
        keys: BTreeMap<String, String>,
    ) -> Result<(), crate::store::StoreError> {
        self.store.write_named(
            crate::store::Bucket::Experiments,
            &crate::store::NamedKeys {
                name: name.to_string(),
                pipeline: self.pipeline.path.clone(),
                overrides: self.pipeline.overrides.clone(),
                sweep: sweep.map(str::to_string),
                keys,
                created_unix: crate::store::now_unix() as u64,
            },
        )
    }

    /// Pins `name`: what the pipeline (with any `--set`) resolves to now — every stage, or only
    /// `stage` — or the one object `key`. Every object must exist; their upstream objects are
    /// kept by `gc` too.
    pub fn pin(
        &self,
        name: &str,
        stage: Option<&str>,
        key: Option<&str>,
    ) -> Result<crate::store::NamedKeys, String> {
        crate::store::check_name(name).map_err(|e| e.to_string())?;
        let keys: BTreeMap<String, String> = match (stage, key) {
            (_, Some(prefix)) => {
                let key = self
                    .store
                    .key_by_prefix(prefix)
                    .map_err(|e| e.to_string())?;
                let meta = self.store.meta(&key).ok_or("object metadata unreadable")?;
                [(meta.stage, key.hex())].into()
            }
            (stage, None) => {
                let names: Vec<String> = stage.map(str::to_string).into_iter().collect();
                let order =
                    crate::plan::select(&self.pipeline, &names).map_err(|e| e.to_string())?;
                let planned = self.plan(&order).map_err(|e| e.to_string())?;
                let wanted: Vec<_> = planned
                    .iter()
                    .filter(|p| stage.is_none_or(|s| s == p.name))
                    .collect();
                let missing: Vec<&str> = wanted
                    .iter()
                    .filter(|p| !self.store.has(&p.key))
                    .map(|p| p.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "not in the store as the pipeline reads now: {}; run them first",
                        missing.join(", ")
                    ));
                }
                wanted
                    .iter()
                    .map(|p| (p.name.clone(), p.key.hex()))
                    .collect()
            }
        };
        let set = crate::store::NamedKeys {
            name: name.to_string(),
            pipeline: self.pipeline.path.clone(),
            overrides: self.pipeline.overrides.clone(),
            sweep: None,
            keys,
            created_unix: crate::store::now_unix() as u64,
        };
        self.store
            .write_named(crate::store::Bucket::Pins, &set)
            .map_err(|e| e.to_string())?;
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: u8, params: &[(&str, KeyParam)], metrics: &[(&str, f64)]) -> ExpRow {
        let hex: String = std::iter::repeat_n(format!("{key:02x}"), 32).collect();
        ExpRow {
            key: CacheKey::from_hex(&hex).unwrap(),
            stage: "evaluate".into(),
            kind: "evaluate".into(),
            created_unix: u64::from(key),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            metrics: metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            marks: Vec::new(),
        }
    }

    #[test]
    fn only_params_that_differ_are_columns() {
        let rows = vec![
            row(
                1,
                &[
                    ("train.epochs", KeyParam::Int(3)),
                    ("train.rnn", KeyParam::Str("gru".into())),
                ],
                &[("bleu4_beam", 0.5)],
            ),
            row(
                2,
                &[
                    ("train.epochs", KeyParam::Int(5)),
                    ("train.rnn", KeyParam::Str("gru".into())),
                ],
                &[("bleu4_beam", 0.6)],
            ),
            row(3, &[("train.epochs", KeyParam::Int(3))], &[]),
        ];
        assert_eq!(differing_params(&rows), ["train.epochs", "train.rnn"]);
        assert_eq!(differing_params(&rows[..1]), Vec::<String>::new());
        let d = diff(&rows[0], &rows[1]);
        assert_eq!(
            d.params,
            [(
                "train.epochs".to_string(),
                Some(KeyParam::Int(3)),
                Some(KeyParam::Int(5))
            )]
        );
        assert_eq!(
            d.metrics,
            [("bleu4_beam".to_string(), Some(0.5), Some(0.6))]
        );
    }

    #[test]
    fn sweep_variants_sort_by_number() {
        assert!(natural_key("grid-9") < natural_key("grid-10"));
        assert!(natural_key("a-2") < natural_key("b-1"));
    }

    #[test]
    fn filters_and_sorts() {
        let rows = vec![
            row(
                1,
                &[("train.rnn", KeyParam::Str("gru".into()))],
                &[("m", 0.2)],
            ),
            row(
                2,
                &[("train.rnn", KeyParam::Str("lstm".into()))],
                &[("m", 0.9)],
            ),
            row(3, &[("train.rnn", KeyParam::Str("lstm".into()))], &[]),
        ];
        let lstm = filter(rows.clone(), &["train.rnn=lstm".into()]).unwrap();
        assert_eq!(lstm.len(), 2);
        assert!(matches!(
            filter(rows.clone(), &["rnn".into()]),
            Err(ExpError::BadFilter(_))
        ));
        let mut sorted = rows.clone();
        sort_by_metric(&mut sorted, "m", false).unwrap();
        assert_eq!(
            sorted.iter().map(|r| r.created_unix).collect::<Vec<_>>(),
            [2, 1, 3]
        );
        sort_by_metric(&mut sorted, "m", true).unwrap();
        assert_eq!(
            sorted.iter().map(|r| r.created_unix).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let err = sort_by_metric(&mut sorted, "cider_d", false).unwrap_err();
        assert!(err.to_string().contains("the rows have: m"), "{err}");
    }
}
