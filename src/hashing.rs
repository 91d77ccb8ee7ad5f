//! Content hashes of source files, with a stat cache so unchanged files are not re-read.
//!
//! A file's BLAKE3 hash is reused while its size, modification time (nanoseconds) and inode are
//! unchanged; any difference re-reads it. The cache is one JSON file in the store, replaced
//! atomically, so a no-op `status` over thousands of images costs one `stat` per file.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What identifies an unchanged file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    stamp: FileStamp,
    hash: String,
}

/// Failure to hash one file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct HashError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Hashes files, remembering hashes by file stamp across runs.
pub struct StatCache {
    file: PathBuf,
    entries: Mutex<HashMap<PathBuf, CacheEntry>>,
    dirty: Mutex<bool>,
}

/// How many files a `hash_files` call read versus took from the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    pub read: usize,
    pub cached: usize,
}

impl StatCache {
    /// Opens the cache kept at `file`; a missing or unreadable cache starts empty (it is only a
    /// cache: the worst case is re-hashing).
    pub fn open(file: &Path) -> StatCache {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        StatCache {
            file: file.to_path_buf(),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// BLAKE3 hex of each file, in the order given, hashing in parallel what the cache lacks.
    pub fn hash_files(&self, paths: &[PathBuf]) -> Result<(Vec<String>, HashStats), HashError> {
        let results: Vec<Result<(String, bool), HashError>> =
            paths.par_iter().map(|p| self.hash_one(p)).collect();
        let mut stats = HashStats::default();
        let mut hashes = Vec::with_capacity(paths.len());
        for r in results {
            let (hash, was_read) = r?;
            if was_read {
                stats.read += 1;
            } else {
                stats.cached += 1;
            }
            hashes.push(hash);
        }
        Ok((hashes, stats))
    }

    fn hash_one(&self, path: &Path) -> Result<(String, bool), HashError> {
        let err = |source| HashError {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let stamp = FileStamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            inode: meta.ino(),
        };
        if let Some(entry) = self.lock_entries().get(path) {
            if entry.stamp == stamp {
                return Ok((entry.hash.clone(), false));
            }
        }
        let hash = hash_file(path).map_err(err)?;
        self.lock_entries().insert(
            path.to_path_buf(),
            CacheEntry {
                stamp,
                hash: hash.clone(),
            },
        );
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok((hash, true))
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, CacheEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the cache back if it learned anything (atomically: a temporary file renamed over
    /// the old one, so concurrent runs never see half a cache).
    pub fn save(&self) -> std::io::Result<()> {
        if !*self.dirty.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*self.lock_entries())?;
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .file
            .with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.file)
    }
}

/// BLAKE3 hex of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    onenet_stages::hash_file(path).map_err(|e| match e {
        onenet_stages::StageError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_reread_and_changed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let cache_file = dir.path().join("cache.json");
        let files = vec![a.clone(), b.clone()];

        let cache = StatCache::open(&cache_file);
        let (first, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 2, cached: 0 });
        assert_eq!(first[0], blake3::hash(b"one").to_hex().to_string());
        cache.save().unwrap();

        let cache = StatCache::open(&cache_file);
        let (second, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 2 });
        assert_eq!(first, second);

        std::fs::write(&b, b"three").unwrap();
        let (third, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 1 });
        assert_eq!(third[1], blake3::hash(b"three").to_hex().to_string());
    }

    #[test]
    fn a_missing_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::open(&dir.path().join("c.json"));
        let missing = dir.path().join("nope.jpg");
        let err = cache.hash_files(&[missing]).unwrap_err().to_string();
        assert!(err.contains("nope.jpg"), "{err}");
    }
}
