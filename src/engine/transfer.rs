//! Bringing one object from the remote cache on request (`onenet pull`).

use std::time::Duration;

use super::*;
use crate::key::CacheKey;
use crate::store::StoreError;

impl Engine {
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
        let what = format!("stage {name} (key {})", key.short());
        let Some(_lock) = self
            .store
            .lock_to_make(key, &what, false, lock_timeout, &|_| {})?
        else {
            set_newest(self)?;
            return Ok(PullOutcome::Local);
        };
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
    pub(super) fn resolve_all(&self) -> Option<Vec<(String, CacheKey)>> {
        let order = crate::plan::select(&self.pipeline, &[]).ok()?;
        let planned = self.plan(&order).ok()?;
        Some(planned.into_iter().map(|p| (p.name, p.key)).collect())
    }
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
