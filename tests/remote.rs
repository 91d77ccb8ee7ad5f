//! End-to-end tests of the remote cache against a real S3 server: SeaweedFS (`weed mini`, which
//! `make test-deps` installs), started on free ports of 127.0.0.1 with authentication on, and
//! stopped after each test.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::s3::{free_ports, S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use support::{actions, copy_tree, project_with_data_folder, text, Project, SMALL_DEMO};

/// A project whose commands see the server's endpoint and credentials in the standard AWS
/// variables, and the remote in `ONENET_REMOTE` (under `prefix` of the bucket).
struct Machine<'a> {
    project: Project,
    server: &'a S3Server,
    prefix: String,
    env: Vec<(String, String)>,
}

impl<'a> Machine<'a> {
    fn new(server: &'a S3Server, prefix: &str) -> Machine<'a> {
        Machine::with_project(server, prefix, Project::new(SMALL_DEMO))
    }

    fn with_project(server: &'a S3Server, prefix: &str, project: Project) -> Machine<'a> {
        Machine {
            project,
            server,
            prefix: prefix.to_string(),
            env: Vec::new(),
        }
    }

    /// The same machine with one more environment setting.
    fn with_env(mut self, name: &str, value: &str) -> Machine<'a> {
        self.env.push((name.into(), value.into()));
        self
    }

    fn onenet(&self, args: &[&str]) -> Output {
        let mut cmd = self.project.command(args);
        cmd.env("AWS_ENDPOINT_URL", &self.server.endpoint)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("ONENET_REMOTE", format!("s3://{BUCKET}/{}", self.prefix))
            .stdin(Stdio::null());
        for (name, value) in &self.env {
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

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.onenet(&all);
        assert!(out.status.success(), "onenet {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn run(&self, args: &[&str]) -> BTreeMap<String, String> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        actions(&self.json(&all)).into_iter().collect()
    }

    fn states(&self, args: &[&str]) -> BTreeMap<String, String> {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        self.json(&all)["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn store(&self) -> PathBuf {
        self.project.store()
    }

    /// The newest object of `stage`, as (file → BLAKE3 of its bytes), `_onenet.json` included.
    fn object(&self, stage: &str) -> BTreeMap<String, String> {
        let dir = fs::canonicalize(self.store().join("latest").join(stage)).unwrap();
        let mut files = BTreeMap::new();
        collect(&dir, &dir, &mut files);
        files
    }

    fn key(&self, stage: &str) -> String {
        self.project.object_meta(stage)["key"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let hash = blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string();
            files.insert(name, hash);
        }
    }
}

fn all_are(actions: &BTreeMap<String, String>, what: &str) -> bool {
    !actions.is_empty() && actions.values().all(|a| a == what)
}

fn dir_is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_second_machine_pulls_what_the_first_computed_byte_for_byte() {
    let server = S3Server::start();
    let a = Machine::new(&server, "team");
    let computed = a.run(&[]);
    assert!(all_are(&computed, "computed"), "{computed:?}");

    let b = Machine::new(&server, "team");
    assert!(all_are(&b.states(&[]), "remote"));
    assert!(
        all_are(&b.states(&["--offline"]), "missing"),
        "--offline asks only the local store"
    );
    let pulled = b.run(&[]);
    assert!(all_are(&pulled, "pulled"), "{pulled:?}");
    for stage in ["demo", "captions", "images"] {
        assert_eq!(a.object(stage), b.object(stage), "{stage}");
    }
    let runs = fs::read_to_string(b.store().join("runs.jsonl")).unwrap();
    assert_eq!(runs.matches("\"action\":\"pulled\"").count(), 3, "{runs}");
    assert!(all_are(&b.run(&[]), "cached"));
    assert!(all_are(&b.states(&[]), "fresh"));

    // Another prefix of the same bucket is another cache.
    let c = Machine::new(&server, "elsewhere");
    assert!(all_are(&c.states(&[]), "missing"));
}

/// Images and features (random backbone weights) of the dataset folder `root`.
fn features_pipeline(root: &str) -> String {
    format!(
        r#"
[stages.images]
kind = "images"
params = {{ root = "{root}" }}

[stages.features]
kind = "features"
inputs = ["images"]
params = {{ weights = "random", batch_size = 4 }}
"#
    )
}

#[test]
fn a_machine_whose_dataset_is_elsewhere_pulls_and_then_reads_its_own_pictures() {
    let server = S3Server::start();
    let a = Machine::with_project(
        &server,
        "moved",
        project_with_data_folder(&features_pipeline("data")),
    );
    assert!(all_are(&a.run(&[]), "computed"));
    let b = Machine::with_project(
        &server,
        "moved",
        Project::new(&features_pipeline("otherdata")),
    );
    copy_tree(
        &a.project.path().join("data"),
        &b.project.path().join("otherdata"),
    );
    let pulled = b.run(&[]);
    assert!(all_are(&pulled, "pulled"), "{pulled:?}");
    // No table of the second machine names the first one's folder.
    for (stage, table) in [("images", "images.parquet"), ("features", "rows.parquet")] {
        let path = b.store().join("latest").join(stage).join(table);
        let read = onenet_stages::table::read_parquet(&path).unwrap();
        let names = onenet_stages::table::strings(&path, &read, "path").unwrap();
        assert!(!names.is_empty());
        for name in names {
            assert!(name.starts_with("Flicker8k_Dataset/"), "{stage}: {name}");
        }
    }
    let features = b.object("features");
    fs::remove_dir_all(a.project.path()).unwrap();
    let forced = b.run(&["--force", "features"]);
    assert_eq!(forced["features"], "computed", "{forced:?}");
    let again = b.object("features");
    for file in ["features.safetensors", "rows.parquet"] {
        assert_eq!(again[file], features[file], "{file} differs");
    }
}

#[test]
fn two_machines_computing_one_key_keep_the_first_manifest() {
    let server = S3Server::start();
    let a = Machine::new(&server, "race");
    let b = Machine::new(&server, "race");
    assert!(all_are(&a.run(&["--no-push"]), "computed"));
    assert!(all_are(&b.run(&["--no-push"]), "computed"));
    assert!(server.list("race").is_empty(), "--no-push uploads nothing");
    // The two objects differ in what they record (time taken, when made).
    assert_ne!(
        a.object("demo")["_onenet.json"],
        b.object("demo")["_onenet.json"]
    );

    let pushed = a.json(&["push"]);
    let outcomes: Vec<&str> = pushed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["pushed"; 3]);
    let again = b.json(&["push", "demo"]);
    assert_eq!(again["objects"][0]["outcome"], "already in the remote");

    let c = Machine::new(&server, "race");
    let pulled = c.json(&["pull"]);
    assert_eq!(pulled["objects"].as_array().unwrap().len(), 3);
    for stage in ["demo", "captions", "images"] {
        assert_eq!(
            c.object(stage),
            a.object(stage),
            "{stage}: the first push won"
        );
    }
}

#[test]
fn a_damaged_blob_is_recomputed_never_used_and_the_push_repairs_it() {
    let server = S3Server::start();
    let a = Machine::new(&server, "damage");
    a.run(&[]);
    let meta = a.project.object_meta("captions");
    let file = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "captions.parquet")
        .unwrap();
    let hash = file["blake3"].as_str().unwrap();
    let blob = format!("damage/blobs/{}/{hash}", &hash[..2]);
    let good = server.get(&blob).expect("the blob was pushed");
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    server.put(&blob, &bad);

    let b = Machine::new(&server, "damage");
    let out = b.onenet(&["run"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("computed  captions"), "{stdout}");
    assert!(stdout.contains("pulled    demo"), "{stdout}");
    assert!(
        text(&out).contains("cannot be used") && text(&out).contains("damaged"),
        "{}",
        text(&out)
    );
    let data = |m: &Machine| {
        let mut files = m.object("captions");
        files.remove("_onenet.json");
        files
    };
    assert_eq!(data(&b), data(&a), "recomputed to the same bytes");
    assert!(
        server.get(&blob) == Some(good),
        "the recomputing machine's push repaired it"
    );

    let c = Machine::new(&server, "damage");
    assert!(all_are(&c.run(&[]), "pulled"));
}

#[test]
fn errors_name_the_remote_and_what_to_check_and_leave_nothing_behind() {
    let server = S3Server::start();
    let good = Machine::new(&server, "errors");
    let check = good.json(&["remote", "check"]);
    assert_eq!(check["ok"], true, "{check}");

    let wrong = Machine::new(&server, "errors").with_env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = wrong.onenet(&["run"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("s3://onenet-cache/errors") && said.contains("check the credentials"),
        "{said}"
    );
    assert!(dir_is_empty(&wrong.store().join("objects")), "no object");
    assert!(
        dir_is_empty(&wrong.store().join("tmp")),
        "no partial download"
    );
    let check = wrong.onenet(&["remote", "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(text(&check).contains("FAIL"), "{}", text(&check));

    let closed = free_ports(1)[0];
    let down = Machine::new(&server, "errors")
        .with_env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{closed}"));
    let start = Instant::now();
    let out = down.onenet(&["run"]);
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "a server that is down is reported promptly"
    );
    let said = text(&out);
    assert!(
        said.contains("server is up") && said.contains("--offline"),
        "{said}"
    );
    assert!(dir_is_empty(&down.store().join("objects")));
    assert!(all_are(&down.run(&["--offline"]), "computed"));
}

#[test]
fn gc_remote_removes_manifests_no_pin_or_newest_output_needs() {
    let server = S3Server::start();
    let a = Machine::new(&server, "gc");
    let pipeline = a.project.path().join("pipeline.toml");
    let with_min_count = |n: u32| {
        let text = SMALL_DEMO.replace(
            "kind = \"captions\"\ninputs = [\"demo\"]",
            &format!("kind = \"captions\"\ninputs = [\"demo\"]\nparams = {{ min_count = {n} }}"),
        );
        fs::write(&pipeline, text).unwrap();
    };
    with_min_count(1);
    a.run(&[]);
    let pinned = a.key("captions");
    assert!(a.onenet(&["pin", "v1"]).status.success());
    with_min_count(40);
    a.run(&[]);
    let dropped = a.key("captions");
    with_min_count(1000);
    a.run(&[]);
    let newest = a.key("captions");
    let manifest = |key: &str| format!("gc/objects/{key}/_onenet.json");
    for key in [&pinned, &dropped, &newest] {
        assert!(server.get(&manifest(key)).is_some());
    }

    let dry = a.json(&["gc", "--remote", "--dry-run"]);
    assert_eq!(
        dry["manifests_removed"],
        serde_json::json!([dropped]),
        "{dry}"
    );
    assert!(
        server.get(&manifest(&dropped)).is_some(),
        "a dry run removes nothing"
    );

    let done = a.json(&["gc", "--remote"]);
    assert_eq!(done["manifests_removed"], dry["manifests_removed"]);
    assert!(server.get(&manifest(&dropped)).is_none());
    assert!(server.get(&manifest(&pinned)).is_some(), "the pin keeps it");
    assert!(
        server.get(&manifest(&newest)).is_some(),
        "the newest output"
    );
    assert!(
        server.get(&manifest(&a.key("demo"))).is_some(),
        "upstream of what is kept"
    );
    // Blobs just pushed are left for an hour (a push may be between its blobs and manifest).
    assert!(done["blobs_too_young"].as_u64().unwrap() >= 1, "{done}");
    assert_eq!(done["blobs_removed"], 0);

    // Local gc is untouched by --remote.
    assert_eq!(fs::read_dir(a.store().join("objects")).unwrap().count(), 5);
}

#[test]
fn push_and_pull_move_the_named_stages_only() {
    let server = S3Server::start();
    let a = Machine::new(&server, "named");
    a.run(&["--no-push"]);
    let pushed = a.json(&["push", "captions"]);
    assert_eq!(pushed["objects"].as_array().unwrap().len(), 1);
    assert_eq!(pushed["objects"][0]["stage"], "captions");
    assert!(pushed["objects"][0]["bytes"].as_u64().unwrap() > 0);

    let b = Machine::new(&server, "named");
    let states = b.states(&[]);
    assert_eq!(states["captions"], "remote");
    assert_eq!(states["demo"], "missing");
    let pulled = b.json(&["pull", "captions"]);
    assert_eq!(pulled["objects"][0]["outcome"], "pulled");
    assert_eq!(b.object("captions"), a.object("captions"));
    let out = b.onenet(&["pull", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not in the remote"), "{}", text(&out));

    let out = b.onenet(&["push", "nosuchstage"]);
    assert_eq!(out.status.code(), Some(2));
    let out = b.onenet(&["push", "--offline"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
