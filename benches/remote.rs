//! Remote-cache benchmark: push and pull throughput against a real S3 server (SeaweedFS on
//! 127.0.0.1), side by side with another S3 client doing the same transfer on the same server in
//! the same run, and the cost of a no-op `run` with a remote configured.
//!
//! * a. the demo's whole store (every object the newest outputs of the repository's `artifacts/`
//!   need, as `make demo` left them; without them, a small demo's store made on the spot):
//!   onenet's push and pull of every object, against Python's `boto3` uploading and downloading
//!   the same files with its managed transfer (`upload_file`/`download_file`, 8 files at a time);
//! * b. one 1 GB generated file: onenet's streamed multipart push and pull, against `boto3`'s
//!   managed multipart transfer of the same file;
//! * c. `onenet run` of a small pipeline (demo data, captions, images) when every output is
//!   local, with the remote configured and with `--offline`: the remote must cost nothing then
//!   (target: under 0.3 s).
//!
//! onenet's figures include verifying every file's BLAKE3 (on upload and download); boto3's
//! include its MD5/CRC checks. `boto3` is installed once into `target/bench-venv-s3/`. Files are
//! in the page cache; SeaweedFS writes to the target folder's disk, so both clients share its
//! speed. Figures are reported, not asserted.
//!
//! Run it with `make bench` (or `cargo bench --bench remote`).

#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onenet::key::CacheKey;
use onenet::remote::Remote;
use onenet::store::{ArtifactStore, CommitInfo};
use s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use support::{onenet_cmd, repo_root, target_dir, write_if_changed};

const BIG_FILE_BYTES: u64 = 1 << 30;

/// Stages that need no libtorch: the store of part c, and of part a without a demo store.
const SMALL_PIPELINE: &str = r#"# Written by the remote-cache benchmark (benches/remote.rs).
[stages.demo]
kind = "demo_data"
params = { images = 500, seed = 7, image_size = 128 }

[stages.captions]
kind = "captions"
inputs = ["demo"]

[stages.images]
kind = "images"
inputs = ["demo"]
"#;
const REPS: usize = 7;

fn main() {
    let target = target_dir();
    let work = target.join("bench-data").join("remote");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("create the benchmark folder");
    println!(
        "onenet remote-cache benchmark ({} CPUs available)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let onenet = PathBuf::from(env!("CARGO_BIN_EXE_onenet"));
    println!("\n== python with boto3");
    let python = ensure_boto3(&target);
    println!("\n== SeaweedFS");
    let server = S3Server::start();
    println!("S3 on {}, bucket {BUCKET}", server.endpoint);
    set_aws_env(&server);

    let small = work.join("small-demo");
    write_if_changed(&small.join("pipeline.toml"), SMALL_PIPELINE);
    onenet_cmd(&onenet, &small, &["run", "--offline", "--quiet"]);
    let repo_store = repo_root().join("artifacts");
    let store_dir = if repo_store.join("latest").join("train").exists() {
        println!("\n== the demo's store: {}", repo_store.display());
        repo_store
    } else {
        println!("\n== no demo store (run `make demo` first): a small demo's store instead");
        small.join("artifacts")
    };
    let demo = ArtifactStore::open(&store_dir).expect("the demo's store");
    let keys: Vec<CacheKey> = demo_keys(&demo);
    let files: Vec<PathBuf> = keys
        .iter()
        .flat_map(|k| {
            let dir = demo.object_dir(k);
            let meta = demo.meta(k).expect("object metadata");
            meta.files
                .into_iter()
                .map(move |f| dir.join(f.path))
                .collect::<Vec<_>>()
        })
        .collect();
    let demo_bytes: u64 = files
        .iter()
        .map(|f| fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    println!(
        "{} objects, {} files, {:.1} MB",
        keys.len(),
        files.len(),
        demo_bytes as f64 / 1e6
    );

    println!("\n== a. the demo's store");
    let remote = Remote::new(&format!("s3://{BUCKET}/demo")).expect("remote");
    let push_a = time(|| {
        for key in &keys {
            remote.push(key, &demo, &|_, _| {}).expect("push");
        }
    });
    let pulled = ArtifactStore::open(&work.join("pulled-demo")).expect("store");
    let pull_a = time(|| {
        for key in &keys {
            let outcome = remote.pull(key, &pulled, &|_, _| {}).expect("pull");
            assert!(
                matches!(outcome, onenet::remote::Pulled::Done { .. }),
                "{outcome:?}"
            );
        }
    });
    let list = work.join("demo-files.txt");
    fs::write(
        &list,
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .expect("write the file list");
    let (boto_up_a, boto_down_a) = boto3(
        &python,
        &server,
        &list,
        "boto-demo",
        &work.join("boto-demo"),
    );
    print_pair("push", demo_bytes, push_a, boto_up_a);
    print_pair("pull", demo_bytes, pull_a, boto_down_a);

    println!("\n== b. one 1 GB file");
    let big_store = ArtifactStore::open(&work.join("big-a")).expect("store");
    let big_key = big_object(&big_store);
    let big_path = big_store.object_dir(&big_key).join("big.bin");
    let remote = Remote::new(&format!("s3://{BUCKET}/big")).expect("remote");
    let push_b = time(|| {
        remote.push(&big_key, &big_store, &|_, _| {}).expect("push");
    });
    let big_pulled = ArtifactStore::open(&work.join("big-b")).expect("store");
    let pull_b = time(|| {
        remote
            .pull(&big_key, &big_pulled, &|_, _| {})
            .expect("pull");
    });
    let _ = fs::remove_dir_all(work.join("big-b"));
    let list = work.join("big-files.txt");
    fs::write(&list, big_path.display().to_string()).expect("write the file list");
    let (boto_up_b, boto_down_b) =
        boto3(&python, &server, &list, "boto-big", &work.join("boto-big"));
    print_pair("push", BIG_FILE_BYTES, push_b, boto_up_b);
    print_pair("pull", BIG_FILE_BYTES, pull_b, boto_down_b);
    let _ = fs::remove_dir_all(work.join("boto-big"));
    let _ = fs::remove_dir_all(work.join("big-a"));

    println!("\n== c. onenet run, everything local ({REPS} repetitions each, median)");
    std::env::set_var("ONENET_REMOTE", format!("s3://{BUCKET}/demo"));
    let with_remote = median(|| onenet_cmd(&onenet, &small, &["run", "--quiet"]).0);
    let offline = median(|| onenet_cmd(&onenet, &small, &["run", "--quiet", "--offline"]).0);
    println!(
        "with a remote configured {:.3} s, --offline {:.3} s (ratio {:.2}); target under 0.3 s: {}",
        with_remote.as_secs_f64(),
        offline.as_secs_f64(),
        with_remote.as_secs_f64() / offline.as_secs_f64(),
        if with_remote.as_secs_f64() < 0.3 {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(server);
    let _ = fs::remove_dir_all(&work);
}

/// Every object the demo's newest outputs need (the `latest/` links and their upstream).
fn demo_keys(store: &ArtifactStore) -> Vec<CacheKey> {
    let mut keys = BTreeSet::new();
    let mut stack: Vec<CacheKey> = fs::read_dir(store.bucket(onenet::store::Bucket::Latest))
        .expect("latest/")
        .flatten()
        .filter_map(|e| store.latest_key(&e.file_name().to_string_lossy()))
        .collect();
    while let Some(key) = stack.pop() {
        if keys.insert(key) {
            if let Some(meta) = store.meta(&key) {
                stack.extend(
                    meta.key_inputs
                        .upstream
                        .iter()
                        .filter_map(|(_, hex)| CacheKey::from_hex(hex)),
                );
            }
        }
    }
    keys.into_iter().filter(|k| store.has(k)).collect()
}

/// An object holding one 1 GB file of incompressible bytes (BLAKE3's extendable output).
fn big_object(store: &ArtifactStore) -> CacheKey {
    let inputs = onenet::key::KeyInputs {
        format: onenet::key::KEY_FORMAT,
        kind: "bench".into(),
        version: 1,
        params: Default::default(),
        upstream: Vec::new(),
        sources: Default::default(),
        environment: Default::default(),
        recorded: Default::default(),
    };
    let key = inputs.key();
    let pending = store.begin(&key).expect("begin");
    let mut file = fs::File::create(pending.dir.join("big.bin")).expect("create the big file");
    let mut reader = blake3::Hasher::new().update(b"onenet bench").finalize_xof();
    let mut buffer = vec![0u8; 8 << 20];
    let mut left = BIG_FILE_BYTES;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        reader.fill(&mut buffer[..n]);
        file.write_all(&buffer[..n]).expect("write the big file");
        left -= n as u64;
    }
    drop(file);
    store
        .commit(pending, "bench", &inputs, CommitInfo::default())
        .expect("commit");
    key
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..REPS).map(|_| f()).collect();
    times.sort();
    times[REPS / 2]
}

fn print_pair(what: &str, bytes: u64, ours: Duration, boto: Duration) {
    let rate = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{what}: onenet {:.1} MB/s ({:.2} s), boto3 {:.1} MB/s ({:.2} s): onenet {:.2}x",
        rate(ours),
        ours.as_secs_f64(),
        rate(boto),
        boto.as_secs_f64(),
        boto.as_secs_f64() / ours.as_secs_f64()
    );
}

fn set_aws_env(server: &S3Server) {
    std::env::set_var("AWS_ENDPOINT_URL", &server.endpoint);
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
}

/// Uploads the files listed in `list` under `prefix` with boto3's managed transfer, 8 at a time,
/// then downloads them into `into`; returns the two wall-clock times.
fn boto3(
    python: &Path,
    server: &S3Server,
    list: &Path,
    prefix: &str,
    into: &Path,
) -> (Duration, Duration) {
    let script = r#"
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
endpoint, bucket, prefix, listing, into = sys.argv[1:6]
files = [l for l in open(listing).read().splitlines() if l]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
names = {f: f"{prefix}/{i}/{os.path.basename(f)}" for i, f in enumerate(files)}
start = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda f: s3.upload_file(f, bucket, names[f]), files))
up = time.perf_counter() - start
os.makedirs(into, exist_ok=True)
start = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda f: s3.download_file(bucket, names[f], os.path.join(into, names[f].replace("/", "_"))), files))
down = time.perf_counter() - start
print(json.dumps({"up": up, "down": down}))
"#;
    let out = Command::new(python)
        .args(["-c", script, &server.endpoint, BUCKET, prefix])
        .arg(list)
        .arg(into)
        .stdin(Stdio::null())
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "boto3 transfer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the boto3 script's JSON");
    let secs = |k: &str| Duration::from_secs_f64(v[k].as_f64().expect("seconds"));
    (secs("up"), secs("down"))
}

/// The Python of `<target>/bench-venv-s3`, with boto3 installed once.
fn ensure_boto3(target: &Path) -> PathBuf {
    let venv = target.join("bench-venv-s3");
    let python = venv.join("bin").join("python");
    let has = || {
        Command::new(&python)
            .args(["-c", "import boto3"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        println!("reusing {}", venv.display());
        return python;
    }
    let system = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let ok = Command::new(system)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "boto3",
            ])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && has(),
        "could not install boto3 into {}",
        venv.display()
    );
    python
}
