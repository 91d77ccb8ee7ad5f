//! The artifact store: immutable stage outputs addressed by cache key, committed atomically,
//! guarded by per-key locks, with a record of every run and stable `latest/<stage>` paths.
//!
//! ```text
//! artifacts/
//!   objects/<key>/          one stage output: its files plus `_onenet.json` (what it is)
//!   latest/<stage>          symlink to the newest object of that stage, for people and tools
//!   runs.jsonl              one JSON line per stage per run (readable by DuckDB and Polars)
//!   statcache.json          file stamps → content hashes
//!   device-cache.json       the device the libtorch worker uses on this machine
//!   tmp/<key>.<pid>.<n>/    outputs being written; never mistaken for a complete object
//!   scratch/<key>/          checkpoints of a stage being computed, kept if it is killed
//!   locks/<key>.lock        held while a process computes that key
//!   corrupt/<key>/          objects `verify` found damaged, moved aside
//!   views/<name>/<stage>    newest-output links of other pipeline files sharing the store
//!   pipelines/<view>.json   which pipeline files use the store, and what they resolved to
//!   pins/<name>.json        named sets of objects `gc` keeps (`onenet pin`)
//!   experiments/<name>.json variant runs (`run --set`, sweeps), for `exp show` and `--exp`
//!   shards/<stage>.json     how a sharded stage's items were last split into shards
//!   logs/<key>/             a cluster job's script and its tasks' stdout and stderr
//! ```
//!
//! Each folder and file is named once, by `Bucket` and `StoreFile`.
//!
//! An object directory appears only by a rename of a fully written, flushed and validated
//! temporary directory whose `_onenet.json` was written last, so an object that exists is
//! complete. A killed run leaves at most a temporary directory, removed by the next process that
//! takes the same key's lock or by `gc`.
//!
//! `runs.jsonl` is appended one whole line per `write`, under an exclusive lock on the file. A
//! run killed mid-write (or a full disk) can leave a torn last line; the next append repairs it
//! first (cutting the fragment, or completing it if only its newline is missing), so every line
//! stays a whole record for DuckDB and Polars. Our own reader skips a malformed line with a
//! warning naming the file and line rather than failing.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::formats;
use crate::hashing::hash_file;
use crate::key::{CacheKey, KeyInputs};

/// The file inside each object that says what it is; written last.
pub const OBJECT_META: &str = "_onenet.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    InvalidOutput { path: PathBuf, message: String },
    /// A step of appending to the run-record log failed; `what` says which.
    #[error("{}: {what}: {source}", path.display())]
    RunLog {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "timed out after {waited:?} waiting for another onenet process computing {what} (lock {}); \
         if no other process is running, this is a stale lock on a network file system: remove it",
        lock.display()
    )]
    LockTimeout {
        what: String,
        lock: PathBuf,
        waited: Duration,
    },
    #[error(
        "`{0}` cannot name a pin or an experiment: use letters, digits, `.`, `_` and `-`, not \
         starting with `.` or `-`"
    )]
    BadName(String),
    #[error("no object in the store has a key starting with `{0}`")]
    UnknownKey(String),
    #[error("`{prefix}` starts {count} keys in the store: give more of the key")]
    AmbiguousKey { prefix: String, count: usize },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of an object, as recorded at commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectFile {
    /// Path relative to the object directory, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// What an object is: written as `_onenet.json` inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub stage: String,
    pub key: String,
    pub key_inputs: KeyInputs,
    pub files: Vec<ObjectFile>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    pub seconds: f64,
    pub created_unix: u64,
    /// The device a libtorch stage ran on, as its worker reported it (None: plain Rust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The stage's headline numbers, for comparing runs (`exp show`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// What a stage said about an output besides its files, recorded with it at commit.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    /// Seconds the computation took.
    pub seconds: f64,
    /// The device it ran on (libtorch stages).
    pub device: Option<String>,
    /// Its headline numbers.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// One line of `runs.jsonl`: a stage's outcome in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub time_unix: f64,
    pub stage: String,
    pub kind: String,
    pub key: String,
    /// "computed", "cached" or "failed".
    pub action: String,
    pub seconds: f64,
    /// (input stage, its key).
    pub inputs: Vec<(String, String)>,
    pub warnings: usize,
    pub error: Option<String>,
}

/// The store's folders, each named here and nowhere else (uv's cache buckets are the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// `objects/<key>/`: complete, immutable stage outputs.
    Objects,
    /// `latest/<stage>`: links to each stage's newest object.
    Latest,
    /// `tmp/`: outputs being written.
    Tmp,
    /// `scratch/<key>/`: checkpoints of a stage being computed.
    Scratch,
    /// `locks/<key>.lock`.
    Locks,
    /// `corrupt/<key>/`: objects `verify` moved aside.
    Corrupt,
    /// `views/<name>/<stage>`: the newest-output links of a pipeline file other than the one
    /// that owns `latest/`.
    Views,
    /// `pipelines/<view>.json`: which pipeline files use this store, and what they resolved to.
    Pipelines,
    /// `pins/<name>.json`: named sets of objects that `gc` keeps.
    Pins,
    /// `experiments/<name>.json`: variant runs, each a named set of objects.
    Experiments,
    /// `shards/<stage>.json`: how a sharded stage's items were last split into shards.
    Shards,
    /// `logs/<key>/`: the job script and each cluster task's stdout and stderr.
    Logs,
}

impl Bucket {
    pub fn dir_name(self) -> &'static str {
        match self {
            Bucket::Objects => "objects",
            Bucket::Latest => "latest",
            Bucket::Tmp => "tmp",
            Bucket::Scratch => "scratch",
            Bucket::Locks => "locks",
            Bucket::Corrupt => "corrupt",
            Bucket::Views => "views",
            Bucket::Pipelines => "pipelines",
            Bucket::Pins => "pins",
            Bucket::Experiments => "experiments",
            Bucket::Shards => "shards",
            Bucket::Logs => "logs",
        }
    }
}

/// The store's single files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFile {
    /// `runs.jsonl`: the run records.
    Runs,
    /// `statcache.json`: file stamps → content hashes.
    StatCache,
    /// `device-cache.json`: the device the libtorch worker uses on this machine.
    DeviceCache,
}

impl StoreFile {
    pub fn file_name(self) -> &'static str {
        match self {
            StoreFile::Runs => "runs.jsonl",
            StoreFile::StatCache => "statcache.json",
            StoreFile::DeviceCache => "device-cache.json",
        }
    }
}

/// The store rooted at one folder, seen through one pipeline file's view (`latest/` or
/// `views/<name>/`): which object is the newest of each of its stages.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    /// The view's folder relative to `root` (`latest` or `views/<name>`).
    view: PathBuf,
}

/// What a pipeline file that ran against the store resolved to, kept in `pipelines/` so that
/// `gc` keeps it even when another pipeline file or a variant ran since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// The pipeline file (absolute; for `gc` to resolve it again, and for people).
    pub path: PathBuf,
    /// Its view folder relative to the store (`latest` or `views/<name>`).
    pub view: String,
    /// Stage name → key hex, as of its last run without `--set`.
    pub keys: std::collections::BTreeMap<String, String>,
    pub updated_unix: u64,
}

/// A named set of objects, one per stage: a pin (`gc` keeps it) or an experiment (a variant
/// run, kept by `gc --keep-sweeps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedKeys {
    pub name: String,
    /// The pipeline file it came from (absolute).
    pub pipeline: PathBuf,
    /// The run's `--set` overrides (empty: the file as it read).
    #[serde(default)]
    pub overrides: Vec<String>,
    /// The sweep the run belonged to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
    /// Stage name → key hex.
    pub keys: std::collections::BTreeMap<String, String>,
    pub created_unix: u64,
}

/// Whether `name` can name a pin or experiment: it becomes a file name.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// A held per-key lock; released on drop.
pub struct KeyLock {
    _file: File,
}

/// A temporary directory a stage writes into before commit.
pub struct PendingObject {
    pub dir: PathBuf,
    key: CacheKey,
}

static PENDING_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ArtifactStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ArtifactStore, StoreError> {
        for sub in [Bucket::Objects, Bucket::Latest, Bucket::Tmp, Bucket::Locks] {
            let dir = root.join(sub.dir_name());
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(ArtifactStore {
            root: root.to_path_buf(),
            view: PathBuf::from(Bucket::Latest.dir_name()),
        })
    }

    /// The same store seen through the view `view` (`latest` or `views/<name>`).
    pub fn with_view(mut self, view: &str) -> ArtifactStore {
        self.view = PathBuf::from(view);
        self
    }

    /// This store's view folder relative to its root.
    pub fn view(&self) -> &Path {
        &self.view
    }

    /// Every pipeline file recorded as using this store.
    pub fn pipeline_records(&self) -> Vec<PipelineRecord> {
        let mut records: Vec<PipelineRecord> = read_json_files(&self.bucket(Bucket::Pipelines));
        records.sort_by(|a, b| a.view.cmp(&b.view));
        records
    }

    /// Records (atomically) what the pipeline file of view `record.view` resolved to.
    pub fn record_pipeline(&self, record: &PipelineRecord) -> Result<(), StoreError> {
        let file = format!("{}.json", record.view.replace('/', "__"));
        self.write_json(Bucket::Pipelines, &file, record)
    }

    /// Every named set of objects in `bucket` (`Pins` or `Experiments`), by name.
    pub fn named(&self, bucket: Bucket) -> Vec<NamedKeys> {
        let mut sets: Vec<NamedKeys> = read_json_files(&self.bucket(bucket));
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        sets
    }

    /// Writes (atomically, replacing one of the same name) a named set of objects.
    pub fn write_named(&self, bucket: Bucket, set: &NamedKeys) -> Result<(), StoreError> {
        check_name(&set.name)?;
        self.write_json(bucket, &format!("{}.json", set.name), set)
    }

    /// Removes a named set of objects; false if there was none of that name.
    pub fn remove_named(&self, bucket: Bucket, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        let path = self.bucket(bucket).join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes `value` as `<bucket>/<file>` by a rename, so a reader sees the old or new whole.
    fn write_json<T: Serialize>(
        &self,
        bucket: Bucket,
        file: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let dir = self.bucket(bucket);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(file);
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            PENDING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The keys every view's links point at (`latest/` and each of `views/`), with the view.
    pub fn view_keys(&self) -> Vec<(String, String, CacheKey)> {
        let mut dirs = vec![PathBuf::from(Bucket::Latest.dir_name())];
        if let Ok(entries) = fs::read_dir(self.bucket(Bucket::Views)) {
            for e in entries.flatten() {
                dirs.push(Path::new(Bucket::Views.dir_name()).join(e.file_name()));
            }
        }
        let mut found = Vec::new();
        for view in dirs {
            let Ok(entries) = fs::read_dir(self.root.join(&view)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = fs::read_link(e.path())
                    .ok()
                    .and_then(|t| CacheKey::from_hex(&t.file_name()?.to_string_lossy()));
                if let Some(key) = key {
                    found.push((view.to_string_lossy().into_owned(), name, key));
                }
            }
        }
        found
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of one bucket.
    pub fn bucket(&self, bucket: Bucket) -> PathBuf {
        self.root.join(bucket.dir_name())
    }

    /// The path of one of the store's single files.
    pub fn file(&self, file: StoreFile) -> PathBuf {
        self.root.join(file.file_name())
    }

    pub fn object_dir(&self, key: &CacheKey) -> PathBuf {
        self.bucket(Bucket::Objects).join(key.hex())
    }

    pub fn stat_cache_file(&self) -> PathBuf {
        self.file(StoreFile::StatCache)
    }

    pub fn runs_file(&self) -> PathBuf {
        self.file(StoreFile::Runs)
    }

    pub fn latest_link(&self, stage: &str) -> PathBuf {
        self.root.join(&self.view).join(stage)
    }

    /// The scratch directory for `key` (created if needed): survives a killed run, so a long
    /// stage can resume from its checkpoints; removed after the key's output is committed.
    pub fn scratch_dir(&self, key: &CacheKey) -> Result<PathBuf, StoreError> {
        let dir = self.bucket(Bucket::Scratch).join(key.hex());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Whether a complete object exists for `key`.
    pub fn has(&self, key: &CacheKey) -> bool {
        self.object_dir(key).join(OBJECT_META).is_file()
    }

    /// The object's manifest (`_onenet.json`) as stored, if the object exists.
    pub fn manifest(&self, key: &CacheKey) -> Option<Vec<u8>> {
        fs::read(self.object_dir(key).join(OBJECT_META)).ok()
    }

    /// The metadata of the object for `key`, if it exists and is readable.
    pub fn meta(&self, key: &CacheKey) -> Option<ObjectMeta> {
        let bytes = fs::read(self.object_dir(key).join(OBJECT_META)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The key `latest/<stage>` points at, whether or not that object still exists.
    pub fn latest_key(&self, stage: &str) -> Option<CacheKey> {
        let target = fs::read_link(self.latest_link(stage)).ok()?;
        CacheKey::from_hex(&target.file_name()?.to_string_lossy())
    }

    /// Points `latest/<stage>` at `key`'s object (atomically: a new link renamed over the old).
    pub fn set_latest(&self, stage: &str, key: &CacheKey) -> Result<(), StoreError> {
        let link = self.latest_link(stage);
        let view_dir = self.root.join(&self.view);
        fs::create_dir_all(&view_dir).map_err(io_err(&view_dir))?;
        let tmp = view_dir.join(format!(
            ".{stage}.{}.{}",
            std::process::id(),
            PENDING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Relative, so the store can be moved or copied whole: one `..` per level of the view.
        let mut target = PathBuf::new();
        for _ in self.view.components() {
            target.push("..");
        }
        let target = target.join(Bucket::Objects.dir_name()).join(key.hex());
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &link).map_err(io_err(&link))
    }

    /// Takes the lock for `key`, waiting up to `timeout`; `on_wait` is called once if another
    /// process holds it, so the caller can say what it is waiting for.
    pub fn lock(
        &self,
        key: &CacheKey,
        what: &str,
        timeout: Duration,
        on_wait: &dyn Fn(&Path),
    ) -> Result<KeyLock, StoreError> {
        let path = self
            .bucket(Bucket::Locks)
            .join(format!("{}.lock", key.hex()));
        let file = open_lock_file(&path)?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(KeyLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) => {
                    if !told {
                        on_wait(&path);
                        told = true;
                    }
                    if start.elapsed() >= timeout {
                        return Err(StoreError::LockTimeout {
                            what: what.to_string(),
                            lock: path,
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// The lock for making `key`'s object, or None when the object is in the store — before
    /// the lock was asked for or once it was granted (another process made it meanwhile).
    /// `replace` (a forced recompute) takes the lock whether or not the object is there.
    pub fn lock_to_make(
        &self,
        key: &CacheKey,
        what: &str,
        replace: bool,
        timeout: Duration,
        on_wait: &dyn Fn(&Path),
    ) -> Result<Option<KeyLock>, StoreError> {
        if !replace && self.has(key) {
            return Ok(None);
        }
        let lock = self.lock(key, what, timeout, on_wait)?;
        Ok((replace || !self.has(key)).then_some(lock))
    }

    /// Whether this store's locks keep another process out. Some cluster file systems accept
    /// `flock` and ignore it (Lustre mounted without `flock`, some NFS set-ups); there, two runs
    /// may compute the same object at once (harmless: each commit is one rename of a whole
    /// object, and a task finding the object committed keeps it), only time is lost. The store
    /// locks a probe file and `other_process` (given its path) says whether a process of its
    /// own could lock it too; false means locks work.
    pub fn locks_exclude(
        &self,
        other_process: impl FnOnce(&Path) -> std::io::Result<bool>,
    ) -> Result<bool, StoreError> {
        let dir = self.bucket(Bucket::Locks);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("probe.{}.lock", std::process::id()));
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err(&path))?;
        let other_got_it = other_process(&path).map_err(io_err(&path));
        drop(file);
        let _ = fs::remove_file(&path);
        Ok(!other_got_it?)
    }

    /// A fresh, empty temporary directory for computing `key`. Call with the key's lock held:
    /// any temporary directory already there for this key is then a dead run's and is removed.
    pub fn begin(&self, key: &CacheKey) -> Result<PendingObject, StoreError> {
        let tmp_root = self.bucket(Bucket::Tmp);
        let prefix = format!("{}.", key.hex());
        if let Ok(entries) = fs::read_dir(&tmp_root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp_root.join(format!(
            "{prefix}{}.{}",
            std::process::id(),
            PENDING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(PendingObject { dir, key: *key })
    }

    /// Validates, records and publishes what a stage wrote into `pending`. With `replace`, an
    /// existing object for the key (from `--force`) is swapped out only after the new one is
    /// complete.
    pub fn commit(
        &self,
        pending: PendingObject,
        stage: &str,
        key_inputs: &KeyInputs,
        info: CommitInfo,
    ) -> Result<ObjectMeta, StoreError> {
        let mut files = Vec::new();
        for path in walk_files(&pending.dir)? {
            formats::inspect(&path).map_err(|message| StoreError::InvalidOutput {
                path: path.clone(),
                message,
            })?;
            // Flush each file before the rename makes the object visible.
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            files.push(ObjectFile {
                path: relative(&pending.dir, &path),
                bytes,
                blake3: hash_file(&path).map_err(io_err(&path))?,
            });
        }
        let meta = ObjectMeta {
            stage: stage.to_string(),
            key: pending.key.hex(),
            key_inputs: key_inputs.clone(),
            files,
            warnings: info.warnings,
            notes: info.notes,
            seconds: info.seconds,
            created_unix: now_unix() as u64,
            device: info.device,
            metrics: info.metrics,
        };
        self.publish(
            pending,
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )?;
        Ok(meta)
    }

    /// Publishes an object brought whole from elsewhere (a remote cache): `pending` holds its
    /// files, `manifest` is its `_onenet.json` as written where it was computed. Each file must
    /// be there with the size and BLAKE3 the manifest gives, and no other file; the manifest is
    /// kept byte for byte, so the object is the same everywhere.
    pub fn adopt(&self, pending: PendingObject, manifest: &[u8]) -> Result<ObjectMeta, StoreError> {
        let invalid = |message: String| StoreError::InvalidOutput {
            path: pending.dir.clone(),
            message,
        };
        let meta: ObjectMeta = serde_json::from_slice(manifest)
            .map_err(|e| invalid(format!("unreadable {OBJECT_META}: {e}")))?;
        if meta.key != pending.key.hex() {
            return Err(invalid(format!(
                "{OBJECT_META} is for key {}, not {}",
                meta.key,
                pending.key.hex()
            )));
        }
        let present: Vec<String> = walk_files(&pending.dir)?
            .iter()
            .map(|p| relative(&pending.dir, p))
            .collect();
        let listed: Vec<String> = meta.files.iter().map(|f| f.path.clone()).collect();
        if present != listed {
            return Err(invalid(format!(
                "holds {present:?}, but {OBJECT_META} lists {listed:?}"
            )));
        }
        for file in &meta.files {
            let path = pending.dir.join(&file.path);
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            let hash = hash_file(&path).map_err(io_err(&path))?;
            if bytes != file.bytes || hash != file.blake3 {
                return Err(invalid(format!(
                    "{} differs from {OBJECT_META} ({bytes} bytes, BLAKE3 {hash}; expected {} \
                     bytes, {})",
                    file.path, file.bytes, file.blake3
                )));
            }
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        self.publish(pending, manifest)?;
        Ok(meta)
    }

    /// Writes `manifest` as the pending object's `_onenet.json`, last, and renames the object
    /// into place (swapping out an existing one only once the new one is complete).
    fn publish(&self, pending: PendingObject, manifest: &[u8]) -> Result<(), StoreError> {
        let meta_path = pending.dir.join(OBJECT_META);
        write_synced(&meta_path, manifest)?;
        sync_dir(&pending.dir)?;

        let dest = self.object_dir(&pending.key);
        if dest.exists() {
            let aside = pending.dir.with_extension("replaced");
            fs::rename(&dest, &aside).map_err(io_err(&dest))?;
            fs::rename(&pending.dir, &dest).map_err(io_err(&dest))?;
            let _ = fs::remove_dir_all(&aside);
        } else {
            fs::rename(&pending.dir, &dest).map_err(io_err(&dest))?;
        }
        sync_dir(&self.bucket(Bucket::Objects))
    }

    /// Appends one record to `runs.jsonl`, as one `write` of one whole line, under an exclusive
    /// lock on the file. A torn last line left by a killed run is repaired first, so it cannot
    /// glue onto this record; if this write itself fails (a full disk), the file is cut back to
    /// where it was, so no torn line is left behind. Returns a warning when it cut a torn line.
    pub fn append_record(&self, record: &RunRecord) -> Result<Option<String>, StoreError> {
        let path = self.runs_file();
        let log_err = |what: &'static str| {
            let path = path.clone();
            move |source| StoreError::RunLog { path, what, source }
        };
        let mut line = serde_json::to_vec(record)
            .map_err(|e| log_err("could not encode a run record")(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(log_err("could not open"))?;
        // Other onenet processes append and repair too: the repair must not cut a line another
        // process is writing. The lock is released when `file` is closed.
        file.lock().map_err(log_err("could not lock"))?;
        let repaired =
            repair_torn_tail(&file).map_err(log_err("could not repair a torn last line"))?;
        let end = file
            .metadata()
            .map_err(log_err("could not read the size"))?
            .len();
        if let Err(e) = file.write_all(&line) {
            // Undo a partial write; cutting needs no free space, so this works on a full disk.
            // If it fails too, the next append repairs the tail.
            let _ = file.set_len(end);
            return Err(log_err("could not append a run record")(e));
        }
        Ok(repaired.map(|(line, bytes)| {
            format!(
                "{} line {line}: a torn record ({bytes} bytes, left by a killed run or a full \
                 disk) was skipped and cut off",
                path.display()
            )
        }))
    }

    /// Every run record, oldest first. A line that is not a run record (a torn write, a hand
    /// edit) is skipped, with a warning naming the file and line, so one bad line does not hide
    /// the others. A missing file is an empty log.
    pub fn records(&self) -> Result<RunLog, StoreError> {
        let path = self.runs_file();
        let bytes = match File::open(&path) {
            Ok(mut file) => {
                // Best effort: with the shared lock an append is never seen half done; without
                // it (a file system without locks) a half-done last line is only skipped.
                let _ = file.lock_shared();
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map_err(io_err(&path))?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(parse_run_log(&path, &bytes))
    }

    /// The object whose key starts with `prefix` (hex, any case).
    pub fn key_by_prefix(&self, prefix: &str) -> Result<CacheKey, StoreError> {
        let wanted = prefix.to_ascii_lowercase();
        let found: Vec<CacheKey> = if wanted.is_empty() {
            Vec::new()
        } else {
            self.object_keys()
                .into_iter()
                .filter(|k| k.hex().starts_with(&wanted))
                .collect()
        };
        match found.as_slice() {
            [key] => Ok(*key),
            [] => Err(StoreError::UnknownKey(prefix.to_string())),
            many => Err(StoreError::AmbiguousKey {
                prefix: prefix.to_string(),
                count: many.len(),
            }),
        }
    }

    /// Keys of all complete objects.
    pub fn object_keys(&self) -> Vec<CacheKey> {
        let mut keys: Vec<CacheKey> = fs::read_dir(self.bucket(Bucket::Objects))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| CacheKey::from_hex(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Re-hashes every object's files against what was recorded at commit. Damaged objects are
    /// moved to `corrupt/`, so the next run recomputes them.
    pub fn verify(&self, progress: &dyn Fn(u64, u64)) -> Result<VerifyReport, StoreError> {
        let keys = self.object_keys();
        let mut report = VerifyReport::default();
        for (i, key) in keys.iter().enumerate() {
            progress(i as u64, keys.len() as u64);
            let dir = self.object_dir(key);
            let problems = match self.meta(key) {
                None => vec![format!("{OBJECT_META} is missing or unreadable")],
                Some(meta) => check_object(&dir, &meta),
            };
            report.checked += 1;
            if !problems.is_empty() {
                let corrupt = self.bucket(Bucket::Corrupt);
                fs::create_dir_all(&corrupt).map_err(io_err(&corrupt))?;
                let aside = corrupt.join(key.hex());
                let _ = fs::remove_dir_all(&aside);
                fs::rename(&dir, &aside).map_err(io_err(&dir))?;
                report.damaged.push(DamagedObject {
                    key: *key,
                    stage: self.stage_of_moved(&aside),
                    problems,
                    moved_to: aside,
                });
            }
        }
        progress(keys.len() as u64, keys.len() as u64);
        Ok(report)
    }

    fn stage_of_moved(&self, dir: &Path) -> String {
        fs::read(dir.join(OBJECT_META))
            .ok()
            .and_then(|b| serde_json::from_slice::<ObjectMeta>(&b).ok())
            .map(|m| m.stage)
            .unwrap_or_else(|| "?".into())
    }

    /// Removes objects that no `latest/` link needs (directly or as an upstream), leftover
    /// temporary directories and moved-aside corrupt objects. With `dry_run`, only reports.
    /// Removes every object not in `keep` nor upstream of one, and leftovers of killed runs.
    /// `keep` maps each root to keep to why (e.g. "pipeline.toml: captions"); the report lists
    /// what goes, by stage, key and size, and why each kept object is kept.
    pub fn gc(
        &self,
        keep: &std::collections::BTreeMap<CacheKey, Vec<String>>,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let mut why: std::collections::BTreeMap<CacheKey, Vec<String>> = keep.clone();
        let mut stack: Vec<CacheKey> = keep.keys().copied().collect();
        let mut seen: BTreeSet<CacheKey> = BTreeSet::new();
        while let Some(key) = stack.pop() {
            if seen.insert(key) {
                if let Some(meta) = self.meta(&key) {
                    for (_, hex) in &meta.key_inputs.upstream {
                        if let Some(up) = CacheKey::from_hex(hex) {
                            let entry = why.entry(up).or_default();
                            let reason = format!("upstream of {} {}", meta.stage, key.short());
                            if entry.len() < 3 && !entry.contains(&reason) {
                                entry.push(reason);
                            }
                            stack.push(up);
                        }
                    }
                }
            }
        }
        let keep: BTreeSet<CacheKey> = why.keys().copied().collect();
        let mut report = GcReport {
            kept: keep.iter().filter(|k| self.has(k)).count(),
            ..GcReport::default()
        };
        for (key, reasons) in &why {
            if let Some(meta) = self.meta(key) {
                report.kept_objects.push(GcObject {
                    stage: meta.stage,
                    key: key.hex(),
                    bytes: dir_bytes(&self.object_dir(key)),
                    reasons: reasons.clone(),
                });
            }
        }
        let mut doomed: Vec<PathBuf> = Vec::new();
        for key in self.object_keys().into_iter().filter(|k| !keep.contains(k)) {
            let dir = self.object_dir(&key);
            report.removed_objects.push(GcObject {
                stage: self.meta(&key).map(|m| m.stage).unwrap_or_default(),
                key: key.hex(),
                bytes: dir_bytes(&dir),
                reasons: Vec::new(),
            });
            doomed.push(dir);
        }
        report.objects_removed = doomed.len();
        for sub in [Bucket::Tmp, Bucket::Scratch, Bucket::Corrupt] {
            if let Ok(entries) = fs::read_dir(self.bucket(sub)) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // A temporary or scratch directory whose key is locked belongs to a live run.
                    let live = sub != Bucket::Corrupt
                        && name
                            .split('.')
                            .next()
                            .and_then(CacheKey::from_hex)
                            .is_some_and(|k| self.is_locked(&k));
                    if !live {
                        doomed.push(entry.path());
                        report.leftovers_removed += 1;
                    }
                }
            }
        }
        // A job's logs go with its object (kept while a run is computing it).
        if let Ok(entries) = fs::read_dir(self.bucket(Bucket::Logs)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(key) = CacheKey::from_hex(&name) {
                    if !keep.contains(&key) && !self.is_locked(&key) {
                        doomed.push(entry.path());
                        report.leftovers_removed += 1;
                    }
                }
            }
        }
        for path in &doomed {
            report.bytes += dir_bytes(path);
            if !dry_run {
                fs::remove_dir_all(path).map_err(io_err(path))?;
            }
        }
        Ok(report)
    }

    fn is_locked(&self, key: &CacheKey) -> bool {
        let path = self
            .bucket(Bucket::Locks)
            .join(format!("{}.lock", key.hex()));
        match File::open(&path) {
            Ok(f) => matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

/// The run records read from `runs.jsonl`, with a warning for each line skipped.
#[derive(Debug, Default)]
pub struct RunLog {
    pub records: Vec<RunRecord>,
    /// E.g. "artifacts/runs.jsonl line 7: not a run record (…), skipped".
    pub warnings: Vec<String>,
}

/// Parses the bytes of `runs.jsonl` line by line (bytes, not text, so one line of invalid UTF-8
/// costs only that line).
fn parse_run_log(path: &Path, bytes: &[u8]) -> RunLog {
    let mut log = RunLog::default();
    let mut lines = bytes.split(|&b| b == b'\n').peekable();
    let mut number = 0;
    while let Some(line) = lines.next() {
        number += 1;
        // The piece after the final newline is empty unless the last line is torn.
        let last = lines.peek().is_none();
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<RunRecord>(line) {
            Ok(record) => log.records.push(record),
            Err(e) => log.warnings.push(format!(
                "{} line {number}: {} ({e}), skipped",
                path.display(),
                if last {
                    "torn last line, not a run record"
                } else {
                    "not a run record"
                }
            )),
        }
    }
    log
}

/// Makes a file that the caller holds locked end with a newline: a last line without one is the
/// fragment of a write that was cut short. If it parses as a whole record, only the newline was
/// lost and it is completed; otherwise the file is cut back to just after the last newline (or to
/// empty), which never removes a whole line.
fn repair_torn_tail(file: &File) -> std::io::Result<Option<(u64, u64)>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    // Scan back in chunks for the last newline: the fragment is usually short, but garbage
    // (e.g. zeros after a crash) need not be.
    const CHUNK: u64 = 64 * 1024;
    let mut cut = 0;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            cut = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    // A record is far smaller than this; a larger tail is garbage and is not worth reading.
    const MAX_RECORD: u64 = 1 << 20;
    if len - cut <= MAX_RECORD {
        let mut tail = vec![0u8; (len - cut) as usize];
        file.read_exact_at(&mut tail, cut)?;
        if serde_json::from_slice::<RunRecord>(&tail).is_ok() {
            // The file is open for appending, so this lands at the end.
            let mut file = file;
            return file.write_all(b"\n").map(|()| None);
        }
    }
    // Its line number, for the warning: rare, so reading the whole lines again is fine.
    let mut whole = vec![0u8; cut as usize];
    file.read_exact_at(&mut whole, 0)?;
    let line = whole.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    file.set_len(cut)?;
    Ok(Some((line, len - cut)))
}

/// Problems with one object's files, compared with its recorded hashes.
fn check_object(dir: &Path, meta: &ObjectMeta) -> Vec<String> {
    let mut problems = Vec::new();
    for file in &meta.files {
        let path = dir.join(&file.path);
        match hash_file(&path) {
            Err(e) => problems.push(format!("{}: {e}", file.path)),
            Ok(hash) if hash != file.blake3 => problems.push(format!(
                "{}: content differs from what was written",
                file.path
            )),
            Ok(_) => {}
        }
    }
    problems
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub damaged: Vec<DamagedObject>,
}

#[derive(Debug)]
pub struct DamagedObject {
    pub key: CacheKey,
    pub stage: String,
    pub problems: Vec<String>,
    pub moved_to: PathBuf,
}

/// What `gc` removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub kept: usize,
    pub objects_removed: usize,
    pub leftovers_removed: usize,
    pub bytes: u64,
    /// The objects removed (or that would be), by stage, key and size.
    pub removed_objects: Vec<GcObject>,
    /// The objects kept, with why.
    pub kept_objects: Vec<GcObject>,
}

/// One object `gc` removed or kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcObject {
    pub stage: String,
    pub key: String,
    pub bytes: u64,
    /// Why it is kept (empty for removed objects).
    pub reasons: Vec<String>,
}

/// Regular files under `dir`, sorted, excluding the object's own metadata.
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(io_err(&path))?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() && path.file_name() != Some(OBJECT_META.as_ref()) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn dir_bytes(path: &Path) -> u64 {
    walk_files(path)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
        + fs::metadata(path.join(OBJECT_META))
            .map(|m| m.len())
            .unwrap_or(0)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Every `*.json` file directly in `dir` that parses as a `T` (others, and temporary files, are
/// skipped: these are bookkeeping files that a reader must not fail on).
fn read_json_files<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".json") && !name.starts_with('.')
                })
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Per-file summary of an object for `show`: (relative path, bytes, summary or error).
pub fn describe_object(
    dir: &Path,
    meta: &ObjectMeta,
) -> Vec<(String, u64, Result<formats::FileSummary, String>)> {
    meta.files
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                f.bytes,
                formats::inspect(&dir.join(&f.path)),
            )
        })
        .collect()
}

/// A lock file, created if missing (its content is never read or cut).
fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KEY_FORMAT;
    use std::collections::BTreeMap;

    fn key_inputs(upstream: Vec<(String, String)>) -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT,
            kind: "k".into(),
            version: 1,
            params: BTreeMap::new(),
            upstream,
            sources: BTreeMap::new(),
            environment: BTreeMap::new(),
            recorded: BTreeMap::new(),
        }
    }

    fn commit(store: &ArtifactStore, stage: &str, inputs: &KeyInputs, body: &[u8]) -> CacheKey {
        let key = inputs.key();
        let pending = store.begin(&key).unwrap();
        fs::write(pending.dir.join("out.txt"), body).unwrap();
        store
            .commit(
                pending,
                stage,
                inputs,
                CommitInfo {
                    seconds: 0.1,
                    ..CommitInfo::default()
                },
            )
            .unwrap();
        store.set_latest(stage, &key).unwrap();
        key
    }

    #[test]
    fn commit_publishes_a_complete_object_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let inputs = key_inputs(vec![]);
        let key = inputs.key();
        assert!(!store.has(&key));
        let pending = store.begin(&key).unwrap();
        fs::write(pending.dir.join("out.txt"), b"hello").unwrap();
        assert!(!store.has(&key), "a pending object is not visible");
        store
            .commit(
                pending,
                "s",
                &inputs,
                CommitInfo {
                    warnings: vec!["w".into()],
                    seconds: 0.5,
                    ..CommitInfo::default()
                },
            )
            .unwrap();
        store.set_latest("s", &key).unwrap();
        assert!(store.has(&key));
        assert_eq!(store.latest_key("s"), Some(key));
        let text = fs::read_to_string(store.latest_link("s").join("out.txt")).unwrap();
        assert_eq!(text, "hello");
        assert_eq!(store.meta(&key).unwrap().warnings, ["w"]);
    }

    #[test]
    fn invalid_parquet_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let inputs = key_inputs(vec![]);
        let pending = store.begin(&inputs.key()).unwrap();
        fs::write(pending.dir.join("t.parquet"), b"garbage").unwrap();
        let err = store
            .commit(pending, "s", &inputs, CommitInfo::default())
            .unwrap_err();
        assert!(err.to_string().contains("t.parquet"), "{err}");
        assert!(!store.has(&inputs.key()));
    }

    #[test]
    fn verify_moves_damaged_objects_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let key = commit(&store, "s", &key_inputs(vec![]), b"abc");
        assert!(store.verify(&|_, _| {}).unwrap().damaged.is_empty());
        fs::write(store.object_dir(&key).join("out.txt"), b"abd").unwrap();
        let report = store.verify(&|_, _| {}).unwrap();
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.damaged[0].stage, "s");
        assert!(!store.has(&key));
    }

    #[test]
    fn gc_keeps_latest_and_its_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let up = commit(&store, "up", &key_inputs(vec![]), b"1");
        let mut other = key_inputs(vec![]);
        other.version = 2;
        let old_up = commit(&store, "up2", &other, b"2");
        // `up2` then moves on, so its first object is garbage.
        let mut newer = key_inputs(vec![]);
        newer.version = 3;
        commit(&store, "up2", &newer, b"3");
        let down = commit(
            &store,
            "down",
            &key_inputs(vec![("up".into(), up.hex())]),
            b"4",
        );
        // Point `up` somewhere else: the old `up` object stays because `down` needs it.
        let mut up_new = key_inputs(vec![]);
        up_new.version = 9;
        commit(&store, "up", &up_new, b"5");

        // What the engine keeps by default: every view's newest outputs.
        let keep: std::collections::BTreeMap<CacheKey, Vec<String>> = store
            .view_keys()
            .into_iter()
            .map(|(view, stage, key)| (key, vec![format!("{view}/{stage}")]))
            .collect();
        let dry = store.gc(&keep, true).unwrap();
        assert_eq!(dry.objects_removed, 1);
        assert!(dry.bytes > 0);
        assert_eq!(dry.removed_objects[0].key, old_up.hex());
        assert_eq!(dry.removed_objects[0].stage, "up2");
        let why = |key: &CacheKey| {
            dry.kept_objects
                .iter()
                .find(|o| o.key == key.hex())
                .map(|o| o.reasons.clone())
                .unwrap_or_default()
        };
        assert_eq!(why(&down), ["latest/down"]);
        assert_eq!(why(&up), [format!("upstream of down {}", down.short())]);
        assert!(store.has(&old_up), "dry run removes nothing");
        store.gc(&keep, false).unwrap();
        assert!(!store.has(&old_up));
        assert!(store.has(&up) && store.has(&down));
    }

    #[test]
    fn a_second_locker_waits_and_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let key = key_inputs(vec![]).key();
        let held = store
            .lock(&key, "s", Duration::from_secs(1), &|_| {})
            .unwrap();
        let told = std::sync::atomic::AtomicBool::new(false);
        let err = store
            .lock(&key, "stage s", Duration::from_millis(200), &|_| {
                told.store(true, Ordering::SeqCst)
            })
            .err()
            .unwrap();
        assert!(told.load(Ordering::SeqCst));
        assert!(err
            .to_string()
            .contains("waiting for another onenet process computing stage s"));
        drop(held);
        assert!(store
            .lock(&key, "s", Duration::from_secs(1), &|_| {})
            .is_ok());
    }

    fn record(run_id: &str) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            time_unix: 1.5,
            stage: "s".into(),
            kind: "k".into(),
            key: "00".into(),
            action: "computed".into(),
            seconds: 0.25,
            inputs: vec![("up".into(), "11".into())],
            warnings: 0,
            error: None,
        }
    }

    /// The run ids of every line of `runs.jsonl`, asserting each is a whole record.
    fn whole_lines(store: &ArtifactStore) -> Vec<String> {
        let text = fs::read_to_string(store.runs_file()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| {
                serde_json::from_str::<RunRecord>(l)
                    .unwrap_or_else(|e| panic!("{l:?}: {e}"))
                    .run_id
            })
            .collect()
    }

    #[test]
    fn a_torn_last_record_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        store.append_record(&record("a")).unwrap();
        store.append_record(&record("b")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.runs_file())
            .unwrap();
        f.write_all(br#"{"run_id":"x","sta"#).unwrap();
        let warning = store.append_record(&record("c")).unwrap();
        assert!(
            warning
                .as_deref()
                .is_some_and(|w| w.contains("runs.jsonl line 3: a torn record (18 bytes")),
            "{warning:?}"
        );
        assert_eq!(whole_lines(&store), ["a", "b", "c"]);
        let log = store.records().unwrap();
        assert!(log.warnings.is_empty(), "{:?}", log.warnings);
        assert_eq!(log.records.last().unwrap().run_id, "c");
        assert_eq!(store.append_record(&record("d")).unwrap(), None);
    }

    #[test]
    fn a_log_without_any_newline_is_emptied_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        fs::write(store.runs_file(), b"\0\0\0{\"run_id\":").unwrap();
        store.append_record(&record("a")).unwrap();
        assert_eq!(whole_lines(&store), ["a"]);
    }

    #[test]
    fn a_whole_record_missing_only_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        store.append_record(&record("a")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.runs_file())
            .unwrap();
        f.write_all(&serde_json::to_vec(&record("b")).unwrap())
            .unwrap();
        store.append_record(&record("c")).unwrap();
        assert_eq!(whole_lines(&store), ["a", "b", "c"]);
    }

    #[test]
    fn reading_skips_a_malformed_line_and_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        store.append_record(&record("a")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.runs_file())
            .unwrap();
        f.write_all(b"{\"run_id\":\"x\",\"sta\n\xff\xfe\n").unwrap();
        store.append_record(&record("b")).unwrap();
        let log = store.records().unwrap();
        let ids: Vec<&str> = log.records.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let file = store.runs_file().display().to_string();
        assert_eq!(log.warnings.len(), 2, "{:?}", log.warnings);
        assert!(
            log.warnings[0].starts_with(&format!("{file} line 2: not a run record (")),
            "{:?}",
            log.warnings
        );
        assert!(
            log.warnings[0].ends_with("), skipped"),
            "{:?}",
            log.warnings
        );
        assert!(
            log.warnings[1].starts_with(&format!("{file} line 3: ")),
            "{:?}",
            log.warnings
        );
    }

    #[test]
    fn reading_a_missing_log_gives_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let log = store.records().unwrap();
        assert!(log.records.is_empty() && log.warnings.is_empty());
    }

    #[test]
    fn locks_exclude_a_second_opener_and_report_one_that_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        // A second open file description is kept out by flock, as another process is.
        let second = |path: &Path| {
            let file = OpenOptions::new().write(true).open(path)?;
            Ok(file.try_lock().is_ok())
        };
        assert!(store.locks_exclude(second).unwrap());
        // A file system that ignores locks lets the other in.
        assert!(!store.locks_exclude(|_| Ok(true)).unwrap());
        // The probe leaves nothing behind.
        let left: Vec<_> = fs::read_dir(store.bucket(Bucket::Locks)).unwrap().collect();
        assert!(left.is_empty());
    }
}
