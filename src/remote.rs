//! The remote cache: stage outputs shared between machines through object storage (S3 and
//! S3-compatible servers, Google Cloud Storage, Azure Blob Storage, or a shared folder), through
//! the `object_store` crate. The engine stays synchronous: a small tokio runtime lives here and
//! nowhere else.
//!
//! ```text
//! <remote>/
//!   blobs/<h[0..2]>/<h>            a file's bytes, named by their BLAKE3 hash h
//!   objects/<key>/_onenet.json     an object's manifest: the local `_onenet.json`, byte for byte
//!   probe/<name>                   `remote check`'s test object, removed after
//! ```
//!
//! Atomicity follows from two rules. A manifest is written last, only once every blob it names
//! is present, and with put-if-absent: it is the commit point, and the first machine to write
//! one for a key wins (a second one keeps its local copy and overwrites nothing). A blob is
//! named by its content, so writing it twice is harmless, and each blob is a single put or a
//! multipart upload that is aborted on failure, so no partial blob is ever visible. A reader
//! checks every blob's size and BLAKE3 against the manifest: a missing or damaged blob makes the
//! object a cache miss (recomputed, then its blobs pushed again), never an error and never used.
//!
//! Where the service's endpoint, region and credentials come from: each service's standard
//! environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, …) and instance
//! credentials, never the pipeline file.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::key::CacheKey;
use crate::store::{ArtifactStore, ObjectMeta, StoreError, OBJECT_META};

/// Files larger than this are uploaded in parts, never read whole into memory.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The size of each part of a multipart upload, and of each read of a file being uploaded.
const PART_BYTES: usize = 8 << 20;
/// Transfers in flight at once (files of one object, or parts of one file).
const PARALLEL: usize = 8;
/// `gc --remote` leaves blobs younger than this: they may belong to a push whose manifest is
/// not written yet.
pub const BLOB_GRACE: Duration = Duration::from_secs(3600);

/// The URL schemes a remote can have, for messages.
pub const SCHEMES: &str = "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, \
                           file:///PATH";

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote's URL cannot be used.
    #[error("remote `{url}`: {message}")]
    Config { url: String, message: String },
    /// A request to the remote failed.
    #[error("remote {url}: {what}: {message}{hint}")]
    Request {
        url: String,
        what: String,
        message: String,
        /// What to check, with its leading separator (may be empty).
        hint: String,
    },
    /// Reading or writing the local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A remote cache, connected on first use: a run whose outputs are all local never builds a
/// client (which reads certificates and credentials) nor sends a request.
pub struct Remote {
    url: String,
    prefix: ObjectPath,
    connection: OnceLock<Result<Connection, String>>,
}

struct Connection {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

/// What `pull` found.
#[derive(Debug)]
pub enum Pulled {
    /// The object is now in the local store.
    Done { meta: Box<ObjectMeta>, bytes: u64 },
    /// The remote has no manifest for the key.
    Missing,
    /// The remote has a manifest, but the object cannot be used (a blob missing or damaged, an
    /// unreadable manifest): the reason, for a warning. Treat as a miss.
    Unusable(String),
}

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// This push wrote the manifest: `bytes` of `blobs` blobs were uploaded.
    Done { blobs: usize, bytes: u64 },
    /// A manifest for the key was already there (another machine's, or ours): nothing of it was
    /// overwritten; `blobs` missing blobs were uploaded again.
    AlreadyThere { blobs: usize, bytes: u64 },
}

/// One line of `remote check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What `gc --remote` removed (or would remove).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RemoteGcReport {
    pub manifests_kept: usize,
    pub manifests_removed: Vec<String>,
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    /// Unreferenced blobs left because they are younger than the grace period.
    pub blobs_too_young: usize,
}

impl Remote {
    /// A remote at `url` (one of `SCHEMES`); checks the URL only, connects on first use.
    pub fn new(url: &str) -> Result<Remote, RemoteError> {
        let parsed = url::Url::parse(url).map_err(|e| RemoteError::Config {
            url: url.to_string(),
            message: format!("not a URL ({e}); expected one of {SCHEMES}"),
        })?;
        let scheme = parsed.scheme();
        if !matches!(
            scheme,
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "file"
        ) {
            return Err(RemoteError::Config {
                url: url.to_string(),
                message: format!("unknown scheme `{scheme}`; expected one of {SCHEMES}"),
            });
        }
        if scheme == "file" && !matches!(parsed.host_str(), None | Some("") | Some("localhost")) {
            return Err(RemoteError::Config {
                url: url.to_string(),
                message: "a file remote needs an absolute path: file:///PATH (three slashes)"
                    .into(),
            });
        }
        if scheme != "file" && parsed.host_str().unwrap_or("").is_empty() {
            return Err(RemoteError::Config {
                url: url.to_string(),
                message: "no bucket or container named".into(),
            });
        }
        let prefix = if scheme == "file" {
            ObjectPath::default()
        } else {
            ObjectPath::from(parsed.path().trim_matches('/'))
        };
        Ok(Remote {
            url: url.to_string(),
            prefix,
            connection: OnceLock::new(),
        })
    }

    /// The remote's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn connection(&self) -> Result<&Connection, RemoteError> {
        self.connection
            .get_or_init(|| connect(&self.url))
            .as_ref()
            .map_err(|message| RemoteError::Config {
                url: self.url.clone(),
                message: message.clone(),
            })
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.clone().join(*part);
        }
        path
    }

    fn manifest_path(&self, key: &CacheKey) -> ObjectPath {
        self.path(&["objects", &key.hex(), OBJECT_META])
    }

    fn blob_path(&self, hash: &str) -> ObjectPath {
        self.path(&["blobs", &hash[..2.min(hash.len())], hash])
    }

    fn request_error(&self, what: impl Into<String>, e: object_store::Error) -> RemoteError {
        let message = e.to_string();
        RemoteError::Request {
            url: self.url.clone(),
            what: what.into(),
            hint: hint(&e, &message),
            message: first_line(&message),
        }
    }

    /// Whether the remote has a manifest for `key` (one request).
    pub fn has(&self, key: &CacheKey) -> Result<bool, RemoteError> {
        let conn = self.connection()?;
        let path = self.manifest_path(key);
        match conn.runtime.block_on(conn.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { source, .. })
                if !is_missing_bucket(&source.to_string()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.request_error(format!("looking up {}", key.short()), e)),
        }
    }

    /// Brings the object for `key` into `store`, verifying every file against the manifest.
    /// Call with the key's local lock held. `on_bytes(done, total)` reports the transfer.
    pub fn pull(
        &self,
        key: &CacheKey,
        store: &ArtifactStore,
        on_bytes: &dyn Fn(u64, u64),
    ) -> Result<Pulled, RemoteError> {
        let conn = self.connection()?;
        let manifest = match conn.runtime.block_on(async {
            conn.store
                .get(&self.manifest_path(key))
                .await?
                .bytes()
                .await
        }) {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { source, .. })
                if !is_missing_bucket(&source.to_string()) =>
            {
                return Ok(Pulled::Missing)
            }
            Err(e) => return Err(self.request_error(format!("reading {}", key.short()), e)),
        };
        let meta: ObjectMeta = match serde_json::from_slice(&manifest) {
            Ok(meta) => meta,
            Err(e) => return Ok(Pulled::Unusable(format!("its manifest is unreadable: {e}"))),
        };
        if meta.key != key.hex() || !safe_paths(&meta.files) {
            return Ok(Pulled::Unusable(
                "its manifest names another key or a path outside the object".into(),
            ));
        }
        let total: u64 = meta.files.iter().map(|f| f.bytes).sum();
        let pending = store.begin(key)?;
        let done = std::sync::atomic::AtomicU64::new(0);
        let dir = &pending.dir;
        let done = &done;
        let results: Vec<_> = conn.runtime.block_on(
            futures::stream::iter(&meta.files)
                .map(|file| async move {
                    let dest = dir.join(&file.path);
                    let result = self
                        .download(conn, &file.blake3, file.bytes, &dest, &|n| {
                            let now = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                            on_bytes(now, total);
                        })
                        .await;
                    (file, result)
                })
                .buffer_unordered(PARALLEL)
                .collect(),
        );
        let mut unusable = None;
        for (file, result) in results {
            match result {
                Ok(()) => {}
                Err(Download::Unusable(reason)) => {
                    unusable.get_or_insert(format!("{}: {reason}", file.path));
                }
                Err(Download::Failed(e)) => {
                    let _ = std::fs::remove_dir_all(&pending.dir);
                    return Err(e);
                }
            }
        }
        if let Some(reason) = unusable {
            let _ = std::fs::remove_dir_all(&pending.dir);
            return Ok(Pulled::Unusable(reason));
        }
        let dir = pending.dir.clone();
        match store.adopt(pending, &manifest) {
            Ok(meta) => Ok(Pulled::Done {
                meta: Box::new(meta),
                bytes: total,
            }),
            Err(StoreError::InvalidOutput { message, .. }) => {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(Pulled::Unusable(format!(
                    "its files do not match its manifest: {}",
                    first_line(&message)
                )))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e.into())
            }
        }
    }

    /// Streams one blob into `dest`, checking its size and hash as it goes. A blob that is
    /// missing or whose bytes are not what its name says is unusable; a damaged one is also
    /// deleted, so that the next push of the object puts it back.
    async fn download(
        &self,
        conn: &Connection,
        hash: &str,
        bytes: u64,
        dest: &Path,
        on_bytes: &dyn Fn(u64),
    ) -> Result<(), Download> {
        let path = self.blob_path(hash);
        let what = || format!("downloading blob {}", &hash[..12.min(hash.len())]);
        let missing = || Download::Unusable("its blob is missing from the remote".into());
        let local = |e: std::io::Error| {
            Download::Failed(RemoteError::Store(StoreError::Io {
                path: dest.to_path_buf(),
                source: e,
            }))
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(local)?;
        }
        let mut file = std::fs::File::create(dest).map_err(local)?;
        let mut hasher = blake3::Hasher::new();
        let mut seen = 0u64;
        if bytes > MULTIPART_THRESHOLD {
            // A large blob comes in ranged parts, several in flight, taken in order (so the
            // hash and the file are written as they arrive): one stream alone leaves most of a
            // fast link idle.
            let size = match conn.store.head(&path).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(Download::Failed(self.request_error(what(), e))),
            };
            if size == bytes {
                let ranges: Vec<std::ops::Range<u64>> = (0..bytes)
                    .step_by(PART_BYTES)
                    .map(|start| start..(start + PART_BYTES as u64).min(bytes))
                    .collect();
                let mut parts = futures::stream::iter(ranges)
                    .map(|range| conn.store.get_range(&path, range))
                    .buffered(PARALLEL);
                while let Some(part) = parts.next().await {
                    let part = part.map_err(|e| Download::Failed(self.request_error(what(), e)))?;
                    seen += part.len() as u64;
                    hasher.update(&part);
                    file.write_all(&part).map_err(local)?;
                    on_bytes(part.len() as u64);
                }
            } else {
                seen = size;
            }
        } else {
            let mut stream = match conn.store.get(&path).await {
                Ok(get) => get.into_stream(),
                Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(Download::Failed(self.request_error(what(), e))),
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Download::Failed(self.request_error(what(), e)))?;
                seen += chunk.len() as u64;
                if seen > bytes {
                    break;
                }
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(local)?;
                on_bytes(chunk.len() as u64);
            }
        }
        if seen != bytes {
            // The blob or the manifest is wrong; which one cannot be told, so nothing is removed.
            return Err(Download::Unusable(format!(
                "its blob is damaged or its manifest wrong ({seen} bytes where the manifest says \
                 {bytes})"
            )));
        }
        if hasher.finalize().to_hex().as_str() != hash {
            // A blob whose content is not its name is of no use to anyone (best effort).
            let _ = conn.store.delete(&path).await;
            return Err(Download::Unusable(
                "its blob is damaged (its content does not match its hash); removed from the \
                 remote"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Uploads the local object for `key`: the blobs the remote lacks, then the manifest with
    /// put-if-absent. `on_bytes(done, total)` reports the transfer.
    pub fn push(
        &self,
        key: &CacheKey,
        store: &ArtifactStore,
        on_bytes: &dyn Fn(u64, u64),
    ) -> Result<Pushed, RemoteError> {
        let conn = self.connection()?;
        let dir = store.object_dir(key);
        let manifest_file = dir.join(OBJECT_META);
        let manifest = std::fs::read(&manifest_file).map_err(|source| StoreError::Io {
            path: manifest_file.clone(),
            source,
        })?;
        let meta: ObjectMeta =
            serde_json::from_slice(&manifest).map_err(|e| StoreError::InvalidOutput {
                path: manifest_file.clone(),
                message: e.to_string(),
            })?;
        let present = self.present_blobs(conn, meta.files.iter().map(|f| f.blake3.as_str()))?;
        let mut missing: Vec<&crate::store::ObjectFile> = Vec::new();
        let mut queued: HashSet<&str> = HashSet::new();
        for file in &meta.files {
            if !present.contains(&file.blake3) && queued.insert(&file.blake3) {
                missing.push(file);
            }
        }
        let total: u64 = missing.iter().map(|f| f.bytes).sum();
        let done = std::sync::atomic::AtomicU64::new(0);
        let results: Vec<Result<(), RemoteError>> = conn.runtime.block_on(
            futures::stream::iter(&missing)
                .map(|file| {
                    let done = &done;
                    self.upload(conn, dir.join(&file.path), file, move |n| {
                        let now = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                        on_bytes(now, total);
                    })
                })
                .buffer_unordered(PARALLEL)
                .collect(),
        );
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let put = conn.runtime.block_on(conn.store.put_opts(
            &self.manifest_path(key),
            PutPayload::from(manifest),
            PutOptions::from(PutMode::Create),
        ));
        match put {
            Ok(_) => Ok(Pushed::Done {
                blobs: missing.len(),
                bytes: total,
            }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Pushed::AlreadyThere {
                blobs: missing.len(),
                bytes: total,
            }),
            Err(e) => {
                Err(self.request_error(format!("writing the manifest of {}", key.short()), e))
            }
        }
    }

    /// Which of `hashes` the remote holds: one listing per two-hex-digit blob folder involved,
    /// never one request per file.
    fn present_blobs<'a>(
        &self,
        conn: &Connection,
        hashes: impl Iterator<Item = &'a str>,
    ) -> Result<HashSet<String>, RemoteError> {
        let folders: BTreeSet<&str> = hashes.map(|h| &h[..2.min(h.len())]).collect();
        let listings: Vec<Result<Vec<object_store::ObjectMeta>, object_store::Error>> =
            conn.runtime.block_on(
                futures::stream::iter(folders)
                    .map(|folder| {
                        let prefix = self.path(&["blobs", folder]);
                        let store = conn.store.clone();
                        async move { store.list(Some(&prefix)).try_collect().await }
                    })
                    .buffer_unordered(PARALLEL)
                    .collect(),
            );
        let mut present = HashSet::new();
        for listing in listings {
            let listing = listing.map_err(|e| self.request_error("listing blobs", e))?;
            present.extend(
                listing
                    .into_iter()
                    .filter_map(|o| o.location.filename().map(str::to_string)),
            );
        }
        Ok(present)
    }

    /// Uploads one file as the blob `file.blake3`, hashing it as it is read: a local file that
    /// changed since it was committed is refused (and the upload aborted), not published under
    /// a name its content does not have.
    async fn upload(
        &self,
        conn: &Connection,
        source: std::path::PathBuf,
        file: &crate::store::ObjectFile,
        on_bytes: impl Fn(u64),
    ) -> Result<(), RemoteError> {
        let blob = self.blob_path(&file.blake3);
        let source = source.as_path();
        let what = || format!("uploading {}", source.display());
        let local = |e: std::io::Error| {
            RemoteError::Store(StoreError::Io {
                path: source.to_path_buf(),
                source: e,
            })
        };
        let damaged = |hash: &str| {
            RemoteError::Store(StoreError::InvalidOutput {
                path: source.to_path_buf(),
                message: format!(
                    "its BLAKE3 is {hash}, but the object's manifest says {}: the local object \
                     is damaged (`onenet verify` moves it aside)",
                    file.blake3
                ),
            })
        };
        if file.bytes <= MULTIPART_THRESHOLD {
            let bytes = std::fs::read(source).map_err(local)?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            if hash != file.blake3 {
                return Err(damaged(&hash));
            }
            let len = bytes.len() as u64;
            conn.store
                .put(&blob, PutPayload::from(bytes))
                .await
                .map_err(|e| self.request_error(what(), e))?;
            on_bytes(len);
            return Ok(());
        }
        let upload = conn
            .store
            .put_multipart(&blob)
            .await
            .map_err(|e| self.request_error(what(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut reader = std::fs::File::open(source).map_err(local)?;
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; PART_BYTES];
        let result: Result<(), RemoteError> = async {
            loop {
                writer
                    .wait_for_capacity(PARALLEL / 2)
                    .await
                    .map_err(|e| self.request_error(what(), e))?;
                let n = std::io::Read::read(&mut reader, &mut buffer).map_err(local)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                writer.write(&buffer[..n]);
                on_bytes(n as u64);
            }
            let hash = hasher.finalize().to_hex().to_string();
            if hash != file.blake3 {
                return Err(damaged(&hash));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| self.request_error(what(), e))?;
                Ok(())
            }
            Err(e) => {
                // Leaves no parts behind to be billed or mistaken for a blob.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Every key with a manifest in the remote.
    pub fn keys(&self) -> Result<Vec<CacheKey>, RemoteError> {
        let conn = self.connection()?;
        let prefix = self.path(&["objects"]);
        let listing: Vec<object_store::ObjectMeta> = conn
            .runtime
            .block_on(conn.store.list(Some(&prefix)).try_collect())
            .map_err(|e| self.request_error("listing objects", e))?;
        let mut keys: Vec<CacheKey> = listing
            .iter()
            .filter(|o| o.location.filename() == Some(OBJECT_META))
            .filter_map(|o| {
                let parts: Vec<_> = o.location.parts().collect();
                let key = parts.get(parts.len().checked_sub(2)?)?;
                CacheKey::from_hex(key.as_ref())
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Removes the manifests of keys neither in `keep` nor upstream of one, then the blobs no
    /// remaining manifest names (manifests first, so no manifest ever names a removed blob),
    /// leaving blobs younger than `grace` (`BLOB_GRACE`): a push in progress uploads its blobs
    /// before its manifest. `dry_run` only reports.
    pub fn gc(
        &self,
        keep: &BTreeSet<CacheKey>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<RemoteGcReport, RemoteError> {
        let conn = self.connection()?;
        let mut report = RemoteGcReport::default();
        let keys = self.keys()?;
        let manifests: Vec<(CacheKey, Result<bytes::Bytes, object_store::Error>)> =
            conn.runtime.block_on(
                futures::stream::iter(&keys)
                    .map(|key| async move {
                        let path = self.manifest_path(key);
                        let got = async { conn.store.get(&path).await?.bytes().await }.await;
                        (*key, got)
                    })
                    .buffer_unordered(PARALLEL)
                    .collect(),
            );
        let mut metas: BTreeMap<CacheKey, ObjectMeta> = BTreeMap::new();
        for (key, got) in manifests {
            match got {
                Ok(bytes) => {
                    if let Ok(meta) = serde_json::from_slice::<ObjectMeta>(&bytes) {
                        metas.insert(key, meta);
                    }
                }
                // Removed meanwhile by another gc.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.request_error(format!("reading {}", key.short()), e)),
            }
        }
        let mut kept: BTreeSet<CacheKey> = BTreeSet::new();
        let mut stack: Vec<CacheKey> = keep.iter().copied().collect();
        while let Some(key) = stack.pop() {
            if kept.insert(key) {
                if let Some(meta) = metas.get(&key) {
                    stack.extend(
                        meta.key_inputs
                            .upstream
                            .iter()
                            .filter_map(|(_, hex)| CacheKey::from_hex(hex)),
                    );
                }
            }
        }
        let mut referenced: HashSet<String> = HashSet::new();
        for key in &keys {
            if kept.contains(key) {
                report.manifests_kept += 1;
                if let Some(meta) = metas.get(key) {
                    referenced.extend(meta.files.iter().map(|f| f.blake3.clone()));
                }
                continue;
            }
            if !dry_run {
                conn.runtime
                    .block_on(conn.store.delete(&self.manifest_path(key)))
                    .map_err(|e| self.request_error(format!("removing {}", key.short()), e))?;
            }
            report.manifests_removed.push(key.hex());
        }
        let blobs: Vec<object_store::ObjectMeta> = conn
            .runtime
            .block_on(conn.store.list(Some(&self.path(&["blobs"]))).try_collect())
            .map_err(|e| self.request_error("listing blobs", e))?;
        let now = chrono_now();
        let mut doomed = Vec::new();
        for blob in blobs {
            let name = blob.location.filename().unwrap_or_default().to_string();
            if referenced.contains(&name) {
                report.blobs_kept += 1;
            } else if now.saturating_sub(blob.last_modified.timestamp().max(0) as u64)
                < grace.as_secs()
            {
                report.blobs_too_young += 1;
            } else {
                report.blobs_removed += 1;
                report.bytes_removed += blob.size;
                doomed.push(blob.location);
            }
        }
        if !dry_run && !doomed.is_empty() {
            let locations = futures::stream::iter(doomed.into_iter().map(Ok)).boxed();
            let deleted: Vec<_> = conn
                .runtime
                .block_on(conn.store.delete_stream(locations).try_collect::<Vec<_>>())
                .map_err(|e| self.request_error("removing blobs", e))?;
            drop(deleted);
        }
        Ok(report)
    }

    /// Probes the remote once: a write, a put-if-absent over it (which must be refused), a read
    /// and a delete, then a listing of the objects; each step's outcome, in order. Stops at the
    /// first failure that makes the rest meaningless.
    pub fn check(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(e) => {
                probes.push(Probe {
                    step: "connect",
                    ok: false,
                    detail: e.to_string(),
                });
                return probes;
            }
        };
        let name = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let path = self.path(&["probe", &name]);
        let body = b"onenet remote check\n".to_vec();
        let mut step = |step: &'static str, result: Result<String, String>| {
            let ok = result.is_ok();
            probes.push(Probe {
                step,
                ok,
                detail: result.unwrap_or_else(|e| e),
            });
            ok
        };
        let rt = &conn.runtime;
        let say = |e: object_store::Error| {
            let message = e.to_string();
            format!("{}{}", first_line(&message), hint(&e, &message))
        };
        let wrote = rt
            .block_on(conn.store.put(&path, PutPayload::from(body.clone())))
            .map(|_| format!("wrote {path}"))
            .map_err(say);
        if !step("write", wrote) {
            return probes;
        }
        let again = rt.block_on(conn.store.put_opts(
            &path,
            PutPayload::from(b"overwritten\n".to_vec()),
            PutOptions::from(PutMode::Create),
        ));
        step(
            "conditional write refused",
            match again {
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    Ok("a second put-if-absent of the same name was refused".into())
                }
                Ok(_) => Err(
                    "a put-if-absent overwrote an existing object: two machines \
                              computing the same stage could replace each other's manifests"
                        .into(),
                ),
                Err(e) => Err(format!(
                    "put-if-absent is not available ({}): manifests cannot be committed safely",
                    first_line(&e.to_string())
                )),
            },
        );
        let read = rt.block_on(async { conn.store.get(&path).await?.bytes().await });
        step(
            "read",
            match read {
                Ok(bytes) if bytes.as_ref() == body.as_slice() => Ok("read it back".into()),
                Ok(_) => Err("read back different bytes than were written".into()),
                Err(e) => Err(say(e)),
            },
        );
        step(
            "delete",
            rt.block_on(conn.store.delete(&path))
                .map(|_| "removed it".to_string())
                .map_err(say),
        );
        let keys = self.keys();
        step(
            "list",
            keys.map(|k| format!("{} objects in the remote", k.len()))
                .map_err(|e| e.to_string()),
        );
        probes
    }
}

enum Download {
    Unusable(String),
    Failed(RemoteError),
}

/// Builds the client for `url`: the service's own configuration from its standard environment
/// variables, short retries, a 5 s connect timeout (a server that is down is reported in
/// seconds) and a 2-minute request timeout (a server that accepts and never answers is reported
/// too). No request moves more than 16 MB: larger blobs go in 8 MB parts and come in 8 MB ranges.
fn connect(url: &str) -> Result<Connection, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("onenet-remote")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the transfer runtime: {e}"))?;
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..RetryConfig::default()
    };
    // Set as config keys, not a whole `ClientOptions`, so that what the environment says
    // (`AWS_ALLOW_HTTP`, proxies, timeouts) is kept; ours only fill what it leaves unset.
    let client_settings = |env_prefix: &str| {
        let unset = |name: &str| std::env::var_os(format!("{env_prefix}{name}")).is_none();
        let mut settings = Vec::new();
        if unset("CONNECT_TIMEOUT") {
            settings.push((ClientConfigKey::ConnectTimeout, "5s"));
        }
        if unset("TIMEOUT") {
            settings.push((ClientConfigKey::Timeout, "120s"));
        }
        settings
    };
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => {
            let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|name| std::env::var(name).ok());
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(retry);
            // An `http://` endpoint (a server on the local network) was asked for explicitly.
            if endpoint.is_some_and(|e| e.starts_with("http://"))
                && std::env::var_os("AWS_ALLOW_HTTP").is_none()
            {
                builder = builder.with_allow_http(true);
            }
            for (key, value) in client_settings("AWS_") {
                builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
            }
            Arc::new(builder.build().map_err(|e| first_line(&e.to_string()))?)
        }
        "gs" => {
            let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (key, value) in client_settings("GOOGLE_") {
                builder = builder.with_config(GoogleConfigKey::Client(key), value);
            }
            Arc::new(builder.build().map_err(|e| first_line(&e.to_string()))?)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (key, value) in client_settings("AZURE_") {
                builder = builder.with_config(AzureConfigKey::Client(key), value);
            }
            Arc::new(builder.build().map_err(|e| first_line(&e.to_string()))?)
        }
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| "not an absolute local path".to_string())?;
            // Never created here: a shared folder that is not mounted must not quietly become a
            // local one.
            if !dir.is_dir() {
                return Err(format!(
                    "{} is not a folder (onenet does not create it: create it, or mount the \
                     share)",
                    dir.display()
                ));
            }
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| first_line(&e.to_string()))?,
            )
        }
        other => {
            return Err(format!(
                "unknown scheme `{other}`; expected one of {SCHEMES}"
            ))
        }
    };
    Ok(Connection { store, runtime })
}

/// What to check, from an error's kind and text (with a leading `: `), or nothing.
fn hint(e: &object_store::Error, text: &str) -> String {
    let lower = text.to_lowercase();
    let hint = match e {
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => {
            "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3, \
             GOOGLE_APPLICATION_CREDENTIALS for GCS, AZURE_STORAGE_ACCOUNT_KEY for Azure)"
        }
        _ if is_missing_bucket(text) => "check that the bucket exists (onenet does not create it)",
        _ if lower.contains("accessdenied")
            || lower.contains("invalidaccesskeyid")
            || lower.contains("signaturedoesnotmatch")
            || lower.contains("403") =>
        {
            "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3, \
             GOOGLE_APPLICATION_CREDENTIALS for GCS, AZURE_STORAGE_ACCOUNT_KEY for Azure)"
        }
        _ if lower.contains("connect")
            || lower.contains("dns")
            || lower.contains("timed out")
            || lower.contains("error sending request") =>
        {
            "check that the endpoint (AWS_ENDPOINT_URL for an S3-compatible server) is right \
             and the server is up, or run with --offline to use the local store only"
        }
        _ => return String::new(),
    };
    format!(" ({hint})")
}

fn is_missing_bucket(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains("nosuchbucket") || lower.contains("bucket does not exist")
}

/// The first line of a (possibly multi-line, XML-laden) error text, shortened, without the
/// server's XML body.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let line = line
        .split("<?xml")
        .next()
        .unwrap_or(line)
        .trim_end_matches([' ', ':'])
        .trim();
    if line.chars().count() > 400 {
        line.chars().take(400).collect::<String>() + "…"
    } else {
        line.to_string()
    }
}

/// Whether a manifest's file paths can all be written: each inside the object, none twice, none
/// the metadata file itself, none a folder of another.
fn safe_paths(files: &[crate::store::ObjectFile]) -> bool {
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    paths.len() == files.len()
        && files.iter().all(|f| {
            safe_relative(&f.path)
                && f.path != OBJECT_META
                && !paths.contains(f.path.rsplit_once('/').map_or("", |(dir, _)| dir))
        })
}

/// Whether a manifest's file path stays inside the object (no `..`, not absolute).
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn chrono_now() -> u64 {
    crate::store::now_unix() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyInputs, KEY_FORMAT};
    use crate::store::CommitInfo;
    use std::path::PathBuf;

    struct Fixture {
        _dir: tempfile::TempDir,
        remote: Remote,
        remote_dir: PathBuf,
        a: ArtifactStore,
        b: ArtifactStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let remote_dir = dir.path().join("remote");
        std::fs::create_dir_all(&remote_dir).unwrap();
        let url = url::Url::from_directory_path(&remote_dir).unwrap();
        Fixture {
            remote: Remote::new(url.as_str()).unwrap(),
            remote_dir,
            a: ArtifactStore::open(&dir.path().join("a")).unwrap(),
            b: ArtifactStore::open(&dir.path().join("b")).unwrap(),
            _dir: dir,
        }
    }

    fn inputs(kind: &str, upstream: &[CacheKey]) -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT,
            kind: kind.into(),
            version: 1,
            params: BTreeMap::new(),
            upstream: upstream
                .iter()
                .map(|k| ("up".to_string(), k.hex()))
                .collect(),
            sources: BTreeMap::new(),
            environment: BTreeMap::new(),
            recorded: BTreeMap::new(),
        }
    }

    /// Commits `files` under the key of `inputs`, with `seconds` recorded (so that two machines'
    /// manifests for one key can differ).
    fn commit(
        store: &ArtifactStore,
        inputs: &KeyInputs,
        files: &[(&str, &[u8])],
        seconds: f64,
    ) -> CacheKey {
        let key = inputs.key();
        let pending = store.begin(&key).unwrap();
        for (path, body) in files {
            let path = pending.dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let info = CommitInfo {
            seconds,
            ..CommitInfo::default()
        };
        store.commit(pending, "s", inputs, info).unwrap();
        key
    }

    fn quiet(_: u64, _: u64) {}

    fn manifest(store: &ArtifactStore, key: &CacheKey) -> Vec<u8> {
        std::fs::read(store.object_dir(key).join(OBJECT_META)).unwrap()
    }

    fn remote_manifest(f: &Fixture, key: &CacheKey) -> Vec<u8> {
        std::fs::read(
            f.remote_dir
                .join("objects")
                .join(key.hex())
                .join(OBJECT_META),
        )
        .unwrap()
    }

    fn blob_file(f: &Fixture, body: &[u8]) -> PathBuf {
        let hash = blake3::hash(body).to_hex().to_string();
        f.remote_dir.join("blobs").join(&hash[..2]).join(hash)
    }

    fn no_leftovers(store: &ArtifactStore) {
        let tmp = store.bucket(crate::store::Bucket::Tmp);
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_pushed_object_pulls_into_another_store_byte_for_byte() {
        let f = fixture();
        // Larger than the multipart threshold, so it goes up in parts.
        let big: Vec<u8> = (0..(MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let key = commit(
            &f.a,
            &inputs("k", &[]),
            &[
                ("t.txt", b"table"),
                ("sub/big.bin", &big),
                ("same.txt", b"table"),
            ],
            0.5,
        );
        let pushed = f.remote.push(&key, &f.a, &quiet).unwrap();
        // Two files share one blob.
        assert_eq!(
            pushed,
            Pushed::Done {
                blobs: 2,
                bytes: big.len() as u64 + 5
            }
        );
        assert!(f.remote.has(&key).unwrap());
        assert_eq!(f.remote.keys().unwrap(), vec![key]);

        let reported = std::cell::Cell::new(0);
        let pulled = f
            .remote
            .pull(&key, &f.b, &|done, _| reported.set(done))
            .unwrap();
        assert!(matches!(pulled, Pulled::Done { bytes, .. } if bytes == big.len() as u64 + 10));
        assert_eq!(reported.get(), big.len() as u64 + 10);
        assert!(f.b.has(&key));
        assert_eq!(manifest(&f.b, &key), manifest(&f.a, &key));
        for path in ["t.txt", "sub/big.bin", "same.txt"] {
            assert_eq!(
                std::fs::read(f.b.object_dir(&key).join(path)).unwrap(),
                std::fs::read(f.a.object_dir(&key).join(path)).unwrap(),
                "{path}"
            );
        }
        no_leftovers(&f.b);
        // Pushing again uploads nothing.
        assert_eq!(
            f.remote.push(&key, &f.b, &quiet).unwrap(),
            Pushed::AlreadyThere { blobs: 0, bytes: 0 }
        );
    }

    #[test]
    fn a_key_the_remote_lacks_is_missing() {
        let f = fixture();
        let key = inputs("absent", &[]).key();
        assert!(!f.remote.has(&key).unwrap());
        assert!(matches!(
            f.remote.pull(&key, &f.b, &quiet).unwrap(),
            Pulled::Missing
        ));
        assert!(!f.b.has(&key));
    }

    #[test]
    fn the_first_manifest_wins_and_a_second_push_overwrites_nothing() {
        let f = fixture();
        let key = commit(&f.a, &inputs("k", &[]), &[("x.txt", b"from a")], 1.0);
        let same = commit(&f.b, &inputs("k", &[]), &[("x.txt", b"from b")], 2.0);
        assert_eq!(key, same);
        assert!(matches!(
            f.remote.push(&key, &f.a, &quiet).unwrap(),
            Pushed::Done { .. }
        ));
        assert!(matches!(
            f.remote.push(&key, &f.b, &quiet).unwrap(),
            Pushed::AlreadyThere { .. }
        ));
        assert_eq!(remote_manifest(&f, &key), manifest(&f.a, &key));
    }

    #[test]
    fn a_damaged_or_missing_blob_is_a_miss_and_the_next_push_repairs_it() {
        let f = fixture();
        let key = commit(&f.a, &inputs("k", &[]), &[("x.txt", b"payload")], 1.0);
        f.remote.push(&key, &f.a, &quiet).unwrap();
        let blob = blob_file(&f, b"payload");
        std::fs::write(&blob, b"paylo4d").unwrap();
        let pulled = f.remote.pull(&key, &f.b, &quiet).unwrap();
        assert!(
            matches!(&pulled, Pulled::Unusable(why) if why.contains("damaged")),
            "{pulled:?}"
        );
        assert!(!f.b.has(&key));
        no_leftovers(&f.b);
        assert!(!blob.exists(), "the damaged blob is removed");

        assert_eq!(
            f.remote.push(&key, &f.a, &quiet).unwrap(),
            Pushed::AlreadyThere { blobs: 1, bytes: 7 }
        );
        assert!(matches!(
            f.remote.pull(&key, &f.b, &quiet).unwrap(),
            Pulled::Done { .. }
        ));

        std::fs::remove_file(&blob).unwrap();
        let c = ArtifactStore::open(&f.remote_dir.with_file_name("c")).unwrap();
        let pulled = f.remote.pull(&key, &c, &quiet).unwrap();
        assert!(
            matches!(&pulled, Pulled::Unusable(why) if why.contains("missing")),
            "{pulled:?}"
        );
        assert!(!c.has(&key));
        no_leftovers(&c);
    }

    #[test]
    fn a_large_blob_damaged_or_cut_short_is_a_miss() {
        let f = fixture();
        let big = vec![3u8; MULTIPART_THRESHOLD as usize + PART_BYTES + 5];
        let key = commit(&f.a, &inputs("big", &[]), &[("big.bin", &big)], 1.0);
        let blob = blob_file(&f, &big);
        #[allow(clippy::ptr_arg)] // One signature for both kinds of damage.
        fn flip(b: &mut Vec<u8>) {
            b[PART_BYTES + 1] = 4;
        }
        fn cut(b: &mut Vec<u8>) {
            b.truncate(b.len() - 1);
        }
        // A flipped byte: the blob is not its name, and goes. A short blob: the blob or the
        // manifest is wrong, which cannot be told, so it stays.
        for (damage, removed) in [
            (flip as fn(&mut Vec<u8>), true),
            (cut as fn(&mut Vec<u8>), false),
        ] {
            f.remote.push(&key, &f.a, &quiet).unwrap();
            let mut bad = big.clone();
            damage(&mut bad);
            std::fs::write(&blob, &bad).unwrap();
            let pulled = f.remote.pull(&key, &f.b, &quiet).unwrap();
            assert!(
                matches!(&pulled, Pulled::Unusable(why) if why.contains("damaged")),
                "{pulled:?}"
            );
            assert!(!f.b.has(&key));
            assert_eq!(blob.exists(), !removed);
            no_leftovers(&f.b);
        }
    }

    #[test]
    fn a_local_file_changed_after_commit_is_not_pushed() {
        let f = fixture();
        let key = commit(&f.a, &inputs("k", &[]), &[("x.txt", b"as committed")], 1.0);
        std::fs::write(f.a.object_dir(&key).join("x.txt"), b"changed after").unwrap();
        let err = f.remote.push(&key, &f.a, &quiet).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!f.remote.has(&key).unwrap());
        assert!(!blob_file(&f, b"changed after").exists());
        assert!(!blob_file(&f, b"as committed").exists());
    }

    #[test]
    fn a_multipart_upload_that_fails_is_aborted_and_leaves_nothing() {
        let f = fixture();
        let big = vec![7u8; MULTIPART_THRESHOLD as usize + PART_BYTES + 1];
        let key = commit(&f.a, &inputs("big", &[]), &[("big.bin", &big)], 1.0);
        // Same size, one byte different at the end: noticed only once every part is sent.
        let mut changed = big.clone();
        *changed.last_mut().unwrap() = 8;
        std::fs::write(f.a.object_dir(&key).join("big.bin"), &changed).unwrap();
        let err = f.remote.push(&key, &f.a, &quiet).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!f.remote.has(&key).unwrap());
        let mut left = Vec::new();
        for entry in walkdir(&f.remote_dir) {
            left.push(entry);
        }
        assert!(left.is_empty(), "nothing uploaded stays: {left:?}");
    }

    /// Every file under `dir` (none if it does not exist).
    fn walkdir(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    files.push(entry.path());
                }
            }
        }
        files
    }

    #[test]
    fn gc_removes_unneeded_manifests_first_then_unreferenced_blobs() {
        let f = fixture();
        let base = commit(&f.a, &inputs("base", &[]), &[("b.txt", b"base")], 1.0);
        let top = commit(
            &f.a,
            &inputs("top", &[base]),
            &[("t.txt", b"top"), ("shared.txt", b"shared")],
            1.0,
        );
        let other = commit(
            &f.a,
            &inputs("other", &[]),
            &[("o.txt", b"other"), ("shared.txt", b"shared")],
            1.0,
        );
        for key in [base, top, other] {
            f.remote.push(&key, &f.a, &quiet).unwrap();
        }
        let keep = BTreeSet::from([top]);
        // Young blobs stay.
        let young = f.remote.gc(&keep, BLOB_GRACE, true).unwrap();
        assert_eq!(young.manifests_removed, vec![other.hex()]);
        assert_eq!((young.blobs_removed, young.blobs_too_young), (0, 1));

        let dry = f.remote.gc(&keep, Duration::ZERO, true).unwrap();
        assert_eq!(dry.manifests_removed, vec![other.hex()]);
        assert_eq!(dry.manifests_kept, 2, "the upstream object is kept");
        assert_eq!((dry.blobs_removed, dry.bytes_removed), (1, 5));
        assert!(f.remote.has(&other).unwrap(), "a dry run removes nothing");

        let done = f.remote.gc(&keep, Duration::ZERO, false).unwrap();
        assert_eq!(done.manifests_removed, dry.manifests_removed);
        assert!(!f.remote.has(&other).unwrap());
        assert!(f.remote.has(&base).unwrap() && f.remote.has(&top).unwrap());
        assert!(!blob_file(&f, b"other").exists());
        assert!(blob_file(&f, b"shared").exists());
        assert!(matches!(
            f.remote.pull(&top, &f.b, &quiet).unwrap(),
            Pulled::Done { .. }
        ));
    }

    #[test]
    fn check_reports_every_step_on_a_working_remote() {
        let f = fixture();
        let probes = f.remote.check();
        let steps: Vec<&str> = probes.iter().map(|p| p.step).collect();
        assert_eq!(
            steps,
            [
                "write",
                "conditional write refused",
                "read",
                "delete",
                "list"
            ]
        );
        assert!(probes.iter().all(|p| p.ok), "{probes:?}");
    }

    #[test]
    fn urls_are_checked_for_their_form() {
        for good in [
            "s3://bucket/prefix",
            "gs://b",
            "az://container/p",
            "file:///tmp/x",
        ] {
            assert!(Remote::new(good).is_ok(), "{good}");
        }
        for bad in [
            "bucket/prefix",
            "http://host/x",
            "s3:///prefix",
            "file://relative/x",
        ] {
            let err = Remote::new(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(bad) && (err.contains("s3://") || err.contains("file:///")),
                "{bad}: {err}"
            );
        }
        let prefixed = Remote::new("s3://bucket/team/cache/").unwrap();
        assert_eq!(
            prefixed.blob_path("abcdef").as_ref(),
            "team/cache/blobs/ab/abcdef"
        );
    }

    #[test]
    fn manifests_naming_a_path_twice_or_a_folder_as_a_file_are_refused() {
        let file = |path: &str| crate::store::ObjectFile {
            path: path.into(),
            bytes: 1,
            blake3: "00".into(),
        };
        assert!(safe_paths(&[file("a/b.txt"), file("c.txt")]));
        assert!(!safe_paths(&[file("a.txt"), file("a.txt")]));
        assert!(!safe_paths(&[file(OBJECT_META)]));
        assert!(!safe_paths(&[file("a"), file("a/b.txt")]));
    }

    #[test]
    fn paths_outside_the_object_are_refused() {
        assert!(safe_relative("a/b.txt"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
