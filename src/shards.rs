//! Sharded stages: which items go in which shard, each shard's cache key, and the shard layout
//! remembered between runs, so that adding items makes new shards rather than reshuffling the
//! old ones.
//!
//! A shard is a cached object of its own. Its key covers what the stage's key covers except the
//! upstream keys (a shard does not depend on which other items exist): the kind and version, the
//! params, the source files' hashes, the environment, and the sorted content hashes of its
//! items. The layout is kept in `shards/<stage>.json`: a run keeps every remembered shard whose
//! items all still exist, and puts the items no kept shard holds, sorted by hash, into new shards
//! of at most `per_shard` items. Adding ten images to a dataset therefore adds one shard and
//! recomputes nothing else; removing an image re-forms only the shard that held it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use onenet_contract::ShardItem;
use serde::{Deserialize, Serialize};

use crate::key::{CacheKey, KeyInputs, KeyParam};

/// One shard: its items' content hashes (sorted, unique), its key and what the key covers.
#[derive(Debug, Clone)]
pub struct Shard {
    pub hashes: Vec<String>,
    pub key_inputs: KeyInputs,
    pub key: CacheKey,
}

/// The remembered layout: each shard's item hashes, and the shards' keys (which `gc` keeps).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Layout {
    shards: Vec<Vec<String>>,
    #[serde(default)]
    keys: Vec<String>,
}

/// The kind recorded in a shard's key and metadata: `<kind>#shard`.
pub fn shard_kind(kind: &str) -> String {
    format!("{kind}#shard")
}

/// The shards of `items` for a stage whose key covers `stage_inputs`, starting from the layout
/// in `layout_file` (missing or unreadable: none).
pub fn plan(
    stage_inputs: &KeyInputs,
    items: &[ShardItem],
    per_shard: usize,
    layout_file: &Path,
) -> Vec<Shard> {
    let wanted: BTreeSet<&str> = items.iter().map(|i| i.hash.as_str()).collect();
    let remembered: Layout = std::fs::read(layout_file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut taken: HashSet<&str> = HashSet::new();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for shard in &remembered.shards {
        let whole = !shard.is_empty()
            && shard.len() <= per_shard
            && shard
                .iter()
                .all(|h| wanted.contains(h.as_str()) && !taken.contains(h.as_str()));
        if whole {
            taken.extend(shard.iter().map(String::as_str));
            groups.push(shard.clone());
        }
    }
    let rest: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|h| !taken.contains(h))
        .collect();
    for chunk in rest.chunks(per_shard.max(1)) {
        groups.push(chunk.iter().map(|h| h.to_string()).collect());
    }
    groups
        .into_iter()
        .map(|mut hashes| {
            hashes.sort();
            let key_inputs = shard_key_inputs(stage_inputs, &hashes);
            Shard {
                key: key_inputs.key(),
                key_inputs,
                hashes,
            }
        })
        .collect()
}

/// Remembers `shards` as the layout for the next run (best effort: without it, the next run
/// re-forms its shards from scratch, which costs time, never correctness).
pub fn remember(shards: &[Shard], layout_file: &Path) {
    let layout = Layout {
        shards: shards.iter().map(|s| s.hashes.clone()).collect(),
        keys: shards.iter().map(|s| s.key.hex()).collect(),
    };
    if let Some(dir) = layout_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = layout_file.with_extension(format!("json.{}", std::process::id()));
    if std::fs::write(&tmp, serde_json::to_vec(&layout).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, layout_file);
    }
}

/// The keys of the shards each sharded stage's last run used (`<dir>/<stage>.json`), by stage.
pub fn remembered_keys(dir: &Path) -> Vec<(String, CacheKey)> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(stage) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let layout: Layout = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        keys.extend(
            layout
                .keys
                .iter()
                .filter_map(|hex| CacheKey::from_hex(hex))
                .map(|key| (stage.to_string(), key)),
        );
    }
    keys
}

fn shard_key_inputs(stage: &KeyInputs, hashes: &[String]) -> KeyInputs {
    let mut params: BTreeMap<String, KeyParam> = stage.params.clone();
    params.insert(
        "shard_items".into(),
        KeyParam::Str(
            blake3::hash(hashes.join("\n").as_bytes())
                .to_hex()
                .to_string(),
        ),
    );
    KeyInputs {
        format: stage.format,
        kind: shard_kind(&stage.kind),
        version: stage.version,
        params,
        upstream: Vec::new(),
        sources: stage.sources.clone(),
        environment: stage.environment.clone(),
        recorded: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KEY_FORMAT;

    fn stage() -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT,
            kind: "features".into(),
            version: 3,
            params: BTreeMap::new(),
            upstream: vec![("images".into(), "ab".repeat(32))],
            sources: BTreeMap::new(),
            environment: BTreeMap::new(),
            recorded: BTreeMap::new(),
        }
    }

    fn items(range: std::ops::Range<u32>) -> Vec<ShardItem> {
        range
            .map(|i| ShardItem {
                id: format!("img{i}"),
                hash: blake3::hash(&i.to_le_bytes()).to_hex().to_string(),
            })
            .collect()
    }

    #[test]
    fn adding_items_adds_a_shard_and_keeps_every_other_key() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("shards/features.json");
        let first = plan(&stage(), &items(0..40), 10, &layout);
        assert_eq!(first.len(), 4);
        assert!(first.iter().all(|s| s.hashes.len() == 10));
        remember(&first, &layout);

        let second = plan(&stage(), &items(0..50), 10, &layout);
        assert_eq!(second.len(), 5);
        let old: BTreeSet<CacheKey> = first.iter().map(|s| s.key).collect();
        let new: Vec<&Shard> = second.iter().filter(|s| !old.contains(&s.key)).collect();
        assert_eq!(new.len(), 1, "only the ten new items make a new shard");
        assert_eq!(new[0].hashes.len(), 10);

        let kept: Vec<CacheKey> = remembered_keys(&dir.path().join("shards"))
            .into_iter()
            .map(|(stage, key)| {
                assert_eq!(stage, "features");
                key
            })
            .collect();
        assert_eq!(kept, first.iter().map(|s| s.key).collect::<Vec<_>>());

        // Without the layout, the same items give the same shards: the layout is history, the
        // key is content.
        let fresh = plan(&stage(), &items(0..40), 10, &dir.path().join("none.json"));
        let keys: Vec<CacheKey> = fresh.iter().map(|s| s.key).collect();
        assert_eq!(keys, first.iter().map(|s| s.key).collect::<Vec<_>>());
    }

    #[test]
    fn a_removed_item_re_forms_only_its_shard_and_upstream_keys_do_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("l.json");
        let first = plan(&stage(), &items(0..40), 10, &layout);
        remember(&first, &layout);
        let mut fewer = items(0..40);
        let gone = fewer.remove(7).hash;
        let mut other_upstream = stage();
        other_upstream.upstream = vec![("images".into(), "cd".repeat(32))];
        let second = plan(&other_upstream, &fewer, 10, &layout);
        let kept = second
            .iter()
            .filter(|s| first.iter().any(|f| f.key == s.key))
            .count();
        assert_eq!(kept, 3);
        assert!(second.iter().all(|s| !s.hashes.contains(&gone)));
        assert_eq!(second.iter().map(|s| s.hashes.len()).sum::<usize>(), 39);
        assert!(second.iter().all(|s| s.key_inputs.upstream.is_empty()));
    }
}
