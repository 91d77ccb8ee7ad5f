//! The part of a cache key that comes from the machine: the libtorch version and the device a
//! libtorch stage runs on.
//!
//! The engine never loads libtorch, so it does not guess the device: it asks the libtorch worker
//! (`onenet-torch device`), whose runtime module is the one place that decides it, and keeps the
//! answer in the store beside the stat cache, keyed by everything that can change it (host name,
//! `CUDA_VISIBLE_DEVICES`, the worker binary's stamp, whether an NVIDIA device node exists). A
//! no-op `status` then costs a few `stat` calls, not a libtorch start. Should the cached answer
//! ever be wrong, the worker reports the device it actually ran on with each result and the
//! engine refuses to commit the output (`Engine` drops this cache then).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use onenet_contract::DeviceUse;
use serde::{Deserialize, Serialize};

/// Failure to learn the device from the worker.
#[derive(Debug, thiserror::Error)]
#[error("asking the libtorch worker {} which device it uses: {message}", worker.display())]
pub struct DeviceError {
    pub worker: PathBuf,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedDevice {
    fingerprint: String,
    device: String,
}

/// What can change the worker's answer, as one string.
fn fingerprint(worker: &Path) -> String {
    let stamp = std::fs::metadata(worker)
        .map(|m| format!("{}:{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        .unwrap_or_else(|_| "absent".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let nvidia = Path::new("/dev/nvidiactl").exists();
    format!(
        "host={}|worker={}|{stamp}|cuda_visible={visible:?}|nvidia={nvidia}",
        host.trim(),
        worker.display()
    )
}

/// The device a `DeviceUse::Best` stage runs on here (`cpu` or `cuda`), from the cache at
/// `cache_file` or from the worker.
pub fn best_device(cache_file: &Path) -> Result<String, DeviceError> {
    let worker = onenet_contract::worker::worker_path();
    let fingerprint = fingerprint(&worker);
    let cached: Option<CachedDevice> = std::fs::read(cache_file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(cached) = cached.filter(|c| c.fingerprint == fingerprint) {
        return Ok(cached.device);
    }
    let err = |message: String| DeviceError {
        worker: worker.clone(),
        message,
    };
    let out = Command::new(&worker)
        .arg("device")
        .output()
        .map_err(|e| err(format!("{e} (it is built with `cargo build`)")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    #[derive(Deserialize)]
    struct Answer {
        device: String,
    }
    let answer: Answer =
        serde_json::from_slice(&out.stdout).map_err(|e| err(format!("unexpected answer ({e})")))?;
    let entry = CachedDevice {
        fingerprint,
        device: answer.device.clone(),
    };
    // Only a cache: failing to write it costs asking again next time.
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        let tmp = cache_file.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, cache_file);
        }
    }
    Ok(answer.device)
}

/// The cached answer, if it is still valid here; never starts the worker.
pub fn cached_best_device(cache_file: &Path) -> Option<String> {
    let worker = onenet_contract::worker::worker_path();
    let fingerprint = fingerprint(&worker);
    let cached: CachedDevice = serde_json::from_slice(&std::fs::read(cache_file).ok()?).ok()?;
    (cached.fingerprint == fingerprint).then_some(cached.device)
}

/// Forgets the cached answer (after the worker reported another device than it gave).
pub fn forget(cache_file: &Path) {
    let _ = std::fs::remove_file(cache_file);
}

/// The environment entries of a stage's key: none for plain Rust stages; the libtorch version
/// and `device` for libtorch stages, where `best` gives the device of a `Best` stage.
pub fn for_stage(
    device_use: DeviceUse,
    best: impl FnOnce() -> Result<String, DeviceError>,
) -> Result<BTreeMap<String, String>, DeviceError> {
    let device = match device_use {
        DeviceUse::NoLibtorch => return Ok(BTreeMap::new()),
        DeviceUse::Cpu => "cpu".to_string(),
        DeviceUse::Best => best()?,
    };
    Ok([
        ("libtorch".to_string(), onenet_contract::libtorch_version()),
        ("device".to_string(), device),
    ]
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_stages_have_no_environment_and_cpu_stages_never_ask() {
        let never = || -> Result<String, DeviceError> { panic!("asked the worker") };
        assert!(for_stage(DeviceUse::NoLibtorch, never).unwrap().is_empty());
        let cpu = for_stage(DeviceUse::Cpu, never).unwrap();
        assert_eq!(cpu["device"], "cpu");
        assert!(cpu.contains_key("libtorch"));
        let best = for_stage(DeviceUse::Best, || Ok("cuda".into())).unwrap();
        assert_eq!(best["device"], "cuda");
    }

    #[test]
    fn the_fingerprint_follows_cuda_visible_devices() {
        let worker = Path::new("/nonexistent/onenet-torch");
        let a = fingerprint(worker);
        assert!(a.contains("cuda_visible="), "{a}");
        assert!(a.contains("absent"), "{a}");
    }
}
