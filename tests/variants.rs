//! End-to-end tests of variants: a one-off `run --set` or a second pipeline file sharing the
//! store never changes what a pipeline file's `latest/` shows, and `gc` never deletes what any
//! pipeline file that ran against the store resolves to.

mod support;

use std::fs;

use support::{all, text, Project, SMALL_DEMO};

#[test]
fn a_variant_run_then_gc_loses_nothing_the_pipeline_needs() {
    let p = Project::new(SMALL_DEMO);
    assert!(all(&p.run(&[]), "computed"));
    let own = p.keys(&[]);

    let variant = p.run(&["--set", "captions.min_count=2"]);
    assert_eq!(variant["captions"], "computed");
    // Its summary does not point at `latest/`, which does not hold its outputs.
    let again = p.onenet(&["run", "--set", "captions.min_count=2"]);
    let summary = text(&again);
    assert!(
        again.status.success()
            && summary.contains("a variant: its outputs are in the store by key")
            && !summary.contains("newest outputs in"),
        "{summary}"
    );
    // The variant's output is in the store, but the pipeline's view still shows its own.
    let latest = fs::read_link(p.store().join("latest/captions")).unwrap();
    assert!(latest.ends_with(&own["captions"]), "{latest:?}");
    for (name, (state, reasons)) in p.status(&[]) {
        assert_eq!(state, "fresh", "{name}: {reasons:?}");
        assert!(reasons.is_empty(), "{name}: {reasons:?}");
    }

    let out = p.onenet(&["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    for (name, (state, _)) in p.status(&[]) {
        assert_eq!(state, "fresh", "{name} after gc");
    }
    let again = p.run(&[]);
    assert!(all(&again, "cached"), "{again:?}");
    // The variant itself was not needed by any pipeline file: gc removed it.
    let status = p.status(&["--set", "captions.min_count=2"]);
    assert_eq!(status["captions"].0, "stale", "{status:?}");
}

#[test]
fn two_pipeline_files_sharing_a_store_keep_their_own_views_through_gc() {
    let p = Project::new(SMALL_DEMO);
    let other = SMALL_DEMO.replace("seed = 3", "seed = 5");
    fs::write(
        p.path().join("other.toml"),
        format!("[store]\npath = \"artifacts\"\n{other}"),
    )
    .unwrap();
    assert!(all(&p.run(&[]), "computed"));
    let other_run = p.run(&["--pipeline", "other.toml"]);
    assert!(all(&other_run, "computed"), "{other_run:?}");
    // Each file has its own view of the newest outputs.
    let own = p.keys(&[]);
    let theirs = p.keys(&["--pipeline", "other.toml"]);
    assert_ne!(own["demo"], theirs["demo"]);
    let latest = fs::read_link(p.store().join("latest/demo")).unwrap();
    assert!(latest.ends_with(&own["demo"]), "{latest:?}");
    let view = fs::read_link(p.store().join("views/other/demo")).unwrap();
    assert!(view.ends_with(&theirs["demo"]), "{view:?}");

    let out = p.onenet(&["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(all(&p.run(&[]), "cached"));
    let other_again = p.run(&["--pipeline", "other.toml"]);
    assert!(all(&other_again, "cached"), "{other_again:?}");
}

#[test]
fn gc_keeps_what_the_file_resolves_to_even_when_its_view_was_never_updated() {
    // A pipeline whose file changed back and forth: what it reads now is kept, what it last ran
    // is kept, an older variant is not.
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let first = p.keys(&[]);
    fs::write(
        p.path().join("pipeline.toml"),
        SMALL_DEMO.replace(
            "inputs = [\"demo\"]\n\n[stages.images]",
            "inputs = [\"demo\"]\nparams = { min_count = 2 }\n\n[stages.images]",
        ),
    )
    .unwrap();
    p.run(&[]);
    let second = p.keys(&[]);
    assert_ne!(first["captions"], second["captions"]);
    let out = p.onenet(&["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    // The older output, which no file resolves to any more, is gone; the current one stays.
    assert!(!p.store().join("objects").join(&first["captions"]).exists());
    assert!(p.store().join("objects").join(&second["captions"]).exists());
    assert!(all(&p.run(&[]), "cached"));
}

/// The object folders in the store.
fn objects(p: &Project) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(p.store().join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_pin_keeps_its_objects_and_their_upstream_through_gc() {
    let p = Project::new(SMALL_DEMO);
    p.run(&[]);
    let pinned = p.keys(&[]);
    let made = p.json(&["pin", "base"]);
    assert_eq!(made[0]["name"], "base");
    assert_eq!(made[0]["keys"]["captions"], pinned["captions"].as_str());
    // The pipeline file moves on; a variant runs and is not pinned.
    let variant = p.run(&["--set", "captions.min_count=3"]);
    assert_eq!(variant["captions"], "computed");
    let variant_key = p.keys(&["--set", "captions.min_count=3"])["captions"].clone();
    fs::write(
        p.path().join("pipeline.toml"),
        SMALL_DEMO.replace("seed = 3", "seed = 4"),
    )
    .unwrap();
    p.run(&[]);
    let now = p.keys(&[]);
    assert_ne!(now["captions"], pinned["captions"]);

    let dry = p.json(&["gc", "--dry-run"]);
    let kept_for = |key: &str| -> Vec<String> {
        dry["kept_objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == key)
            .map(|o| {
                o["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(kept_for(&pinned["captions"]), ["pin base: captions"]);
    // The pinned captions' upstream demo output is kept because of it.
    assert!(
        kept_for(&pinned["demo"])
            .iter()
            .any(|r| r.starts_with("pin base: demo") || r.starts_with("upstream of captions")),
        "{:?}",
        kept_for(&pinned["demo"])
    );
    let removed: Vec<&str> = dry["removed_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [variant_key.as_str()], "{dry:#}");

    let out = p.onenet(&["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = objects(&p);
    for stage in ["demo", "captions", "images"] {
        assert!(left.contains(&pinned[stage]), "pinned {stage} removed");
        assert!(left.contains(&now[stage]), "current {stage} removed");
    }
    assert!(
        !left.contains(&variant_key),
        "the unpinned variant survived gc"
    );
    // Its experiment record named only what gc removed: it is forgotten too.
    let experiments: Vec<_> = fs::read_dir(p.store().join("experiments"))
        .unwrap()
        .collect();
    assert!(experiments.is_empty(), "{experiments:?}");

    let pins = p.json(&["pins"]);
    assert_eq!(pins[0]["name"], "base");
    assert_eq!(pins[0]["present"], true);
    // Unpinned, the old outputs go at the next gc.
    let out = p.onenet(&["unpin", "base"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.onenet(&["unpin", "base"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no pin named `base`"), "{}", text(&out));
    p.onenet(&["gc"]);
    assert!(!objects(&p).contains(&pinned["captions"]));
    assert!(objects(&p).contains(&now["captions"]));
}

#[test]
fn a_sweep_runs_every_combination_once_and_again_computes_nothing() {
    let p = Project::new(SMALL_DEMO);
    let args = [
        "run",
        "--set",
        "captions.min_count=1,2",
        "--set",
        "demo.image_size=48,40",
        "--name",
        "grid",
    ];
    let sweep = p.json(&args);
    let variants = sweep["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    assert_eq!(
        variants[1]["set"],
        serde_json::json!(["captions.min_count=1", "demo.image_size=40"])
    );
    let computed = |stage: &str, v: &serde_json::Value| -> usize {
        v["variants"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| v["stages"].as_array().unwrap())
            .filter(|s| s["name"] == stage && s["action"] == "computed")
            .count()
    };
    // Two demo datasets, shared by the two caption settings each; images follow the datasets.
    assert_eq!(computed("demo", &sweep), 2, "{sweep:#}");
    assert_eq!(computed("images", &sweep), 2, "{sweep:#}");
    assert_eq!(computed("captions", &sweep), 4, "{sweep:#}");
    // The table: the furthest-downstream stage's outputs of the sweep (no stage reports
    // metrics here), with the params that differ between them.
    let table = sweep["table"].as_array().unwrap();
    assert!(!table.is_empty());
    for row in table {
        assert!(row["marks"].to_string().contains("exp:grid-"), "{row}");
    }
    // Every variant was recorded; `exp show --sweep` lists the same rows.
    let shown = p.json(&["exp", "show", "--sweep", "grid"]);
    assert_eq!(shown.as_array().unwrap().len(), table.len());
    // Again: nothing is computed.
    let again = p.json(&args);
    for stage in ["demo", "images", "captions"] {
        assert_eq!(computed(stage, &again), 0, "{again:#}");
    }
    // The sweep's captions outputs differ only in what was swept.
    let captions = p.json(&["exp", "show", "--stage", "captions", "--sweep", "grid"]);
    let rows = captions.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{captions:#}");
    let params: std::collections::BTreeSet<String> = rows
        .iter()
        .flat_map(|r| r["params"].as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        params.into_iter().collect::<Vec<_>>(),
        ["captions.min_count", "demo.image_size"]
    );
}

#[test]
fn a_malformed_sweep_is_refused_before_anything_runs() {
    let p = Project::new(SMALL_DEMO);
    for (args, said) in [
        (vec!["run", "--set", "captions.min_count="], "empty value"),
        (
            vec!["run", "--set", "captions.min_count=1,,2"],
            "empty value",
        ),
        (
            vec!["run", "--set", "captions.min_cont=1,2"],
            "has no param `min_cont`",
        ),
        (vec!["run", "--set", "captions.min_count=1,x"], "min_count"),
        (vec!["run", "--sweep", "nope"], "no [sweeps.nope]"),
        (
            vec!["metrics", "--set", "captions.min_count=1,2"],
            "several values (a sweep) are run only by `onenet run`",
        ),
        (
            vec!["status", "--set", "captions.variant=\"raw\",'lemma'"],
            "several values (a sweep) are run only by `onenet run`",
        ),
        // The task commands, answered by the libtorch worker, say it the same way.
        (
            vec!["caption", "--set", "captions.min_cont=1", "picture.jpg"],
            "has no param `min_cont`",
        ),
        (
            vec!["similar-words", "--set", "captions.min_count=x", "red"],
            "min_count",
        ),
    ] {
        let out = p.onenet(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(said), "{args:?}: {}", text(&out));
    }
    assert!(
        !p.store().join("objects").exists() || objects(&p).is_empty(),
        "something ran"
    );

    // A sweep declared in the file is checked like the rest of it.
    let typo = format!("{SMALL_DEMO}\n[sweeps.counts]\ncaptions.min_cont = [1, 2]\n");
    fs::write(p.path().join("pipeline.toml"), &typo).unwrap();
    let out = p.onenet(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(
        said.contains("pipeline.toml:15:1: sweep `counts`"),
        "{said}"
    );
    assert!(
        said.contains("has no param `min_cont` (did you mean `min_count`?)"),
        "{said}"
    );
    let wrong_type = format!("{SMALL_DEMO}\n[sweeps.counts]\ncaptions.min_count = [1, \"two\"]\n");
    fs::write(p.path().join("pipeline.toml"), wrong_type).unwrap();
    let said = text(&p.onenet(&["status"]));
    assert!(
        said.contains("sweep `counts`: `captions.min_count`"),
        "{said}"
    );

    // A good one runs with --sweep.
    let good = format!("{SMALL_DEMO}\n[sweeps.counts]\ncaptions.min_count = [1, 2]\n");
    fs::write(p.path().join("pipeline.toml"), good).unwrap();
    let sweep = p.json(&["run", "--sweep", "counts"]);
    assert_eq!(sweep["sweep"], "counts");
    assert_eq!(sweep["variants"].as_array().unwrap().len(), 2);
}
