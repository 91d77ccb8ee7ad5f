//! Sharding and cluster benchmark: what splitting `features` into shards costs, and what running
//! the shards as a Slurm array job costs on top, both measured side by side in one run.
//!
//! * a. `features` of 2,000 demo images (EfficientNet-Lite0, random weights: the same arithmetic
//!   as real weights), computed whole and in 4 shards of 500, both here (`--executor local`),
//!   from an empty store each time; the ratio is the sharding overhead (the merge, one libtorch
//!   start per shard);
//! * b. the same 4 shards as one Slurm array job on a one-node cluster started on 127.0.0.1
//!   (`munged`, `slurmctld`, `slurmd`; needs root, as the Slurm tests do), one task at a time with
//!   every CPU (`cpus_per_task` = the CPUs, so the node runs what the local run runs): the ratio
//!   to a. is the cost of submitting, polling (every 0.5 s) and starting tasks.
//!
//! Figures are reported, not asserted. Run it with `make bench` (or
//! `cargo bench --bench cluster`).

#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;
#[path = "../tests/support/slurm.rs"]
#[allow(dead_code)]
mod slurm;
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{build_release, target_dir, write_if_changed};

const IMAGES: usize = 2000;
const PER_SHARD: usize = 500;

fn pipeline(per_shard: usize, cpus: usize) -> String {
    format!(
        r#"# Written by the cluster benchmark (benches/cluster.rs).
[executor]
kind = "slurm"
poll_seconds = 0.5
cpus_per_task = {cpus}

[stages.demo]
kind = "demo_data"
params = {{ images = {IMAGES}, image_size = 128, seed = 5 }}

[stages.images]
kind = "images"
inputs = ["demo"]

[stages.features]
kind = "features"
inputs = ["images"]
params = {{ weights = "random", shard_images = {per_shard} }}
"#
    )
}

/// `onenet run features` in `dir` from a store holding only the stages before it; its seconds.
fn features(onenet: &Path, dir: &Path, executor: &str, conf: Option<&Path>) -> Duration {
    let store = dir.join("artifacts");
    for sub in ["objects", "shards", "logs", "latest/features"] {
        let _ = fs::remove_dir_all(store.join(sub));
    }
    // The upstream stages, so that only `features` is timed.
    let mut upstream = Command::new(onenet);
    upstream
        .current_dir(dir)
        .args(["run", "images", "--quiet", "--executor", "local"]);
    assert!(upstream.status().expect("run onenet").success());
    let mut cmd = Command::new(onenet);
    cmd.current_dir(dir)
        .args(["run", "features", "--quiet", "--executor", executor]);
    if let Some(conf) = conf {
        cmd.env("SLURM_CONF", conf);
    }
    let start = Instant::now();
    let out = cmd.output().expect("run onenet");
    let seconds = start.elapsed();
    assert!(
        out.status.success(),
        "onenet run features --executor {executor}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    seconds
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("onenet sharding and cluster benchmark ({cpus} CPUs available)");
    let onenet = build_release();
    let work = target_dir().join("bench-data").join("cluster");
    let whole = work.join("whole");
    let sharded = work.join("sharded");
    write_if_changed(&whole.join("pipeline.toml"), &pipeline(0, cpus));
    write_if_changed(&sharded.join("pipeline.toml"), &pipeline(PER_SHARD, cpus));

    println!(
        "\n== a. features of {IMAGES} demo images here: whole, and {} shards of {PER_SHARD}",
        IMAGES / PER_SHARD
    );
    let local_whole = features(&onenet, &whole, "local", None);
    let local_sharded = features(&onenet, &sharded, "local", None);
    let one = |name: &str, d: Duration| {
        println!(
            "{name}: {:.1} s ({:.1} images/s)",
            d.as_secs_f64(),
            IMAGES as f64 / d.as_secs_f64()
        )
    };
    one("whole", local_whole);
    one("sharded", local_sharded);
    println!(
        "sharding overhead: sharded / whole = {:.3}",
        local_sharded.as_secs_f64() / local_whole.as_secs_f64()
    );

    println!("\n== b. the same shards as a Slurm array job on a one-node cluster (127.0.0.1)");
    let cluster = slurm::SlurmCluster::start();
    let on_slurm = features(&onenet, &sharded, "slurm", Some(&cluster.conf));
    one("sharded on Slurm", on_slurm);
    println!(
        "Slurm overhead: Slurm / local sharded = {:.3} ({:+.1} s)",
        on_slurm.as_secs_f64() / local_sharded.as_secs_f64(),
        on_slurm.as_secs_f64() - local_sharded.as_secs_f64()
    );
    drop(cluster);
    let _ = fs::remove_dir_all(&work);
}
