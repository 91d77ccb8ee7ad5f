//! The contract between the onenet engine and its stages: what a stage kind declares (params,
//! inputs, the files it reads, where it computes), the context it runs in, the one error type it
//! returns, and the protocol by which the engine runs a stage in the libtorch worker.
//!
//! A stage is a plain function of its upstream outputs and its params that writes files into an
//! empty directory. Stages know nothing about caching, keys or the artifact store: the engine
//! decides when a stage runs, gives it a fresh directory and commits what it wrote. Each kind
//! carries a `version` that must be bumped whenever its logic changes what it writes, so that
//! cached outputs of the old logic stop matching. The engine depends on this crate, never on a
//! stage's code; the kinds themselves live in `onenet-stages` (plain Rust) and `onenet-torch`
//! (libtorch).

pub mod error;
pub mod files;
pub mod params;
pub mod worker;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::StageError;
pub use params::{
    Effect, ParamDefault, ParamSpec, ParamType, ParamValue, Params, PathKind, RawValue,
};

/// One upstream stage's committed output, as a stage sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageInput {
    /// The upstream stage's name in `pipeline.toml`.
    pub name: String,
    /// The upstream stage's kind (e.g. `demo_data`).
    pub kind: String,
    /// The directory holding its outputs (read-only by convention).
    pub dir: PathBuf,
}

/// A stage upstream of the running one (directly or not), as the engine planned and committed it.
///
/// This is history, not content: the key of the running stage covers every upstream key, but not
/// how long each upstream took or whether this run computed it. A stage that describes the
/// pipeline (the `report` kind) reads it; other stages ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    /// The stage's name in `pipeline.toml`.
    pub name: String,
    pub kind: String,
    /// Its cache key, hex.
    pub key: String,
    /// The names of the stages it reads.
    pub inputs: Vec<String>,
    /// Its params as `name = value` (every default filled in), sorted by name.
    pub params: Vec<String>,
    /// Seconds its computation took when its output was made.
    pub seconds: f64,
    /// When its output was committed (Unix seconds).
    pub created_unix: u64,
    /// Whether the current run computed it (false: reused from the store).
    pub computed_in_run: bool,
}

/// Reports progress of long work; the engine draws it as a progress bar.
pub trait Progress: Sync {
    /// Starts a new phase of `len` units described by `what` (e.g. "hashing images").
    fn start(&self, len: u64, what: &str);
    /// Advances the current phase by `n` units.
    fn inc(&self, n: u64);
    /// Replaces the phase's description (e.g. to show the current loss).
    fn set_message(&self, _message: &str) {}
}

/// A `Progress` that draws nothing (tests, quiet runs).
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _len: u64, _what: &str) {}
    fn inc(&self, _n: u64) {}
}

/// What a stage is asked to do: its kind, params, inputs and folders. Serialisable, because it
/// is also exactly the job the engine hands the libtorch worker (on its stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageJob {
    /// The stage's kind.
    pub kind: String,
    /// The stage's name in `pipeline.toml` (for messages).
    pub name: String,
    /// Validated params, every default filled in.
    pub params: Params,
    /// Upstream outputs, in the order `inputs` lists them.
    pub inputs: Vec<StageInput>,
    /// The directory of `pipeline.toml`: relative paths in params resolve against it.
    pub base_dir: PathBuf,
    /// An empty directory to write outputs into.
    pub out_dir: PathBuf,
    /// A directory private to this stage and key that survives a killed run (and is removed
    /// once the output is committed): for checkpoints that let a long stage resume.
    pub scratch_dir: PathBuf,
    /// The newest earlier output of this stage (under any key), if any: a stage may reuse the
    /// parts of it that it can tell are still valid (e.g. per-image features by content hash).
    /// None when the run forces the stage.
    pub previous: Option<PathBuf>,
    /// Every stage upstream of this one, in execution order.
    #[serde(default)]
    pub lineage: Vec<UpstreamRecord>,
    /// For a sharded stage, the content hashes of the items this job computes (one shard); None
    /// for the whole stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Vec<String>>,
    /// The folder on this machine that the file names in its upstream tables are relative to
    /// (the dataset folder of the `images` stage upstream: its `root` param, or a `demo_data`
    /// output), resolved by the engine from the pipeline's params; None when no stage upstream
    /// names files. Open such files through [`StageJob::file_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_root: Option<PathBuf>,
}

impl StageJob {
    /// A job with no earlier output and no lineage, whose scratch directory is the output
    /// directory: what tests and one-off callers need. The engine fills every field itself.
    pub fn new(
        kind: &str,
        name: &str,
        params: Params,
        inputs: Vec<StageInput>,
        base_dir: &Path,
        out_dir: &Path,
    ) -> StageJob {
        StageJob {
            kind: kind.to_string(),
            name: name.to_string(),
            params,
            inputs,
            base_dir: base_dir.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            scratch_dir: out_dir.to_path_buf(),
            previous: None,
            lineage: Vec::new(),
            shard: None,
            files_root: None,
        }
    }

    /// The path on this machine of a file an upstream table names `name` (relative to its
    /// root): the one place a stage turns a table's file name into a path.
    pub fn file_path(&self, name: &str) -> Result<PathBuf, StageError> {
        let root = self.files_root.as_deref().ok_or_else(|| {
            StageError::Input(format!(
                "the tables upstream name the file {name:?}, but no stage upstream gives the \
                 folder it is in (an `images` stage)"
            ))
        })?;
        files::resolve(root, name)
    }
}

/// Everything a stage's `run` gets: its job, and where to report progress. Reads as the job
/// itself (`&ctx.params`, `&ctx.out_dir`, …).
#[derive(Clone, Copy)]
pub struct StageContext<'a> {
    pub job: &'a StageJob,
    pub progress: &'a dyn Progress,
}

impl<'a> StageContext<'a> {
    pub fn new(job: &'a StageJob, progress: &'a dyn Progress) -> Self {
        StageContext { job, progress }
    }
}

impl std::ops::Deref for StageContext<'_> {
    type Target = StageJob;

    fn deref(&self) -> &StageJob {
        self.job
    }
}

/// What a stage says about a successful run besides its files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StageReport {
    /// Problems the user should see (skipped lines, missing images, ...), one line each.
    pub warnings: Vec<String>,
    /// Short facts about the output ("40460 captions, 8092 images, vocabulary 8918").
    pub notes: Vec<String>,
    /// The device a libtorch stage ran on (`cpu`, `cuda`), as the worker reports it; None for
    /// plain Rust stages. The engine refuses to commit an output whose key names another device.
    pub device: Option<String>,
    /// Headline numbers for comparing runs (`onenet exp show`), e.g. `bleu4_beam` → 0.61: a
    /// name of lower-case letters, digits and `_`, each a column of the experiments table.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// How many upstream stages a kind reads, and of which kinds.
#[derive(Debug, Clone, Copy)]
pub struct InputRule {
    /// Upstream kinds accepted; empty means none may be given.
    pub kinds: &'static [&'static str],
    pub min: usize,
    pub max: usize,
}

/// A file outside the artifact store that a stage reads, and the root it belongs to.
///
/// The cache key holds its path relative to that root (`/`-separated) and its content hash, never
/// the absolute path: a project moved, copied or cloned elsewhere keeps every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path param whose file or folder holds it (e.g. `root`, `weights`), or None for a file
    /// named relative to the pipeline file's folder.
    pub param: Option<&'static str>,
    /// Path relative to the param's folder, `/`-separated; empty when the param names this file.
    pub rel: String,
    /// Where to read it.
    pub path: PathBuf,
}

impl Source {
    /// The file a file-valued path param names.
    pub fn param_file(param: &'static str, path: PathBuf) -> Source {
        Source {
            param: Some(param),
            rel: String::new(),
            path,
        }
    }

    /// A file inside the folder a folder-valued path param names.
    pub fn in_param_folder(param: &'static str, folder: &Path, path: PathBuf) -> Source {
        Source {
            param: Some(param),
            rel: relative_slash_path(folder, &path),
            path,
        }
    }

    /// How the file is named in a cache key: `param` for the file a param names,
    /// `param/rel/path` for a file in a param's folder, `./rel/path` for one relative to the
    /// pipeline file.
    pub fn label(&self) -> String {
        match (self.param, self.rel.as_str()) {
            (Some(param), "") => param.to_string(),
            (Some(param), rel) => format!("{param}/{rel}"),
            (None, rel) => format!("./{rel}"),
        }
    }
}

/// `path` relative to `root`, `/`-separated (the whole path when it is not under `root`).
fn relative_slash_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Lists the external files a stage reads: (params, inputs, base dir) → sources.
pub type SourcesFn = fn(&Params, &[StageInput], &Path) -> Result<Vec<Source>, StageError>;

/// Where a stage's computation runs, as its spec declares it; the libtorch worker's runtime
/// module turns it into a device, and the engine keys the stage by that device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceUse {
    /// Plain Rust: no libtorch, no device in the key.
    NoLibtorch,
    /// libtorch on the CPU by design (its result must not depend on the machine's GPU).
    Cpu,
    /// libtorch on the best device the worker finds (CUDA when it can use one, else the CPU).
    Best,
}

impl DeviceUse {
    /// Whether the stage links libtorch (and so its libtorch version enters the key).
    pub fn uses_libtorch(self) -> bool {
        self != DeviceUse::NoLibtorch
    }
}

/// The folder the file names in a kind's tables are relative to, given its params, inputs and
/// the pipeline file's folder (absolute; need not exist).
pub type FilesRootFn = fn(&Params, &[StageInput], &Path) -> Result<PathBuf, StageError>;

/// Runs a stage: writes its outputs into `&ctx.out_dir`.
pub type RunFn = fn(&StageContext) -> Result<StageReport, StageError>;

/// A built-in stage kind.
pub struct StageKind {
    pub name: &'static str,
    /// Bumped whenever the logic changes what the stage writes.
    pub version: u32,
    /// One line for `--help` and `dag`.
    pub about: &'static str,
    pub params: &'static [ParamSpec],
    pub inputs: InputRule,
    /// Files outside the artifact store that the stage reads, given its params and inputs: the
    /// engine content-hashes them into the cache key. Files under an upstream output need not be
    /// listed: the upstream key already covers them.
    pub sources: SourcesFn,
    /// Where it computes: decides the device part of its key.
    pub device: DeviceUse,
    pub run: RunFn,
    /// How it splits into shards, if it is data-parallel (None: it runs whole).
    pub shards: Option<&'static ShardSpec>,
    /// For a kind whose tables name files (the `images` kind): the folder they are relative to.
    /// The engine resolves it on each machine and hands it to every stage downstream as
    /// `StageJob::files_root`. None: the kind's tables name no files of their own (a stage
    /// downstream of one that does inherits that one's root).
    pub files_root: Option<FilesRootFn>,
}

/// How a data-parallel stage splits its work into shards, each a cached object of its own keyed
/// by the content hashes of its items, and puts the shards' outputs together without computing
/// anything. The engine decides the shards and where they run (one after another here, or as a
/// cluster's array job); `run` computes one shard when `StageJob::shard` is set.
pub struct ShardSpec {
    /// The int param giving the number of items per shard; 0 (or absent) runs the stage whole.
    pub param: &'static str,
    /// The items the stage works on, each with its content hash, read from its inputs.
    pub items: fn(&Params, &[StageInput]) -> Result<Vec<ShardItem>, StageError>,
    /// Writes the stage's whole output into `ctx.out_dir` from the shards' outputs (one folder
    /// per shard, in shard order), computing nothing.
    pub merge: fn(&StageContext, &[PathBuf]) -> Result<StageReport, StageError>,
}

/// One item of a sharded stage: what it is (for messages) and the BLAKE3 of its content, which
/// decides its shard and enters that shard's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardItem {
    pub id: String,
    pub hash: String,
}

impl std::fmt::Debug for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageKind")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The upstream input of kind `kind` (a stage's inputs are told apart by kind).
pub fn input_of_kind<'a>(
    inputs: &'a [StageInput],
    kind: &str,
) -> Result<&'a StageInput, StageError> {
    inputs.iter().find(|i| i.kind == kind).ok_or_else(|| {
        StageError::Input(format!(
            "needs an input of kind `{kind}`; add one to `inputs`"
        ))
    })
}

/// BLAKE3 hex of a file's content, read in chunks (weights files can be large).
pub fn hash_file(path: &Path) -> Result<String, StageError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| StageError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The libtorch version the binary was linked against.
pub fn libtorch_version() -> String {
    // tch exposes no runtime version call; build.rs reads the `build-version` file of the libtorch
    // it linked against (the same file torch-sys checks, so a mismatch fails the build anyway).
    option_env!("ONENET_LIBTORCH_VERSION")
        .unwrap_or("unknown")
        .to_string()
}
