//! Running one stage job and committing its output: the one place every guard lives. A stage
//! computed here, each shard of a sharded stage, the merge of a stage's shards and a cluster task
//! all go through [`Execution::run`], so none of them can commit without the checks the others
//! make:
//!
//! | guard | why |
//! |---|---|
//! | the output is written into a pending folder, removed on any failure | a failed or killed job never leaves an output that looks complete |
//! | a panicking stage is caught and reported as a bug | the run goes on with the other stages; nothing half-written is committed |
//! | every source file is checked again before commit (its stamp, else its content) | an output is never filed under a key whose inputs changed while it was computed |
//! | the device the job ran on must be the device its key names | CPU and GPU outputs never mix under one key |
//! | an object another process committed meanwhile is kept, unless the job replaces (`--force`) | where locks are not honoured, the first complete copy wins and no reader loses it |
//! | the key's scratch folder (checkpoints) goes once the output is committed | it is only worth keeping until the output it leads to exists |

use std::path::PathBuf;

use onenet_contract::{Progress, StageContext, StageError, StageJob, StageReport};
use serde::{Deserialize, Serialize};

use crate::hashing::{stamp_of, FileStamp};
use crate::key::KeyInputs;
use crate::store::{ArtifactStore, CommitInfo, ObjectMeta, StoreError};

/// A source file a key was computed from, as it was when the key was planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSource {
    pub path: PathBuf,
    pub stamp: FileStamp,
    /// BLAKE3 hex of its content, as it entered the key.
    pub hash: String,
}

impl PlannedSource {
    /// Whether the file still holds what the key was computed from: the same stamp, or, when
    /// the stamp moved (the file touched, or seen from another machine, whose device numbers
    /// differ), the same content.
    pub fn unchanged(&self) -> bool {
        if stamp_of(&self.path).ok() == Some(self.stamp) {
            return true;
        }
        onenet_contract::hash_file(&self.path).is_ok_and(|hash| hash == self.hash)
    }
}

/// Why a job's output was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stage returned an error.
    #[error("{0}")]
    Stage(#[from] StageError),
    #[error("internal error (a bug, please report it): {0}")]
    Panic(String),
    /// Source files (the first few named) changed while the job ran.
    #[error("{0} changed while the stage ran; nothing was committed: run again")]
    SourcesChanged(String),
    #[error(
        "ran on {ran}, but its key was computed for {keyed}; nothing was committed: run again \
         (on a cluster: does the job's partition have the GPU its `gpus` setting asks for?)"
    )]
    Device { ran: String, keyed: String },
}

/// What became of a job's output.
#[derive(Debug)]
pub enum Executed {
    /// Committed under the key; its metadata.
    Committed(Box<ObjectMeta>),
    /// Another process committed the key first: its copy is kept, this one dropped.
    AlreadyCommitted,
}

/// One job to run and commit: where, under which name and key, checked against what.
pub struct Execution<'a> {
    pub store: &'a ArtifactStore,
    /// The name the output is committed under (a stage's name, or `<stage>#shard`).
    pub name: &'a str,
    pub key_inputs: &'a KeyInputs,
    /// The files the key was computed from, checked again before commit.
    pub sources: &'a [PlannedSource],
    /// Replace an object already committed under the key (`--force`) instead of keeping it.
    pub replace: bool,
}

impl Execution<'_> {
    /// Runs `run` on `job` (whose output and scratch folders are set here) and commits what it
    /// wrote, with every guard of this module; `progress` is drawn meanwhile.
    pub fn run(
        &self,
        mut job: StageJob,
        run: impl FnOnce(&StageContext) -> Result<StageReport, StageError>,
        progress: &dyn Progress,
    ) -> Result<Executed, ExecuteError> {
        let key = self.key_inputs.key();
        let pending = self.store.begin(&key)?;
        job.out_dir = pending.dir.clone();
        job.scratch_dir = self.store.scratch_dir(&key)?;
        let discard = |error: ExecuteError| {
            let _ = std::fs::remove_dir_all(&pending.dir);
            Err(error)
        };
        test_delay(self.name);
        let start = std::time::Instant::now();
        let ctx = StageContext::new(&job, progress);
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx))) {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return discard(e.into()),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                return discard(ExecuteError::Panic(text));
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        let changed: Vec<String> = self
            .sources
            .iter()
            .filter(|source| !source.unchanged())
            .map(|source| source.path.display().to_string())
            .collect();
        if !changed.is_empty() {
            let more = match changed.len() {
                n if n > 5 => format!(" and {} more", n - 5),
                _ => String::new(),
            };
            return discard(ExecuteError::SourcesChanged(
                changed[..changed.len().min(5)].join(", ") + &more,
            ));
        }
        let keyed = self.key_inputs.environment.get("device");
        if let (Some(ran), Some(keyed)) = (report.device.as_deref(), keyed) {
            if ran != keyed {
                return discard(ExecuteError::Device {
                    ran: ran.to_string(),
                    keyed: keyed.clone(),
                });
            }
        }
        if !self.replace && self.store.has(&key) {
            let _ = std::fs::remove_dir_all(&pending.dir);
            return Ok(Executed::AlreadyCommitted);
        }
        let meta = self.store.commit(
            pending,
            self.name,
            self.key_inputs,
            CommitInfo {
                warnings: report.warnings,
                notes: report.notes,
                seconds,
                device: report.device,
                metrics: report.metrics,
            },
        )?;
        let _ = std::fs::remove_dir_all(&job.scratch_dir);
        Ok(Executed::Committed(Box::new(meta)))
    }
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
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onenet_contract::{NoProgress, Params};
    use std::collections::BTreeMap;

    fn key_inputs(device: Option<&str>) -> KeyInputs {
        KeyInputs {
            format: crate::key::KEY_FORMAT,
            kind: "test".into(),
            version: 1,
            params: BTreeMap::new(),
            upstream: Vec::new(),
            sources: BTreeMap::new(),
            environment: device
                .map(|d| BTreeMap::from([("device".to_string(), d.to_string())]))
                .unwrap_or_default(),
            recorded: BTreeMap::new(),
        }
    }

    fn job() -> StageJob {
        StageJob::new(
            "test",
            "test",
            Params::default(),
            Vec::new(),
            std::path::Path::new("."),
            std::path::Path::new(""),
        )
    }

    fn writes(ctx: &StageContext) -> Result<StageReport, StageError> {
        std::fs::write(ctx.out_dir.join("out.txt"), b"output").unwrap();
        Ok(StageReport::default())
    }

    fn source(path: PathBuf) -> PlannedSource {
        PlannedSource {
            stamp: stamp_of(&path).unwrap(),
            hash: onenet_contract::hash_file(&path).unwrap(),
            path,
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        store: ArtifactStore,
        input: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&dir.path().join("store")).unwrap();
        let input = dir.path().join("input.txt");
        std::fs::write(&input, b"input").unwrap();
        Setup {
            _dir: dir,
            store,
            input,
        }
    }

    /// A job committed as `test` into `s`'s store, checked against `sources`.
    fn execution<'a>(
        s: &'a Setup,
        key_inputs: &'a KeyInputs,
        sources: &'a [PlannedSource],
    ) -> Execution<'a> {
        Execution {
            store: &s.store,
            name: "test",
            key_inputs,
            sources,
            replace: false,
        }
    }

    /// Nothing pending is left behind.
    fn tmp_is_empty(store: &ArtifactStore) -> bool {
        std::fs::read_dir(store.bucket(crate::store::Bucket::Tmp))
            .map_or(true, |mut d| d.next().is_none())
    }

    #[test]
    fn a_job_is_committed_with_its_report() {
        let s = setup();
        let inputs = key_inputs(None);
        let sources = [source(s.input.clone())];
        let execution = execution(&s, &inputs, &sources);
        let Executed::Committed(meta) = execution.run(job(), writes, &NoProgress).unwrap() else {
            panic!("not committed");
        };
        assert_eq!(meta.stage, "test");
        assert!(s.store.has(&inputs.key()));
        // A second job under the same key keeps the first object.
        let again = execution.run(job(), writes, &NoProgress).unwrap();
        assert!(matches!(again, Executed::AlreadyCommitted));
        assert!(tmp_is_empty(&s.store));
    }

    #[test]
    fn a_failing_or_panicking_stage_commits_nothing() {
        let s = setup();
        let inputs = key_inputs(None);
        let execution = execution(&s, &inputs, &[]);
        let failed = execution.run(job(), |_| Err(StageError::Input("no".into())), &NoProgress);
        assert!(matches!(failed, Err(ExecuteError::Stage(_))));
        let panicked = execution.run(
            job(),
            |ctx| {
                std::fs::write(ctx.out_dir.join("half.txt"), b"half").unwrap();
                panic!("boom")
            },
            &NoProgress,
        );
        match panicked {
            Err(ExecuteError::Panic(text)) => assert_eq!(text, "boom"),
            other => panic!("{other:?}"),
        }
        assert!(!s.store.has(&inputs.key()));
        assert!(tmp_is_empty(&s.store));
    }

    #[test]
    fn a_source_changed_while_the_job_ran_is_not_committed_but_a_touched_one_is() {
        let s = setup();
        let inputs = key_inputs(None);
        let sources = [source(s.input.clone())];
        let execution = execution(&s, &inputs, &sources);
        let input = s.input.clone();
        let changed = execution.run(
            job(),
            |ctx| {
                std::fs::write(&input, b"other input").unwrap();
                writes(ctx)
            },
            &NoProgress,
        );
        match changed {
            Err(ExecuteError::SourcesChanged(files)) => {
                assert!(files.contains("input.txt"), "{files}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.store.has(&inputs.key()));
        // The same bytes written again: the stamp moves, the content does not.
        std::fs::write(&input, b"input").unwrap();
        let touched = execution.run(
            job(),
            |ctx| {
                std::fs::write(&input, b"input").unwrap();
                writes(ctx)
            },
            &NoProgress,
        );
        assert!(matches!(touched, Ok(Executed::Committed(_))), "{touched:?}");
    }

    #[test]
    fn an_output_from_another_device_than_its_key_names_is_not_committed() {
        let s = setup();
        let inputs = key_inputs(Some("cuda"));
        let execution = execution(&s, &inputs, &[]);
        let ran_on_cpu = |ctx: &StageContext| {
            writes(ctx)?;
            Ok(StageReport {
                device: Some("cpu".into()),
                ..Default::default()
            })
        };
        let result = execution.run(job(), ran_on_cpu, &NoProgress);
        assert!(
            matches!(&result, Err(ExecuteError::Device { ran, keyed }) if ran == "cpu" && keyed == "cuda"),
            "{result:?}"
        );
        assert!(!s.store.has(&inputs.key()));
    }

    #[test]
    fn a_forced_job_replaces_the_committed_object() {
        let s = setup();
        let inputs = key_inputs(None);
        let mut execution = execution(&s, &inputs, &[]);
        execution.run(job(), writes, &NoProgress).unwrap();
        execution.replace = true;
        let replaced = execution.run(
            job(),
            |ctx| {
                std::fs::write(ctx.out_dir.join("out.txt"), b"new output").unwrap();
                Ok(StageReport::default())
            },
            &NoProgress,
        );
        assert!(matches!(replaced, Ok(Executed::Committed(_))));
        let text = std::fs::read(s.store.object_dir(&inputs.key()).join("out.txt")).unwrap();
        assert_eq!(text, b"new output");
    }
}
