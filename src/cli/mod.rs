//! The parts of the `onenet` command line that its commands share: arguments, output, renderers,
//! progress, and opening the pipeline.

pub mod args;
pub mod out;
pub mod progress;
pub mod render;
pub mod tables;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use onenet::config::{self, ConfigError, Pipeline};
use onenet::engine::{Engine, StageStatus};
use onenet::plan;
use onenet::remote::Remote;
use onenet::store::ArtifactStore;

use args::GlobalArgs;
use out::diag;

/// The pipeline file, checked; one clear line when there is none.
pub fn load_pipeline(global: &GlobalArgs) -> Result<Pipeline> {
    match config::load(&global.pipeline, onenet_stages::kinds()) {
        Ok(pipeline) => Ok(pipeline),
        Err(ConfigError::Io { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
            let place = if path.is_absolute() {
                String::new()
            } else {
                let here = std::env::current_dir().unwrap_or_default();
                format!(" in {}", here.display())
            };
            let hint = if global.default_pipeline() {
                " (give one with --pipeline FILE)"
            } else {
                ""
            };
            bail!("no pipeline file {}{place}{hint}", path.display())
        }
        Err(e) => Err(e.into()),
    }
}

/// The pipeline, with `--set` overrides, bound to its store and its remote cache.
pub fn open_engine(global: &GlobalArgs, set: &[String]) -> Result<Engine> {
    let mut pipeline = load_pipeline(global)?;
    pipeline.apply_overrides(set)?;
    let remote = open_remote(global, &pipeline)?;
    Ok(Engine::open(pipeline)?.with_remote(remote))
}

/// The remote cache: `ONENET_REMOTE` if set (empty: none), else the pipeline's `[store] remote`;
/// none with `--offline`.
pub fn open_remote(global: &GlobalArgs, pipeline: &Pipeline) -> Result<Option<Remote>> {
    if global.offline {
        return Ok(None);
    }
    let url = match std::env::var("ONENET_REMOTE") {
        Ok(url) if url.is_empty() => None,
        Ok(url) => Some(url),
        Err(_) => pipeline.remote.clone(),
    };
    match url {
        Some(url) => Remote::new(&url)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{e} (from ONENET_REMOTE or [store] remote)")),
        None => Ok(None),
    }
}

/// The pipeline's store alone.
pub fn open_store(global: &GlobalArgs) -> Result<ArtifactStore> {
    Ok(ArtifactStore::open(&load_pipeline(global)?.store_dir)?)
}

/// A stage's state against the current pipeline, or why it is not known. Commands that read
/// outputs (`show`) pass an engine made `without_worker`: the key of a stage that depends on the
/// device a GPU-capable stage runs on is then only known when the store has the worker's answer
/// cached (any earlier `run` or `status` leaves it).
pub fn current_status(engine: &Engine, stage: &str) -> Result<StageStatus, String> {
    let selection = plan::select(&engine.pipeline, &[stage.to_string()])?;
    // A stage whose key cannot be computed here is `unknown`, with the reason.
    let (statuses, _) = engine.status_each(&selection);
    statuses
        .into_iter()
        .find(|s| s.name == stage)
        .ok_or_else(|| "stage missing from its own plan".to_string())
}

/// Where `--version` keeps the worker's answer about the device when there is no store at hand:
/// `$ONENET_CACHE`, else `$XDG_CACHE_HOME/onenet`, else `~/.cache/onenet` (where `make setup`
/// puts libtorch), else the temporary folder.
pub fn device_cache_file() -> PathBuf {
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env_dir("ONENET_CACHE")
        .or_else(|| env_dir("XDG_CACHE_HOME").map(|d| d.join("onenet")))
        .or_else(|| env_dir("HOME").map(|d| d.join(".cache/onenet")))
        .filter(|d| std::fs::create_dir_all(d).is_ok())
        .unwrap_or_else(std::env::temp_dir);
    dir.join("device-cache.json")
}

/// The device a GPU-capable stage would run on here, or why it is not known.
pub fn device_here() -> Result<String, String> {
    let worker = onenet_stages::worker::worker_path();
    if !Path::new(&worker).is_file() {
        return Err(format!("libtorch worker {} not found", worker.display()));
    }
    onenet::environment::best_device(&device_cache_file()).map_err(|e| e.message)
}

/// An error and its causes on one line, each said once: a cause whose text its parent already
/// quotes (`pipeline.toml: No such file…` over `No such file…`) is left out.
pub fn error_message(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// A command line naming a stage or param that does not exist, or malformed: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error from any error that says what is wrong with the command line.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// Whether `e` is a usage error: ours, or a malformed `--set`.
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<UsageError>()
            || c.downcast_ref::<onenet::config::ConfigError>()
                .is_some_and(onenet::config::ConfigError::is_usage)
    })
}

/// With the Slurm executor, the store is shared between nodes, often on a cluster file system:
/// says so when its locks do not keep a second process out (another `onenet` process tries to
/// take a lock this one holds). Outputs stay whole without locks; only duplicate work is lost.
pub fn check_shared_locks(engine: &Engine) {
    if engine.pipeline.executor.kind != onenet::config::ExecutorKind::Slurm {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let probe = |path: &std::path::Path| {
        let status = std::process::Command::new(&exe)
            .arg("lock-probe")
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        match status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(std::io::Error::other(format!(
                "lock probe ended with {status}"
            ))),
        }
    };
    match engine.store.locks_exclude(probe) {
        Ok(true) => {}
        Ok(false) => diag!(
            "warning: the store's file system ({}) does not honour file locks between \
             processes (flock): two runs may compute the same stage or shard at once. Outputs \
             stay whole (each is committed by one rename), only time is lost; mount it with \
             locks (e.g. Lustre's `flock` option) to avoid that.",
            engine.store.root().display()
        ),
        Err(e) => diag!("warning: could not check the store's file locks: {e}"),
    }
}
