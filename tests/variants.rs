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
