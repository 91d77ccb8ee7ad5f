//! The tables `onenet query` can read, named as the query spells them: `<stage>.<table>` for the
//! output each stage of the pipeline file resolves to (what `status` calls fresh and `show`
//! shows), `<stage>@<key12>.<table>` for every object in the store (`key12`: the first twelve
//! hex digits of its cache key, as `run`, `status` and `exp show` print them), and `runs` for
//! the run log.

use std::path::Path;

use onenet::engine::Engine;
use onenet::store::ObjectMeta;
use onenet_query::Catalog;

/// How many hex digits of a key name an older output's tables.
pub const KEY_PREFIX_LEN: usize = 12;

/// The catalog of `engine`'s store, and a warning for each run-log line that had to be skipped.
pub fn catalog(engine: &Engine) -> (Catalog, Vec<String>) {
    let mut catalog = Catalog::new();
    let store = &engine.store;
    for stage in &engine.pipeline.stages {
        let key = store.latest_key(&stage.name);
        if let Some((key, meta)) = key.and_then(|k| store.meta(&k).map(|m| (k, m))) {
            add_meta_tables(&mut catalog, &stage.name, &store.object_dir(&key), &meta);
        }
    }
    for key in store.object_keys() {
        let Some(meta) = store.meta(&key) else {
            continue;
        };
        let hex = key.hex();
        let prefix = &hex[..KEY_PREFIX_LEN.min(hex.len())];
        add_meta_tables(
            &mut catalog,
            &format!("{}@{prefix}", meta.stage),
            &store.object_dir(&key),
            &meta,
        );
    }
    let mut warnings = Vec::new();
    match store.records() {
        Ok(log) => {
            warnings.extend(log.warnings);
            let mut lines = Vec::new();
            for record in &log.records {
                if let Ok(line) = serde_json::to_vec(record) {
                    lines.extend(line);
                    lines.push(b'\n');
                }
            }
            catalog.add_ndjson("runs", lines);
        }
        Err(e) => warnings.push(format!("the run log cannot be read ({e}): no `runs` table")),
    }
    (catalog, warnings)
}

/// Adds the Parquet files at the top of an object folder as `<prefix>.<file stem>`: the files
/// its manifest lists, not whatever the folder holds now (a stray file is not one of its tables).
fn add_meta_tables(catalog: &mut Catalog, prefix: &str, dir: &Path, meta: &ObjectMeta) {
    for file in &meta.files {
        let path = Path::new(&file.path);
        if path.components().count() != 1 {
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            catalog.add_parquet(&format!("{prefix}.{stem}"), &dir.join(path));
        }
    }
}
