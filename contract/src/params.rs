//! Typed stage params: each kind declares its params (type, default, help) so that the engine can
//! reject unknown or mistyped ones and fill in defaults before hashing: writing a default out
//! explicitly never changes a cache key.

use std::collections::BTreeMap;
use std::fmt;

use crate::StageError;

/// The type of a param, with its allowed range or values.
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A file or folder, relative to the pipeline file's folder or absolute, or one of `words`
    /// (e.g. `"random"` for weights). A path enters the cache key by the content of what it
    /// names, never by its spelling: the stage kind's `sources` lists the files under it that it
    /// reads.
    Path {
        what: PathKind,
        words: &'static [&'static str],
    },
}

/// What a path param names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Folder,
}

/// Whether a param can change what a stage writes (cargo's fingerprint draws the same line
/// between what is hashed and what is only recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// It can change the output: it enters the cache key.
    Output,
    /// It only changes how fast the output is made (threads): recorded beside the output but
    /// left out of the key, so throttling a run recomputes nothing.
    SpeedOnly,
}

/// A param's default, as a constant a `static` can hold.
#[derive(Debug, Clone, Copy)]
pub enum ParamDefault {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    /// No default: the param may be left out, and the stage then decides what that means.
    Unset,
}

/// One declared param of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: ParamDefault,
    pub effect: Effect,
    pub help: &'static str,
}

impl ParamSpec {
    /// Whether `value` of this param names a path (a path param not set to one of its words).
    pub fn names_path(&self, value: &ParamValue) -> bool {
        match (self.ty, value) {
            (ParamType::Path { words, .. }, ParamValue::Str(v)) => !words.contains(&v.as_str()),
            _ => false,
        }
    }
}

impl ParamSpec {
    /// The `seed` param every randomised kind declares: a non-negative integer that enters the
    /// key (the same seed gives the same output).
    pub const fn seed(default: i64, help: &'static str) -> ParamSpec {
        ParamSpec {
            name: "seed",
            ty: ParamType::Int {
                min: 0,
                max: i64::MAX,
            },
            default: ParamDefault::Int(default),
            effect: Effect::Output,
            help,
        }
    }

    /// The `threads` param of a kind that computes in parallel: CPU threads, 0 for every core;
    /// speed only, so it stays out of the key.
    pub const fn threads(help: &'static str) -> ParamSpec {
        ParamSpec {
            name: "threads",
            ty: ParamType::Int { min: 0, max: 1024 },
            default: ParamDefault::Int(0),
            effect: Effect::SpeedOnly,
            help,
        }
    }
}

/// The help of the libtorch stages' `threads` param.
pub const LIBTORCH_THREADS_HELP: &str = "CPU threads for libtorch (0: all cores). Left out of the \
    cache key: libtorch may sum in another order with another count (last-bit differences), an \
    equally valid result";

/// A param value after type checking.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            // Debug formatting keeps a trailing ".0" so floats read as floats.
            ParamValue::Float(v) => write!(f, "{v:?}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// A raw value as written in `pipeline.toml` or on the command line, before checking.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Anything else (arrays, tables, dates), named for the error message.
    Other(&'static str),
}

impl RawValue {
    fn type_name(&self) -> &'static str {
        match self {
            RawValue::Int(_) => "integer",
            RawValue::Float(_) => "float",
            RawValue::Bool(_) => "boolean",
            RawValue::Str(_) => "string",
            RawValue::Other(name) => name,
        }
    }
}

impl ParamType {
    /// What the type accepts, for error messages and `--help`.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Int { min, max } => match (*min, *max) {
                (i64::MIN, i64::MAX) => "integer".into(),
                (min, i64::MAX) => format!("integer >= {min}"),
                (min, max) => format!("integer in {min}..={max}"),
            },
            ParamType::Float { min, max } => format!("number in {min}..={max}"),
            ParamType::Bool => "boolean".into(),
            ParamType::Str => "string".into(),
            ParamType::Choice(choices) => format!("one of {}", choices.join(", ")),
            ParamType::Path { what, words } => {
                let what = match what {
                    PathKind::File => "path of a file",
                    PathKind::Folder => "path of a folder",
                };
                if words.is_empty() {
                    what.to_string()
                } else {
                    format!("{what}, or {}", words.join(", "))
                }
            }
        }
    }

    /// Checks `raw` against this type. Integers are accepted where floats are expected (and
    /// become floats, so `lr = 1` and `lr = 1.0` hash alike).
    pub fn check(&self, raw: &RawValue) -> Result<ParamValue, String> {
        let wrong = || format!("expected {}, found {}", self.describe(), raw.type_name());
        match (self, raw) {
            (ParamType::Int { min, max }, RawValue::Int(v)) => {
                if v < min || v > max {
                    Err(format!("{v} is out of range: expected {}", self.describe()))
                } else {
                    Ok(ParamValue::Int(*v))
                }
            }
            (ParamType::Float { min, max }, RawValue::Int(_) | RawValue::Float(_)) => {
                let v = match raw {
                    RawValue::Int(i) => *i as f64,
                    RawValue::Float(f) => *f,
                    _ => unreachable!("matched above"),
                };
                if !v.is_finite() || v < *min || v > *max {
                    Err(format!("{v} is out of range: expected {}", self.describe()))
                } else {
                    Ok(ParamValue::Float(v))
                }
            }
            (ParamType::Bool, RawValue::Bool(v)) => Ok(ParamValue::Bool(*v)),
            (ParamType::Str, RawValue::Str(v)) => Ok(ParamValue::Str(v.clone())),
            (ParamType::Path { .. }, RawValue::Str(v)) => {
                if v.trim().is_empty() {
                    Err("expected a path, found an empty string".to_string())
                } else {
                    Ok(ParamValue::Str(v.clone()))
                }
            }
            (ParamType::Choice(choices), RawValue::Str(v)) => {
                if choices.contains(&v.as_str()) {
                    Ok(ParamValue::Str(v.clone()))
                } else {
                    Err(format!("{v:?} is not {}", self.describe()))
                }
            }
            _ => Err(wrong()),
        }
    }

    /// Parses a command-line value (`--set stage.param=VALUE`) as this type.
    pub fn parse_cli(&self, text: &str) -> RawValue {
        match self {
            // A float where an integer is expected is reported as a float, not as a string.
            ParamType::Int { .. } => text
                .parse::<i64>()
                .map(RawValue::Int)
                .or_else(|_| text.parse::<f64>().map(RawValue::Float))
                .unwrap_or_else(|_| RawValue::Str(text.to_string())),
            ParamType::Float { .. } => text
                .parse::<f64>()
                .map(RawValue::Float)
                .unwrap_or_else(|_| RawValue::Str(text.to_string())),
            ParamType::Bool => match text {
                "true" => RawValue::Bool(true),
                "false" => RawValue::Bool(false),
                _ => RawValue::Str(text.to_string()),
            },
            ParamType::Str | ParamType::Choice(_) | ParamType::Path { .. } => {
                RawValue::Str(text.to_string())
            }
        }
    }
}

impl ParamDefault {
    fn value(&self) -> Option<ParamValue> {
        match self {
            ParamDefault::Int(v) => Some(ParamValue::Int(*v)),
            ParamDefault::Float(v) => Some(ParamValue::Float(*v)),
            ParamDefault::Bool(v) => Some(ParamValue::Bool(*v)),
            ParamDefault::Str(v) => Some(ParamValue::Str(v.to_string())),
            ParamDefault::Unset => None,
        }
    }
}

/// A stage's checked params, defaults filled in, in sorted order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params(BTreeMap<String, ParamValue>);

impl Params {
    /// Params from already-checked values plus the defaults of `specs` (tests, and the engine
    /// after checking each raw value).
    pub fn with_defaults(specs: &[ParamSpec], given: BTreeMap<String, ParamValue>) -> Self {
        let mut all = given;
        for spec in specs {
            if !all.contains_key(spec.name) {
                if let Some(v) = spec.default.value() {
                    all.insert(spec.name.to_string(), v);
                }
            }
        }
        Params(all)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &ParamValue)> {
        self.0.iter()
    }

    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.0.get(name)
    }

    pub fn int(&self, name: &str) -> Result<i64, StageError> {
        match self.0.get(name) {
            Some(ParamValue::Int(v)) => Ok(*v),
            other => Err(missing(name, "integer", other)),
        }
    }

    pub fn float(&self, name: &str) -> Result<f64, StageError> {
        match self.0.get(name) {
            Some(ParamValue::Float(v)) => Ok(*v),
            Some(ParamValue::Int(v)) => Ok(*v as f64),
            other => Err(missing(name, "float", other)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, StageError> {
        match self.0.get(name) {
            Some(ParamValue::Bool(v)) => Ok(*v),
            other => Err(missing(name, "boolean", other)),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, StageError> {
        match self.0.get(name) {
            Some(ParamValue::Str(v)) => Ok(v),
            other => Err(missing(name, "string", other)),
        }
    }

    /// A string param that may be left unset.
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(ParamValue::Str(v)) => Some(v),
            _ => None,
        }
    }
}

fn missing(name: &str, want: &str, found: Option<&ParamValue>) -> StageError {
    StageError::Param {
        name: name.to_string(),
        message: match found {
            None => "is not set".to_string(),
            Some(v) => format!("expected {want}, found {v}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_is_accepted_as_float_and_hashes_alike() {
        let ty = ParamType::Float {
            min: 0.0,
            max: 10.0,
        };
        assert_eq!(ty.check(&RawValue::Int(1)), Ok(ParamValue::Float(1.0)));
        assert_eq!(ty.check(&RawValue::Float(1.0)), Ok(ParamValue::Float(1.0)));
    }

    #[test]
    fn out_of_range_and_wrong_type_are_rejected() {
        let ty = ParamType::Int {
            min: 1,
            max: i64::MAX,
        };
        assert!(ty
            .check(&RawValue::Int(0))
            .unwrap_err()
            .contains("out of range"));
        let err = ty.check(&RawValue::Str("3".into())).unwrap_err();
        assert_eq!(err, "expected integer >= 1, found string");
        let float_for_int = ty.check(&ty.parse_cli("2.0")).unwrap_err();
        assert_eq!(float_for_int, "expected integer >= 1, found float");
        let choice = ParamType::Choice(&["raw", "lemma"]);
        assert!(choice.check(&RawValue::Str("lemmas".into())).is_err());
    }

    #[test]
    fn defaults_fill_only_missing_params() {
        const SPECS: &[ParamSpec] = &[
            ParamSpec {
                name: "a",
                ty: ParamType::Bool,
                default: ParamDefault::Bool(true),
                effect: Effect::Output,
                help: "",
            },
            ParamSpec {
                name: "b",
                ty: ParamType::Str,
                default: ParamDefault::Unset,
                effect: Effect::Output,
                help: "",
            },
        ];
        let mut given = BTreeMap::new();
        given.insert("a".to_string(), ParamValue::Bool(false));
        let p = Params::with_defaults(SPECS, given);
        assert!(!p.bool("a").unwrap());
        assert!(p.opt_str("b").is_none());
        assert!(p.str("b").is_err());
    }
}
