//! Cache keys: what goes into a stage's key, its canonical encoding, and the typed reasons why a
//! key changed.
//!
//! | field         | what it holds                                                          |
//! |---------------|------------------------------------------------------------------------|
//! | format        | `KEY_FORMAT`, bumped if this encoding ever changes                     |
//! | kind, version | the stage kind and its code version (`StageKind::version`)             |
//! | params        | every param that can change the output, defaults filled in, typed;    |
//! |               | a path param as the marker `path` (its content is under `sources`)     |
//! | upstream      | each input stage's name and key, in declared order                     |
//! | sources       | each external file the stage reads, named relative to its root (`root/ |
//! |               | Flicker8k_Dataset/a.jpg`, `weights`), and its BLAKE3 content hash      |
//! | environment   | for libtorch stages only: libtorch version and the device it runs on   |
//!
//! Never in a key: absolute paths, the spelling of a path param, timestamps, host names, and
//! params that only change speed (`threads`) — those are kept in `recorded`, beside the key, for
//! people. So a project moved, copied or cloned elsewhere, or a store shared by two folders or
//! machines, computes the same keys.
//!
//! The key is BLAKE3 over a length-prefixed, tagged encoding of these fields, never `std::hash`
//! (which is neither stable across Rust versions nor meant for persistence). Floats are encoded
//! by their bits after normalising `-0.0`, so `1` and `1.0` for a float param (both checked into
//! `1.0`) hash alike.

use std::collections::BTreeMap;
use std::fmt;

use onenet_contract::ParamValue;
use serde::{Deserialize, Serialize};

/// Version of the key encoding itself.
pub const KEY_FORMAT: u32 = 2;

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
    /// A path param: its content enters the key through `KeyInputs::sources`, its spelling not
    /// at all.
    Path,
}

impl KeyParam {
    /// The value as plain JSON, for typed reasons.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            KeyParam::Int(v) => (*v).into(),
            KeyParam::Float(v) => (*v).into(),
            KeyParam::Bool(v) => (*v).into(),
            KeyParam::Str(v) => v.clone().into(),
            KeyParam::Path => serde_json::json!({ "path": "by content" }),
        }
    }
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
            KeyParam::Path => f.write_str("a path (by content)"),
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
    /// Each source file's label (`Source::label`: relative to its root) to the BLAKE3 hex of
    /// its content.
    pub sources: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
    /// Not hashed: params that only change speed, and how path params were spelled.
    #[serde(default)]
    pub recorded: BTreeMap<String, KeyParam>,
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
                KeyParam::Path => field("path", &[]),
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
    /// changed field.
    pub fn changes_from(&self, old: &KeyInputs) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if old.format != self.format {
            reasons.push(Reason::Version {
                what: "key format".into(),
                old: old.format.to_string(),
                new: self.format.to_string(),
            });
        }
        if old.kind != self.kind {
            reasons.push(Reason::Version {
                what: "kind".into(),
                old: old.kind.clone(),
                new: self.kind.clone(),
            });
        } else if old.version != self.version {
            reasons.push(Reason::Version {
                what: "code".into(),
                old: old.version.to_string(),
                new: self.version.to_string(),
            });
        }
        for (name, new) in &self.params {
            match old.params.get(name) {
                Some(prev) if prev == new => {}
                prev => reasons.push(Reason::Param {
                    name: name.clone(),
                    old: prev.map(KeyParam::to_json),
                    new: Some(new.to_json()),
                }),
            }
        }
        for (name, prev) in &old.params {
            if !self.params.contains_key(name) {
                reasons.push(Reason::Param {
                    name: name.clone(),
                    old: Some(prev.to_json()),
                    new: None,
                });
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
                Some(_) => reasons.push(Reason::Upstream {
                    stage: name.clone(),
                }),
                None => reasons.push(Reason::Input {
                    stage: name.clone(),
                    change: "added".into(),
                }),
            }
        }
        for (name, _) in &old.upstream {
            if !self.upstream.iter().any(|(n, _)| n == name) {
                reasons.push(Reason::Input {
                    stage: name.clone(),
                    change: "removed".into(),
                });
            }
        }
        reasons.extend(file_changes(old, self));
        let names: std::collections::BTreeSet<&String> = self
            .environment
            .keys()
            .chain(old.environment.keys())
            .collect();
        for name in names {
            let (prev, new) = (old.environment.get(name), self.environment.get(name));
            if prev != new {
                reasons.push(Reason::Environment {
                    name: name.clone(),
                    old: prev.cloned(),
                    new: new.cloned(),
                });
            }
        }
        reasons
    }
}

/// Why a stage is stale (or, for `EarlierOutput`, why a fresh stage is not the newest output),
/// as a value: rendered as text by `Display` and as `{"kind": …}` JSON by `--format json`.
/// Cargo's `DirtyReason` is the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// A param's value changed; None: set or unset.
    Param {
        name: String,
        old: Option<serde_json::Value>,
        new: Option<serde_json::Value>,
    },
    /// Source files changed: those of one path param (`param`), or of the pipeline's folder.
    /// File names are relative to the param's folder (for a file param: the file as named).
    Files {
        param: Option<String>,
        changed: Vec<String>,
        added: Vec<String>,
        removed: Vec<String>,
        /// Whether `param` names the one file listed (rather than a folder holding them).
        #[serde(skip)]
        param_is_file: bool,
    },
    /// An input stage's key changed.
    Upstream { stage: String },
    /// An input stage was added to or removed from `inputs`.
    Input { stage: String, change: String },
    /// The stage's code version, kind or the key format changed.
    Version {
        what: String,
        old: String,
        new: String,
    },
    /// The libtorch version or device changed.
    Environment {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// The stage has no output in the store under any key.
    NeverComputed,
    /// Its newest output was removed (gc) or found corrupt (verify).
    OutputRemoved,
    /// No input changed, yet the output for this key is not in the store.
    OutputMissing,
    /// Fresh: the output for these inputs is in the store, from an earlier run than the newest.
    EarlierOutput,
    /// Unknown: the key cannot be computed here (a source file or folder is missing); `why`
    /// is the error.
    Unchecked { why: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = |v: &Option<serde_json::Value>| match v {
            None => "(unset)".to_string(),
            Some(serde_json::Value::Object(_)) => "a path (by content)".to_string(),
            Some(v) => v.to_string(),
        };
        match self {
            Reason::Param { name, old, new } => {
                write!(f, "param {name} {} → {}", value(old), value(new))
            }
            Reason::Files {
                param,
                changed,
                added,
                removed,
                param_is_file,
            } => {
                match param {
                    Some(param) if *param_is_file && changed.len() == 1 => {
                        return write!(f, "param {param}: content changed (file {})", changed[0])
                    }
                    Some(param) => write!(f, "param {param}: ")?,
                    None => {}
                }
                // Each count with its own examples, so no name is ambiguous.
                let short = |p: &String| -> String {
                    if *param_is_file {
                        p.clone()
                    } else {
                        p.rsplit('/').next().unwrap_or(p).to_string()
                    }
                };
                let mut parts = Vec::new();
                for (list, word) in [(added, "added"), (changed, "changed"), (removed, "removed")] {
                    if list.is_empty() {
                        continue;
                    }
                    let noun = if list.len() == 1 { "file" } else { "files" };
                    let mut names: Vec<String> = list.iter().take(3).map(short).collect();
                    if list.len() > 3 {
                        names.push("…".into());
                    }
                    parts.push(format!(
                        "{} {noun} {word} ({})",
                        list.len(),
                        names.join(", ")
                    ));
                }
                write!(f, "{}", parts.join(", "))
            }
            Reason::Upstream { stage } => write!(f, "upstream {stage} changed"),
            Reason::Input { stage, change } if change == "added" => {
                write!(f, "new input {stage}")
            }
            Reason::Input { stage, .. } => write!(f, "input {stage} removed"),
            Reason::Version { what, old, new } => write!(f, "{what} version {old} → {new}"),
            Reason::Environment { name, old, new } => write!(
                f,
                "environment {name} {} → {}",
                old.as_deref().unwrap_or("(none)"),
                new.as_deref().unwrap_or("(none)")
            ),
            Reason::NeverComputed => f.write_str("never computed"),
            Reason::OutputRemoved => {
                f.write_str("its last output was removed (gc) or found corrupt (verify)")
            }
            Reason::OutputMissing => f.write_str("output missing from the store"),
            Reason::EarlierOutput => {
                f.write_str("output for these inputs already in the store (an earlier run)")
            }
            Reason::Unchecked { why } => write!(f, "freshness cannot be checked: {why}"),
        }
    }
}

/// A reason as `--format json` writes it: its typed fields and its text.
#[derive(Serialize)]
pub struct ReasonJson<'a> {
    #[serde(flatten)]
    pub reason: &'a Reason,
    pub text: String,
}

impl<'a> From<&'a Reason> for ReasonJson<'a> {
    fn from(reason: &'a Reason) -> Self {
        ReasonJson {
            reason,
            text: reason.to_string(),
        }
    }
}

/// Splits a source label into its path param (None: the pipeline's folder) and the path under
/// it (empty: the file the param names).
fn split_label(label: &str) -> (Option<&str>, &str) {
    if let Some(rel) = label.strip_prefix("./") {
        return (None, rel);
    }
    match label.split_once('/') {
        Some((param, rel)) => (Some(param), rel),
        None => (Some(label), ""),
    }
}

/// One `Files` reason per root whose files differ between `old` and `new`.
fn file_changes(old: &KeyInputs, new: &KeyInputs) -> Vec<Reason> {
    // Per root: (changed, added, removed).
    type Lists = (Vec<String>, Vec<String>, Vec<String>, bool);
    let mut roots: BTreeMap<Option<String>, Lists> = BTreeMap::new();
    let name = |inputs: &KeyInputs, param: Option<&str>, rel: &str| -> String {
        if !rel.is_empty() {
            return rel.to_string();
        }
        // The file a param names is shown as the param spells it.
        match param.and_then(|p| inputs.recorded.get(p)) {
            Some(KeyParam::Str(spelled)) => spelled.clone(),
            _ => param.unwrap_or_default().to_string(),
        }
    };
    for (label, hash) in &new.sources {
        let (param, rel) = split_label(label);
        let entry = roots.entry(param.map(str::to_string)).or_default();
        entry.3 = rel.is_empty();
        match old.sources.get(label) {
            None => entry.1.push(name(new, param, rel)),
            Some(prev) if prev != hash => entry.0.push(name(new, param, rel)),
            Some(_) => {}
        }
    }
    for label in old.sources.keys() {
        if !new.sources.contains_key(label) {
            let (param, rel) = split_label(label);
            let entry = roots.entry(param.map(str::to_string)).or_default();
            entry.3 = rel.is_empty();
            entry.2.push(name(old, param, rel));
        }
    }
    roots
        .into_iter()
        .filter(|(_, (c, a, r, _))| !(c.is_empty() && a.is_empty() && r.is_empty()))
        .map(
            |(param, (changed, added, removed, param_is_file))| Reason::Files {
                param,
                changed,
                added,
                removed,
                param_is_file,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT,
            kind: "captions".into(),
            version: 1,
            params: [
                ("min_count".to_string(), KeyParam::Int(1)),
                ("root".to_string(), KeyParam::Path),
            ]
            .into(),
            upstream: vec![("demo".into(), "ab".into())],
            sources: [("root/Flicker8k_Dataset/a.jpg".to_string(), "h1".to_string())].into(),
            environment: [("device".to_string(), "cpu".to_string())].into(),
            recorded: [("root".to_string(), KeyParam::Str("/home/a/data".into()))].into(),
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
        v.params.insert("root".into(), KeyParam::Str("data".into()));
        variants.push(v);
        let mut v = base.clone();
        v.upstream[0].1 = "cd".into();
        variants.push(v);
        let mut v = base.clone();
        v.sources
            .insert("root/Flicker8k_Dataset/a.jpg".into(), "h2".into());
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
    fn what_is_only_recorded_never_changes_the_key() {
        let base = inputs();
        let mut v = base.clone();
        v.recorded
            .insert("root".into(), KeyParam::Str("/elsewhere/data".into()));
        v.recorded.insert("threads".into(), KeyParam::Int(1));
        assert_eq!(v.key(), base.key());
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
            "6856cea092d9",
            "full key {}",
            inputs().key()
        );
    }

    #[test]
    fn reasons_are_typed_and_say_old_and_new() {
        let old = inputs();
        let mut new = inputs();
        new.params.insert("min_count".into(), KeyParam::Int(3));
        new.upstream[0].1 = "ef".into();
        new.sources
            .insert("root/Flicker8k_Dataset/a.jpg".into(), "h9".into());
        new.sources
            .insert("root/Flicker8k_Dataset/b.jpg".into(), "h3".into());
        new.sources.insert("weights".into(), "w1".into());
        new.recorded
            .insert("weights".into(), KeyParam::Str("w/lite0.pth".into()));
        let reasons = new.changes_from(&old);
        let text: Vec<String> = reasons.iter().map(Reason::to_string).collect();
        assert_eq!(
            text,
            [
                "param min_count 1 → 3",
                "upstream demo changed",
                "param root: 1 file added (b.jpg), 1 file changed (a.jpg)",
                "param weights: 1 file added (w/lite0.pth)",
            ]
        );
        let json = serde_json::to_value(ReasonJson::from(&reasons[0])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "param", "name": "min_count", "old": 1, "new": 3,
                               "text": "param min_count 1 → 3"})
        );
        let files = serde_json::to_value(&reasons[2]).unwrap();
        assert_eq!(
            files,
            serde_json::json!({"kind": "files", "param": "root",
                               "changed": ["Flicker8k_Dataset/a.jpg"],
                               "added": ["Flicker8k_Dataset/b.jpg"], "removed": []})
        );
        assert!(old.changes_from(&old).is_empty());

        let mut replaced = new.clone();
        replaced.sources.insert("weights".into(), "w2".into());
        assert_eq!(
            replaced.changes_from(&new)[0].to_string(),
            "param weights: content changed (file w/lite0.pth)"
        );
        assert_eq!(
            serde_json::to_value(&Reason::Upstream {
                stage: "captions".into()
            })
            .unwrap(),
            serde_json::json!({"kind": "upstream", "stage": "captions"})
        );
    }
}
