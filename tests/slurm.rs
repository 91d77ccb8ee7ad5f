//! End-to-end tests of sharded stages on a one-node Slurm cluster started by the test (Debian's
//! `slurmctld`, `slurmd` and `munge`, which `make test-deps` installs): shards submitted as an
//! array job give the same bytes as a whole local run, a failed task is resubmitted, and adding
//! images submits one shard.

mod support;

use std::fs;
use std::process::{Output, Stdio};

use serde_json::Value;
use support::slurm::SlurmCluster;
use support::{actions, text, Project};

fn pipeline(images: u32, sharded: bool) -> String {
    let shard = if sharded { ", shard_images = 10" } else { "" };
    format!(
        r#"
[executor]
kind = "slurm"
poll_seconds = 0.3
retries = 1

[stages.demo]
kind = "demo_data"
params = {{ images = {images}, image_size = 48, seed = 3 }}

[stages.images]
kind = "images"
inputs = ["demo"]

[stages.features]
kind = "features"
inputs = ["images"]
params = {{ weights = "random", batch_size = 4{shard} }}
"#
    )
}

fn onenet(
    project: &Project,
    cluster: &SlurmCluster,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = project.command(args);
    cmd.env("SLURM_CONF", &cluster.conf).stdin(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = cmd.output().expect("run onenet");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        text(&out)
    );
    out
}

fn run_json(
    project: &Project,
    cluster: &SlurmCluster,
    args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend(["--format", "json"]);
    let out = onenet(project, cluster, &all, env);
    assert!(
        out.status.success(),
        "onenet {all:?}: {}\n{}",
        text(&out),
        cluster.logs()
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn features(project: &Project) -> Vec<u8> {
    fs::read(project.store().join("latest/features/features.safetensors")).unwrap()
}

/// The `features` stage's notes in a run's JSON output.
fn notes(run: &Value) -> String {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "features")
        .map(|s| s["notes"].to_string())
        .unwrap_or_default()
}

fn shard_records(project: &Project) -> usize {
    fs::read_to_string(project.store().join("runs.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"stage\":\"features#shard\""))
        .count()
}

#[test]
fn shards_on_slurm_give_the_bytes_of_a_whole_local_run_and_new_images_make_one_shard() {
    let cluster = SlurmCluster::start();
    let whole = Project::new(&pipeline(40, false));
    let local = run_json(&whole, &cluster, &["--executor", "local"], &[]);
    assert!(actions(&local).values().all(|a| a == "computed"));

    let sharded = Project::new(&pipeline(40, true));
    let run = run_json(&sharded, &cluster, &[], &[]);
    assert!(
        notes(&run).contains("4 shard(s) of at most 10 item(s): 4 computed on Slurm"),
        "{run}"
    );
    assert!(features(&sharded) == features(&whole), "the same bytes");
    assert_eq!(
        sharded.object_meta("features")["key"],
        whole.object_meta("features")["key"],
        "sharding is not part of the key"
    );
    // runs.jsonl shows the four shards, then the merge.
    assert_eq!(shard_records(&sharded), 4);
    let logs = fs::read_dir(sharded.store().join("logs")).unwrap().count();
    assert_eq!(logs, 1, "one log folder for the array job");

    // gc keeps the last run's shards (and the logs of what it keeps).
    let out = onenet(&sharded, &cluster, &["gc"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read_dir(sharded.store().join("logs")).unwrap().count(),
        1
    );

    // Ten more images: one new shard, the four others reused.
    fs::write(sharded.path().join("pipeline.toml"), pipeline(50, true)).unwrap();
    let run = run_json(&sharded, &cluster, &[], &[]);
    assert!(
        notes(&run)
            .contains("5 shard(s) of at most 10 item(s): 1 computed on Slurm, 0 pulled, 4 reused"),
        "{run}"
    );
    assert_eq!(shard_records(&sharded), 5);
    let whole50 = Project::new(&pipeline(50, false));
    run_json(&whole50, &cluster, &["--executor", "local"], &[]);
    assert!(features(&sharded) == features(&whole50));
}

#[test]
fn a_failed_task_is_resubmitted_and_one_that_keeps_failing_names_its_log() {
    let cluster = SlurmCluster::start();
    let markers = tempfile::tempdir().unwrap();
    let marker_dir = markers.path().to_string_lossy().into_owned();
    let project = Project::new(&pipeline(20, true));
    let run = run_json(
        &project,
        &cluster,
        &[],
        &[("ONENET_TEST_FAIL_TASK_ONCE", marker_dir.as_str())],
    );
    assert!(notes(&run).contains("2 computed on Slurm"), "{run}");
    // Each task failed once (leaving its marker) and passed when resubmitted.
    assert_eq!(fs::read_dir(markers.path()).unwrap().count(), 2);

    // A task that fails every time: `retries = 1` allows two attempts, then the run fails,
    // naming the task's log.
    let broken = Project::new(&pipeline(20, true).replace("retries = 1", "retries = 0"));
    let fresh_markers = tempfile::tempdir().unwrap();
    let fresh = fresh_markers.path().to_string_lossy().into_owned();
    let out = onenet(
        &broken,
        &cluster,
        &["run"],
        &[("ONENET_TEST_FAIL_TASK_ONCE", fresh.as_str())],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("failed 1 time(s)") && said.contains(".err"),
        "{said}"
    );
    // The error quotes the end of the log, which says why.
    assert!(
        said.contains("it ends:") && said.contains("on purpose"),
        "{said}"
    );
    let log = said
        .split_whitespace()
        .map(|w| w.trim_end_matches(';'))
        .find(|w| w.ends_with(".err"))
        .expect("a log path");
    let log_text = fs::read_to_string(log).unwrap_or_default();
    assert!(log_text.contains("on purpose"), "{log}: {log_text}");
}

#[test]
fn an_interrupted_run_cancels_the_jobs_it_submitted() {
    let cluster = SlurmCluster::start();
    let project = Project::new(&pipeline(40, true));
    // Each shard task sleeps 30 s before computing: still running when the run is interrupted.
    let mut cmd = project.command(&["run"]);
    cmd.env("SLURM_CONF", &cluster.conf)
        .env("ONENET_TEST_STAGE_DELAY", "features#shard:30000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start onenet");
    let queued = || {
        let out = cluster
            .command("squeue")
            .args(["--noheader", "--format=%i"])
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let start = std::time::Instant::now();
    while queued() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "nothing was submitted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("interrupted: cancelled Slurm job"),
        "{}",
        text(&out)
    );
    let start = std::time::Instant::now();
    while queued() > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the jobs are still queued after the run ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!project.store().join("latest/features").exists());
}

/// The demo up to `train`, with `features` and `train` as Slurm jobs (one thread each, so the
/// result does not depend on how many CPUs a job is given).
fn training_pipeline() -> String {
    r#"
[executor]
kind = "slurm"
poll_seconds = 0.3
cpus_per_task = 1

[stages.demo]
kind = "demo_data"
params = { images = 20, image_size = 48, seed = 3 }

[stages.captions]
kind = "captions"
inputs = ["demo"]

[stages.images]
kind = "images"
inputs = ["demo"]

[stages.features]
kind = "features"
inputs = ["images"]
params = { weights = "random", batch_size = 4, threads = 1 }

[stages.order]
kind = "order"
inputs = ["captions", "features"]

[stages.order.resources]
local = true

[stages.train]
kind = "train"
inputs = ["order", "features", "captions"]
params = { epochs = 1, hidden_dim = 32, image_dim = 16, embed_dim = 16, dev_images = 4, threads = 1 }
"#
    .to_string()
}

/// Each variant's `train` key and the BLAKE3 of every file of that output, as its manifest
/// lists them, but the training log (it records wall-clock seconds).
fn trained(project: &Project, sweep: &Value) -> Vec<(String, Value)> {
    sweep["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let key = v["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "train")
                .map(|s| s["key"].as_str().unwrap().to_string())
                .expect("a train stage");
            let manifest: Value = serde_json::from_slice(
                &fs::read(
                    project
                        .store()
                        .join("objects")
                        .join(&key)
                        .join("_onenet.json"),
                )
                .unwrap(),
            )
            .unwrap();
            let files: Vec<Value> = manifest["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["path"] != "train_log.parquet")
                .cloned()
                .collect();
            assert!(files.iter().any(|f| f["path"] == "model.safetensors"));
            (key, Value::Array(files))
        })
        .collect()
}

#[test]
fn a_sweep_of_two_train_variants_as_slurm_jobs_equals_the_local_sweep() {
    let cluster = SlurmCluster::start();
    let args = ["--set", "train.seed=1,2", "--name", "two"];
    let on_slurm = Project::new(&training_pipeline());
    let sweep = run_json(&on_slurm, &cluster, &args, &[]);
    let local = Project::new(&training_pipeline());
    let mut local_args = args.to_vec();
    local_args.extend(["--executor", "local"]);
    let local_sweep = run_json(&local, &cluster, &local_args, &[]);

    let jobs = trained(&on_slurm, &sweep);
    assert_eq!(jobs.len(), 2);
    assert_ne!(jobs[0].0, jobs[1].0, "two seeds, two outputs");
    assert_eq!(
        jobs,
        trained(&local, &local_sweep),
        "Slurm and local differ"
    );
    // Each variant's train ran as a job of its own, with its log where the store keeps logs;
    // a table stage, and `order` (`local = true`), ran here.
    for (key, _) in &jobs {
        let dir = on_slurm.store().join("logs").join(key);
        let out_logs = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                name.starts_with("0.") && name.ends_with(".out")
            })
            .count();
        assert_eq!(out_logs, 1, "one job log in {}", dir.display());
    }
    let key_of = |stage: &str| {
        sweep["variants"][0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for here in ["captions", "order"] {
        assert!(!on_slurm.store().join("logs").join(key_of(here)).exists());
    }
    assert!(on_slurm
        .store()
        .join("logs")
        .join(key_of("features"))
        .exists());
    let notes = sweep["variants"][0]["stages"].to_string();
    assert!(notes.contains("computed as a Slurm job"), "{notes}");

    // A forced train is submitted again and replaces the output with an equal one.
    let forced = run_json(&on_slurm, &cluster, &["--force", "train"], &[]);
    let train = forced["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap()
        .clone();
    assert_eq!(train["action"], "computed", "{forced}");
    assert!(train["notes"].to_string().contains("Slurm job"), "{train}");
}

#[test]
fn force_recomputes_every_shard_and_gives_the_same_bytes() {
    let cluster = SlurmCluster::start();
    let project = Project::new(&pipeline(20, true));
    run_json(&project, &cluster, &[], &[]);
    let before = features(&project);
    let run = run_json(&project, &cluster, &["--force", "features"], &[]);
    assert!(
        notes(&run).contains("2 computed on Slurm, 0 pulled, 0 reused"),
        "{run}"
    );
    assert!(features(&project) == before);
    assert_eq!(shard_records(&project), 4);
}

#[test]
fn a_missing_sbatch_or_a_controller_that_is_down_names_the_executor_setting() {
    let project = Project::new(&pipeline(10, true));
    // No Slurm client on PATH.
    let empty = tempfile::tempdir().unwrap();
    let out = project
        .command(&["run"])
        .env("PATH", empty.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("[executor] kind = \"slurm\"") && said.contains("`sbatch` cannot be run"),
        "{said}"
    );
    assert!(!project.store().join("latest/features").exists());

    // A controller nobody answers for: a configuration naming a port nothing listens on.
    let conf_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = conf_dir.path().join("slurm.conf");
    fs::write(
        &conf,
        format!(
            "ClusterName=down\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort={port}\n\
             AuthType=auth/munge\nNodeName=localhost NodeAddr=127.0.0.1 CPUs=1\n\
             PartitionName=debug Nodes=localhost Default=YES\n"
        ),
    )
    .unwrap();
    let out = project
        .command(&["run"])
        .env("SLURM_CONF", &conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("`[executor]`") && said.contains("sbatch") && said.contains("controller"),
        "{said}"
    );
}

#[test]
fn status_takes_the_executor_a_run_would_use() {
    // Asking for a GPU puts `cuda` in a Slurm job's key; here (no GPU) it is `cpu`.
    let project = Project::new(&format!(
        "{}\n[stages.train.resources]\ngpus = 1\n",
        training_pipeline()
    ));
    let key = |args: &[&str]| {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        let status = project.json(&all);
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "train")
            .unwrap()["key"]
            .clone()
    };
    let as_file = key(&[]);
    assert_eq!(as_file, key(&["--executor", "slurm"]));
    assert_ne!(as_file, key(&["--executor", "local"]));
}

#[test]
fn a_missing_squeue_fails_the_run_at_once_naming_it() {
    let cluster = SlurmCluster::start();
    // sbatch and scancel, but no squeue; each shard task waits 20 s, so the queue is needed.
    let bin = tempfile::tempdir().unwrap();
    for program in ["sbatch", "scancel"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        std::os::unix::fs::symlink(&path, bin.path().join(program)).unwrap();
    }
    let project = Project::new(&pipeline(20, true));
    let start = std::time::Instant::now();
    let out = onenet(
        &project,
        &cluster,
        &["run"],
        &[
            ("PATH", bin.path().to_str().unwrap()),
            ("ONENET_TEST_STAGE_DELAY", "features#shard:20000"),
        ],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("`squeue` cannot be run"), "{said}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}
