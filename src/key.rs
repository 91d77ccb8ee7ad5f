//! Cache keys: what goes into a stage's key, its canonical encoding, and the explanation of why
//! a key changed.
//!
//! | field         | what it holds                                                  |
//! |---------------|----------------------------------------------------------------|
//! | format        | `KEY_FORMAT`, bumped if this encoding ever changes             |
//! | kind, version | the stage kind and its code version (`StageKind::version`)     |
//! | params        | every param, defaults filled in, sorted by name, typed         |
//! | upstream      | each input stage's name and key, in declared order             |
//! | sources       | each external file the stage reads and its BLAKE3 content hash |
//! | environment   | what changes numerical results: libtorch version, device kind  |
//!
//! The key is BLAKE3 over a length-prefixed, tagged encoding of these fields, never `std::hash`
//! (which is neither stable across Rust versions nor meant for persistence). Floats are encoded
//! by their bits after normalising `-0.0`, so `1` and `1.0` for a float param (both checked into
//! `1.0`) hash alike.

use std::collections::BTreeMap;
use std::fmt;

use onenet_stages::ParamValue;
use serde::{Deserialize, Serialize};

/// Version of the key encoding itself.
pub const KEY_FORMAT: u32 = 1;

/// A stage's cache key: 32 bytes of BLAKE3, shown as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn from_hex(hex: &str) -> Option<CacheKey> {
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|h| CacheKey(*h.as_bytes()))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// A param value as stored beside an artifact (JSON) and as hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum KeyParam {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl From<&ParamValue> for KeyParam {
    fn from(v: &ParamValue) -> Self {
        match v {
            ParamValue::Int(i) => KeyParam::Int(*i),
            ParamValue::Float(f) => KeyParam::Float(if *f == 0.0 { 0.0 } else { *f }),
            ParamValue::Bool(b) => KeyParam::Bool(*b),
            ParamValue::Str(s) => KeyParam::Str(s.clone()),
        }
    }
}

impl fmt::Display for KeyParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyParam::Int(v) => write!(f, "{v}"),
            KeyParam::Float(v) => write!(f, "{v:?}"),
            KeyParam::Bool(v) => write!(f, "{v}"),
            KeyParam::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// Everything a key is computed from, kept beside each artifact so a later run can say what
/// changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub format: u32,
    pub kind: String,
    pub version: u32,
    pub params: BTreeMap<String, KeyParam>,
    /// (input stage name, its key hex), in declared order.
    pub upstream: Vec<(String, String)>,
    /// File path (as the stage named it) to BLAKE3 hex of its content.
    pub sources: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
}

impl KeyInputs {
    /// The key these inputs hash to.
    pub fn key(&self) -> CacheKey {
        let mut h = blake3::Hasher::new();
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("format", &self.format.to_le_bytes());
        field("kind", self.kind.as_bytes());
        field("version", &self.version.to_le_bytes());
        field("params", &(self.params.len() as u64).to_le_bytes());
        for (name, value) in &self.params {
            field("name", name.as_bytes());
            match value {
                KeyParam::Int(v) => field("int", &v.to_le_bytes()),
                KeyParam::Float(v) => field("float", &v.to_bits().to_le_bytes()),
                KeyParam::Bool(v) => field("bool", &[u8::from(*v)]),
                KeyParam::Str(v) => field("str", v.as_bytes()),
            }
        }
        field("upstream", &(self.upstream.len() as u64).to_le_bytes());
        for (name, key) in &self.upstream {
            field("name", name.as_bytes());
            field("key", key.as_bytes());
        }
        field("sources", &(self.sources.len() as u64).to_le_bytes());
        for (path, hash) in &self.sources {
            field("path", path.as_bytes());
            field("hash", hash.as_bytes());
        }
        field(
            "environment",
            &(self.environment.len() as u64).to_le_bytes(),
        );
        for (name, value) in &self.environment {
            field("name", name.as_bytes());
            field("value", value.as_bytes());
        }
        CacheKey(*h.finalize().as_bytes())
    }

    /// Why a stage with these inputs differs from its earlier run with `old`, one reason per
    /// changed field, old → new ("param min_count 1 → 3", "2 files changed", "upstream demo
    /// changed").
    pub fn changes_from(&self, old: &KeyInputs) -> Vec<String> {
        let mut reasons = Vec::new();
        if old.format != self.format {
            reasons.push(format!("key format {} → {}", old.format, self.format));
        }
        if old.kind != self.kind {
            reasons.push(format!("kind {} → {}", old.kind, self.kind));
        } else if old.version != self.version {
            reasons.push(format!("code version {} → {}", old.version, self.version));
        }
        for (name, new) in &self.params {
            match old.params.get(name) {
                Some(prev) if prev == new => {}
                Some(prev) => reasons.push(format!("param {name} {prev} → {new}")),
                None => reasons.push(format!("param {name} (new) = {new}")),
            }
        }
        for (name, prev) in &old.params {
            if !self.params.contains_key(name) {
                reasons.push(format!("param {name} {prev} → (unset)"));
            }
        }
        let old_upstream: BTreeMap<&str, &str> = old
            .upstream
            .iter()
            .map(|(n, k)| (n.as_str(), k.as_str()))
            .collect();
        for (name, key) in &self.upstream {
            match old_upstream.get(name.as_str()) {
                Some(prev) if *prev == key => {}
                Some(_) => reasons.push(format!("upstream {name} changed")),
                None => reasons.push(format!("new input {name}")),
            }
        }
        for (name, _) in &old.upstream {
            if !self.upstream.iter().any(|(n, _)| n == name) {
                reasons.push(format!("input {name} removed"));
            }
        }
        if let Some(files) = describe_file_changes(&old.sources, &self.sources) {
            reasons.push(files);
        }
        for (name, new) in &self.environment {
            match old.environment.get(name) {
                Some(prev) if prev == new => {}
                Some(prev) => reasons.push(format!("environment {name} {prev} → {new}")),
                None => reasons.push(format!("environment {name} (new) = {new}")),
            }
        }
        reasons
    }
}

/// "3 files added, 1 changed, 2 removed (a.jpg, b.jpg, …)", or None when nothing changed.
fn describe_file_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Option<String> {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for (path, hash) in new {
        match old.get(path) {
            None => added.push(path.as_str()),
            Some(prev) if prev != hash => changed.push(path.as_str()),
            Some(_) => {}
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            removed.push(path.as_str());
        }
    }
    let total = added.len() + changed.len() + removed.len();
    if total == 0 {
        return None;
    }
    let mut parts = Vec::new();
    for (list, word) in [
        (&added, "added"),
        (&changed, "changed"),
        (&removed, "removed"),
    ] {
        if !list.is_empty() {
            let noun = if list.len() == 1 { "file" } else { "files" };
            parts.push(format!("{} {noun} {word}", list.len()));
        }
    }
    let examples: Vec<String> = added
        .iter()
        .chain(&changed)
        .chain(&removed)
        .take(3)
        .map(|p| file_name(p))
        .collect();
    let more = if total > 3 { ", …" } else { "" };
    Some(format!(
        "{} ({}{more})",
        parts.join(", "),
        examples.join(", ")
    ))
}

fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT,
            kind: "captions".into(),
            version: 1,
            params: [("min_count".to_string(), KeyParam::Int(1))].into(),
            upstream: vec![("demo".into(), "ab".into())],
            sources: [("/d/a.jpg".to_string(), "h1".to_string())].into(),
            environment: [("device".to_string(), "cpu".to_string())].into(),
        }
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = inputs();
        let k = base.key();
        let mut variants = Vec::new();
        let mut v = base.clone();
        v.version = 2;
        variants.push(v);
        let mut v = base.clone();
        v.params.insert("min_count".into(), KeyParam::Int(3));
        variants.push(v);
        let mut v = base.clone();
        v.params
            .insert("min_count".into(), KeyParam::Str("1".into()));
        variants.push(v);
        let mut v = base.clone();
        v.upstream[0].1 = "cd".into();
        variants.push(v);
        let mut v = base.clone();
        v.sources.insert("/d/a.jpg".into(), "h2".into());
        variants.push(v);
        let mut v = base.clone();
        v.environment.insert("device".into(), "cuda".into());
        variants.push(v);
        for v in &variants {
            assert_ne!(v.key(), k, "{v:?}");
        }
        assert_eq!(base.clone().key(), k);
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let mut a = inputs();
        a.params = [("ab".to_string(), KeyParam::Str("c".into()))].into();
        let mut b = inputs();
        b.params = [("a".to_string(), KeyParam::Str("bc".into()))].into();
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn key_is_stable_across_releases() {
        // A change here invalidates every user's store: bump KEY_FORMAT instead.
        assert_eq!(
            inputs().key().short(),
            "633859b024cc",
            "full key {}",
            inputs().key()
        );
    }

    #[test]
    fn reasons_say_old_and_new() {
        let old = inputs();
        let mut new = inputs();
        new.params.insert("min_count".into(), KeyParam::Int(3));
        new.upstream[0].1 = "ef".into();
        new.sources.insert("/d/a.jpg".into(), "h9".into());
        new.sources.insert("/d/b.jpg".into(), "h3".into());
        let reasons = new.changes_from(&old);
        assert_eq!(
            reasons,
            [
                "param min_count 1 → 3",
                "upstream demo changed",
                "1 file added, 1 file changed (b.jpg, a.jpg)"
            ]
        );
        assert!(old.changes_from(&old).is_empty());
    }
}
