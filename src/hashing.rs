//! Content hashes of source files, with a stat cache so unchanged files are not re-read.
//!
//! # The stamp
//!
//! A file's BLAKE3 hash is reused while its [`FileStamp`] is unchanged: size, modification time,
//! status-change time (`ctime`, both in nanoseconds), inode and device. Any difference re-reads
//! the file. The modification time alone is not enough: anyone can put it back
//! (`touch -d`, `File::set_modified`, `cp -p`, `rsync -t`, an editor that restores it), so a
//! same-size edit with its mtime restored would keep the old hash. The `ctime` cannot be set
//! from user space: every write, `chmod` or `utimensat` (including the one that restores the
//! mtime) moves it to "now". The inode and device catch a file replaced by another (a rename
//! over it, a different mount) that happens to have the same size and times. Borg's files cache
//! keeps ctime, size and inode for the same reason.
//!
//! # The racy rule
//!
//! A stamp only proves "unchanged" if a later change would have moved it, and file system
//! timestamps are coarse: a same-size write in the same tick as the previous change leaves the
//! stamp as it was. So each entry also records when it was taken (wall clock, nanoseconds),
//! and, as git does for its index ("racy git"), an entry taken within [`RACY_WINDOW`] of the
//! file's last mtime or ctime is not trusted: the file is hashed again next time, and the new
//! entry, taken later, is trusted once it falls outside the window. The window is a conservative
//! two seconds: FAT's granularity; other file systems record nanoseconds but kernels stamp them
//! from a coarse clock, and network file systems from another machine's clock. A file whose
//! times lie in the future is simply re-hashed on every run until the clock passes them.
//!
//! The time an entry was taken is read before the file is, so a write during hashing that keeps
//! the old timestamps falls inside the window of that entry and is caught by the next run.
//!
//! A trusted entry costs one `stat` and no read, so a no-op `status` over thousands of images
//! costs one `stat` per file. The cache is one JSON file in the store, `{"version": 2,
//! "entries": {...}}`, replaced atomically; a cache of another version, or an unreadable one,
//! starts empty (it is only a cache: the worst case is re-hashing).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How close to a file's last change a stamp may be taken and still be trusted: the coarsest
/// common file system timestamp granularity (FAT's two seconds). See the module documentation.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The version of the cache file's format; a file of any other version is ignored.
const CACHE_VERSION: u32 = 2;

/// What identifies an unchanged file without reading it: any difference means it may have
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub size: u64,
    /// Last modification time, nanoseconds since the Unix epoch (settable by anyone).
    pub mtime_ns: i128,
    /// Last status change time, nanoseconds since the Unix epoch (set only by the kernel).
    pub ctime_ns: i128,
    /// Inode number.
    pub inode: u64,
    /// Device holding the inode.
    pub device: u64,
}

impl FileStamp {
    /// The later of the modification and status-change times.
    fn changed_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// A file's content hash and the stamp it had just before it was read (or, from the cache,
/// when it was last checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileHash {
    /// BLAKE3 hex of the content.
    pub hash: String,
    /// The file's stamp; [`stamp_of`] it again and compare to see whether it changed since.
    pub stamp: FileStamp,
}

/// The stamp of the file at `path` (following symbolic links), from one `stat`.
pub fn stamp_of(path: &Path) -> Result<FileStamp, HashError> {
    let meta = std::fs::metadata(path).map_err(|source| HashError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(stamp_from(&meta))
}

fn stamp_from(meta: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        inode: meta.ino(),
        device: meta.dev(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    stamp: FileStamp,
    hash: String,
    /// Wall-clock time the entry was taken (before the file was read), nanoseconds since the
    /// Unix epoch.
    taken_ns: i128,
}

impl CacheEntry {
    /// Whether the entry was taken far enough after the file's last change that any later change
    /// would have moved the stamp.
    fn trusted(&self, racy_window: Duration) -> bool {
        self.taken_ns > self.stamp.changed_ns() + racy_window.as_nanos() as i128
    }
}

/// The cache file as written.
#[derive(Serialize)]
struct CacheFileOut<'a> {
    version: u32,
    entries: &'a HashMap<PathBuf, CacheEntry>,
}

/// The cache file as read.
#[derive(Deserialize)]
struct CacheFileIn {
    version: u32,
    entries: HashMap<PathBuf, CacheEntry>,
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
    racy_window: Duration,
    /// Wall clock, nanoseconds since the Unix epoch (replaced in tests).
    clock: Box<dyn Fn() -> i128 + Send + Sync>,
}

/// How many files a `hash_files` call read versus took from the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    pub read: usize,
    pub cached: usize,
}

impl StatCache {
    /// Opens the cache kept at `file`; a missing or unreadable cache, or one of another format
    /// version, starts empty (it is only a cache: the worst case is re-hashing).
    pub fn open(file: &Path) -> StatCache {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFileIn>(&bytes).ok())
            .filter(|cache| cache.version == CACHE_VERSION)
            .map(|cache| cache.entries)
            .unwrap_or_default();
        StatCache {
            file: file.to_path_buf(),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
            racy_window: RACY_WINDOW,
            clock: Box::new(system_now_ns),
        }
    }

    /// The same cache with another racy window (default [`RACY_WINDOW`]); tests use zero so
    /// that an entry is trusted as soon as it is taken.
    pub fn with_racy_window(mut self, window: Duration) -> StatCache {
        self.racy_window = window;
        self
    }

    /// BLAKE3 hex and stamp of each file, in the order given, hashing in parallel what the cache
    /// lacks or does not trust.
    pub fn hash_files(&self, paths: &[PathBuf]) -> Result<(Vec<FileHash>, HashStats), HashError> {
        let results: Vec<Result<(FileHash, bool), HashError>> =
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

    fn hash_one(&self, path: &Path) -> Result<(FileHash, bool), HashError> {
        let stamp = stamp_of(path)?;
        if let Some(entry) = self.lock_entries().get(path) {
            if entry.stamp == stamp && entry.trusted(self.racy_window) {
                let hash = entry.hash.clone();
                return Ok((FileHash { hash, stamp }, false));
            }
        }
        // Read the clock after the `stat` but before the read: a write after this instant that
        // keeps the stamp's timestamps lies within the window of the stamp, so the entry is racy.
        let taken_ns = (self.clock)();
        let hash = hash_file(path).map_err(|source| HashError {
            path: path.to_path_buf(),
            source,
        })?;
        self.lock_entries().insert(
            path.to_path_buf(),
            CacheEntry {
                stamp,
                hash: hash.clone(),
                taken_ns,
            },
        );
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok((FileHash { hash, stamp }, true))
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
        let bytes = serde_json::to_vec(&CacheFileOut {
            version: CACHE_VERSION,
            entries: &self.lock_entries(),
        })?;
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

/// The wall clock in nanoseconds since the Unix epoch (negative before it).
fn system_now_ns() -> i128 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// BLAKE3 hex of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    onenet_contract::hash_file(path).map_err(|e| match e {
        onenet_contract::StageError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::sync::Arc;

    fn hex(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    fn hashes(files: &[FileHash]) -> Vec<&str> {
        files.iter().map(|f| f.hash.as_str()).collect()
    }

    /// A cache whose clock reads what the returned cell holds.
    fn cache_with_clock(file: &Path, now_ns: i128) -> (StatCache, Arc<Mutex<i128>>) {
        let now = Arc::new(Mutex::new(now_ns));
        let mut cache = StatCache::open(file);
        let reading = Arc::clone(&now);
        cache.clock = Box::new(move || *reading.lock().unwrap());
        (cache, now)
    }

    #[test]
    fn unchanged_files_are_not_reread_and_changed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let cache_file = dir.path().join("cache.json");
        let files = vec![a.clone(), b.clone()];

        let cache = StatCache::open(&cache_file).with_racy_window(Duration::ZERO);
        let (first, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 2, cached: 0 });
        assert_eq!(first[0].hash, hex(b"one"));
        assert_eq!(first[0].stamp, stamp_of(&a).unwrap());
        assert_eq!(first[1].stamp, stamp_of(&b).unwrap());
        cache.save().unwrap();

        let cache = StatCache::open(&cache_file).with_racy_window(Duration::ZERO);
        let (second, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 2 });
        assert_eq!(first, second);

        std::fs::write(&b, b"three").unwrap();
        let (third, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 1 });
        assert_eq!(third[1].hash, hex(b"three"));
        assert_eq!(third[1].stamp, stamp_of(&b).unwrap());
    }

    #[test]
    fn a_same_size_edit_with_its_mtime_restored_is_caught_by_the_ctime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("photo.jpg");
        std::fs::write(&f, b"before").unwrap();
        let cache = StatCache::open(&dir.path().join("c.json")).with_racy_window(Duration::ZERO);
        let files = vec![f.clone()];
        cache.hash_files(&files).unwrap();
        // The entry is trusted: a second look does not read the file.
        let (_, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 1 });

        let before = stamp_of(&f).unwrap();
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        // Edit in place, same size, then put the mtime back; repeat until the kernel's clock has
        // ticked, so the ctime visibly moved (on a nanosecond file system, the first try).
        let mut after = before;
        for _ in 0..500 {
            let mut file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.rewind().unwrap();
            file.write_all(b"AFTER!").unwrap();
            file.set_modified(mtime).unwrap();
            drop(file);
            after = stamp_of(&f).unwrap();
            if after.ctime_ns != before.ctime_ns {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_ne!(after.ctime_ns, before.ctime_ns, "the ctime never moved");
        assert_eq!(
            (after.size, after.mtime_ns, after.inode, after.device),
            (before.size, before.mtime_ns, before.inode, before.device),
            "only the ctime should tell the edit apart"
        );

        let (edited, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 0 });
        assert_eq!(edited[0].hash, hex(b"AFTER!"));
        assert_eq!(edited[0].stamp, after);
    }

    #[test]
    fn a_file_replaced_by_another_with_the_same_size_and_times_is_caught_by_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        let g = dir.path().join("b.txt");
        std::fs::write(&f, b"first").unwrap();
        let cache = StatCache::open(&dir.path().join("c.json")).with_racy_window(Duration::ZERO);
        let files = vec![f.clone()];
        cache.hash_files(&files).unwrap();

        std::fs::write(&g, b"other").unwrap();
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&g)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&g, &f).unwrap();

        let (replaced, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 0 });
        assert_eq!(replaced[0].hash, hex(b"other"));
    }

    #[test]
    fn a_racy_entry_is_reread_until_it_is_taken_outside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"content").unwrap();
        let changed = stamp_of(&f).unwrap().changed_ns();
        let second = 1_000_000_000;
        // The default window (two seconds), with a clock the test moves.
        let (cache, now) = cache_with_clock(&dir.path().join("c.json"), changed + second / 2);
        assert_eq!(cache.racy_window, RACY_WINDOW);
        let files = vec![f.clone()];

        // Taken half a second after the change: racy, so the next call reads again.
        let (first, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 0 });
        *now.lock().unwrap() = changed + 3 * second / 2;
        let (_, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 0 }, "racy at 0.5 s");

        // Taken at 1.5 s: still racy. The next entry, taken at 3 s, is outside the window.
        *now.lock().unwrap() = changed + 3 * second;
        let (_, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 1, cached: 0 }, "racy at 1.5 s");
        let (last, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 1 }, "trusted at 3 s");
        assert_eq!(first, last);

        // Trust survives a save and reload.
        cache.save().unwrap();
        let cache = StatCache::open(&dir.path().join("c.json"));
        let (_, stats) = cache.hash_files(&files).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 1 });
    }

    #[test]
    fn a_file_changed_in_the_future_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"content").unwrap();
        let changed = stamp_of(&f).unwrap().changed_ns();
        let (cache, _now) = cache_with_clock(&dir.path().join("c.json"), changed - 60_000_000_000);
        let cache = cache.with_racy_window(Duration::ZERO);
        let files = vec![f];
        for _ in 0..2 {
            let (_, stats) = cache.hash_files(&files).unwrap();
            assert_eq!(stats, HashStats { read: 1, cached: 0 });
        }
    }

    #[test]
    fn an_old_format_or_unreadable_cache_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"real").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let cache_file = dir.path().join("cache.json");
        let bogus = hex(b"bogus");
        // Version 1: a bare map from path to {stamp: {size, mtime_ns, inode}, hash}, here with a
        // stamp that matches the file and a wrong hash.
        let v1 = serde_json::json!({
            f.to_str().unwrap(): {
                "stamp": {
                    "size": meta.len(),
                    "mtime_ns": i128::from(meta.mtime()) * 1_000_000_000
                        + i128::from(meta.mtime_nsec()),
                    "inode": meta.ino(),
                },
                "hash": bogus,
            }
        });
        // A later version with this version's entry shape.
        let mut v3_entries = serde_json::Map::new();
        v3_entries.insert(
            f.to_str().unwrap().to_string(),
            serde_json::to_value(CacheEntry {
                stamp: stamp_of(&f).unwrap(),
                hash: bogus.clone(),
                taken_ns: system_now_ns() + 3_600_000_000_000,
            })
            .unwrap(),
        );
        let v3 = serde_json::json!({ "version": 3, "entries": v3_entries });
        for old in [
            serde_json::to_vec(&v1).unwrap(),
            serde_json::to_vec(&v3).unwrap(),
            b"{\"version\": 2, \"entries\": ".to_vec(),
            b"\xff not json".to_vec(),
        ] {
            std::fs::write(&cache_file, &old).unwrap();
            let cache = StatCache::open(&cache_file).with_racy_window(Duration::ZERO);
            let (got, stats) = cache.hash_files(std::slice::from_ref(&f)).unwrap();
            assert_eq!(stats, HashStats { read: 1, cached: 0 });
            assert_eq!(got[0].hash, hex(b"real"));
            cache.save().unwrap();
        }
        // What it saves is the current version, which the next run trusts.
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
        assert_eq!(saved["version"], CACHE_VERSION);
        let cache = StatCache::open(&cache_file).with_racy_window(Duration::ZERO);
        let (got, stats) = cache.hash_files(std::slice::from_ref(&f)).unwrap();
        assert_eq!(stats, HashStats { read: 0, cached: 1 });
        assert_eq!(hashes(&got), [hex(b"real")]);
    }

    #[test]
    fn a_missing_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::open(&dir.path().join("c.json"));
        let missing = dir.path().join("nope.jpg");
        let err = cache.hash_files(&[missing]).unwrap_err().to_string();
        assert!(err.contains("nope.jpg"), "{err}");
        let err = stamp_of(&dir.path().join("gone.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone.png"), "{err}");
    }
}
