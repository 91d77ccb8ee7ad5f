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
const BLOB_GRACE: Duration = Duration::from_secs(3600);

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
        if meta.key != key.hex() || meta.files.iter().any(|f| !safe_relative(&f.path)) {
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
        let mut stream = match conn.store.get(&path).await {
            Ok(get) => get.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Download::Unusable(
                    "its blob is missing from the remote".into(),
                ))
            }
            Err(e) => return Err(Download::Failed(self.request_error(what(), e))),
        };
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
        if seen != bytes || hasher.finalize().to_hex().as_str() != hash {
            // Best effort: a blob whose content is not its name is of no use to anyone.
            let _ = conn.store.delete(&path).await;
            return Err(Download::Unusable(format!(
                "its blob is damaged ({seen} bytes or more where {bytes} were expected, or the \
                 wrong content); removed from the remote"
            )));
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
    /// leaving blobs younger than an hour: a push in progress uploads its blobs before its
    /// manifest. `dry_run` only reports.
    pub fn gc(
        &self,
        keep: &BTreeSet<CacheKey>,
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
                < BLOB_GRACE.as_secs()
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
/// variables, short retries and a 5 s connect timeout (a server that is down is reported in
/// seconds, not minutes), and a day-long request timeout (a multi-gigabyte blob streams for as
/// long as it takes).
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
            settings.push((ClientConfigKey::Timeout, "24h"));
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
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
