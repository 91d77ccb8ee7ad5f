//! What the store keeps: the roots of `gc` (every pipeline file's outputs, views, pins and
//! experiments) and the removal of the rest.

use std::collections::BTreeMap;

use super::*;
use crate::key::CacheKey;

impl Engine {
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
}
