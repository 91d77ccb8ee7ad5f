//! One renderer per kind of output: each writes itself as text for people or as JSON for
//! scripts, on stdout, so commands only gather what to show.

use std::io;
use std::path::PathBuf;

use onenet::config::StageDecl;
use onenet::engine::{Action, StageOutcome, StageState, StageStatus};
use onenet::experiments::{self, ExpDiff, ExpRow};
use onenet::formats::FileSummary;
use onenet::store::{GcReport, NamedKeys, ObjectMeta, VerifyReport};
use onenet::task_cli::Format;
use onenet_stages::specs::evaluate::Metric;
use onenet_stages::{DeviceUse, Effect, ParamDefault, StageKind};
use serde_json::{json, Value};

use super::out::out;

/// An output that can be written as text or as JSON.
pub trait Render {
    /// Writes the text form, line by line, on stdout.
    fn text(&self) -> io::Result<()>;
    /// The JSON form.
    fn json(&self) -> Value;
}

/// Writes `view` on stdout in `format`.
pub fn emit(view: &dyn Render, format: Format) -> io::Result<()> {
    match format {
        Format::Text => view.text(),
        // `{:#}` is serde_json's pretty printer, two-space indented.
        Format::Json => out!("{:#}", view.json()),
    }
}

pub fn state_word(state: StageState) -> &'static str {
    match state {
        StageState::Fresh => "fresh",
        StageState::Stale => "stale",
        StageState::Missing => "missing",
        StageState::Remote => "remote",
        StageState::Unknown => "unknown",
    }
}

/// `status`, and `run --dry-run` (which says what the run would do instead of the state).
pub struct StatusView<'a> {
    pub statuses: &'a [StageStatus],
    /// For a dry run, the stages `--force` names.
    pub dry_run: Option<&'a [String]>,
}

impl StatusView<'_> {
    /// Whether a dry run would compute the stage.
    fn computes(&self, status: &StageStatus) -> Option<bool> {
        self.dry_run
            .map(|forced| status.state != StageState::Fresh || forced.contains(&status.name))
    }

    fn forced(&self, status: &StageStatus) -> bool {
        self.dry_run
            .is_some_and(|forced| forced.contains(&status.name))
    }
}

impl Render for StatusView<'_> {
    fn text(&self) -> io::Result<()> {
        let width = self
            .statuses
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in self.statuses {
            let word = match self.computes(s) {
                Some(true) => "would compute",
                Some(false) => "would reuse",
                None => state_word(s.state),
            };
            let mut reasons: Vec<String> = Vec::new();
            if self.forced(s) {
                reasons.push("--force".into());
            }
            if !s.reasons.is_empty() {
                reasons.push(s.reasons_text());
            }
            let reasons = if reasons.is_empty() {
                String::new()
            } else {
                format!("  {}", reasons.join("; "))
            };
            // An unknown stage has no key: its column stays blank.
            let key = s.key.get(..12).unwrap_or("");
            out!("{:width$}  {word:<13}  {key:<12}{reasons}", s.name)?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let stages: Vec<Value> = self
            .statuses
            .iter()
            .map(|s| {
                let mut v = json!(s);
                if let Some(computes) = self.computes(s) {
                    v["action"] = json!(if computes { "compute" } else { "cached" });
                    v["forced"] = json!(self.forced(s));
                }
                v
            })
            .collect();
        json!({ "stages": stages })
    }
}

/// `dag`: each stage's kind, inputs, key and state, in execution order.
pub struct DagView<'a> {
    /// Each stage and its status (an `unknown` one has no key).
    pub rows: Vec<(&'a StageDecl, &'a StageStatus)>,
}

impl Render for DagView<'_> {
    fn text(&self) -> io::Result<()> {
        let width = self
            .rows
            .iter()
            .map(|(d, _)| d.name.len())
            .max()
            .unwrap_or(0);
        for (d, s) in &self.rows {
            let inputs = if d.inputs.is_empty() {
                String::new()
            } else {
                format!(" ← {}", d.inputs.join(", "))
            };
            out!(
                "{:width$}  {:7}  {:12}  {}{inputs}",
                d.name,
                state_word(s.state),
                s.key.get(..12).unwrap_or(""),
                d.kind.name,
            )?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let stages: Vec<Value> = self
            .rows
            .iter()
            .map(|(d, s)| {
                let key = (!s.key.is_empty()).then_some(&s.key);
                json!({"name": d.name, "kind": d.kind.name, "inputs": d.inputs,
                       "key": key, "state": s.state})
            })
            .collect();
        json!({ "stages": stages })
    }
}

/// `show`: a stage's newest output.
pub struct ShowView<'a> {
    pub stage: &'a str,
    pub kind: &'a str,
    /// The stage's state against the current pipeline, or why it is not known.
    pub status: Result<StageStatus, String>,
    pub meta: ObjectMeta,
    /// `latest/<stage>`, and the object it points at.
    pub latest: PathBuf,
    pub object: PathBuf,
    pub files: Vec<(String, u64, Result<FileSummary, String>)>,
}

impl Render for ShowView<'_> {
    fn text(&self) -> io::Result<()> {
        let meta = &self.meta;
        out!("stage   {} ({})", self.stage, self.kind)?;
        out!("key     {}", meta.key)?;
        match &self.status {
            Ok(status) => out!(
                "state   {} {}",
                state_word(status.state),
                status.reasons_text()
            )?,
            Err(why) => out!("state   unknown: {why}")?,
        }
        out!("path    {}", self.latest.display())?;
        out!("object  {}", self.object.display())?;
        out!("took    {:.2}s", meta.seconds)?;
        for note in &meta.notes {
            out!("note    {note}")?;
        }
        for warning in &meta.warnings {
            out!("warning {warning}")?;
        }
        // Large folders (thousands of images) are summarised, tables shown in full.
        let mut others = 0usize;
        let mut other_bytes = 0u64;
        for (path, bytes, summary) in &self.files {
            match summary {
                Ok(FileSummary::Table { rows, columns }) => {
                    out!("\n{path}  ({rows} rows, {})", human_bytes(*bytes))?;
                    for (name, ty) in columns {
                        out!("  {name}: {ty}")?;
                    }
                }
                Ok(FileSummary::Tensors { tensors }) => {
                    out!("\n{path}  ({})", human_bytes(*bytes))?;
                    for (name, dtype, shape) in tensors {
                        out!("  {name}: {dtype} {shape:?}")?;
                    }
                }
                Ok(FileSummary::Other) => {
                    others += 1;
                    other_bytes += bytes;
                }
                Err(e) => out!("\n{path}: {e}")?,
            }
        }
        if others > 0 {
            out!("\n{others} other file(s), {}", human_bytes(other_bytes))?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|(path, bytes, summary)| {
                let mut v = json!({"path": self.latest.join(path), "bytes": bytes});
                match summary {
                    Ok(FileSummary::Table { rows, columns }) => {
                        v["rows"] = json!(rows);
                        v["columns"] = json!(columns
                            .iter()
                            .map(|(n, t)| json!({"name": n, "type": t}))
                            .collect::<Vec<_>>());
                    }
                    Ok(FileSummary::Tensors { tensors }) => {
                        v["tensors"] = json!(tensors
                            .iter()
                            .map(|(n, d, s)| json!({"name": n, "dtype": d, "shape": s}))
                            .collect::<Vec<_>>());
                    }
                    Ok(FileSummary::Other) => {}
                    Err(e) => v["error"] = json!(e),
                }
                v
            })
            .collect();
        let meta = &self.meta;
        let (state, reasons) = match &self.status {
            Ok(status) => (
                json!(status.state),
                json!(status
                    .reasons
                    .iter()
                    .map(onenet::key::ReasonJson::from)
                    .collect::<Vec<_>>()),
            ),
            Err(why) => (
                json!("unknown"),
                json!([{ "kind": "unchecked", "why": why, "text": why }]),
            ),
        };
        json!({
            "name": self.stage, "kind": self.kind, "key": meta.key,
            "state": state, "reasons": reasons, "path": self.latest, "object": self.object,
            "seconds": meta.seconds, "warnings": meta.warnings, "notes": meta.notes,
            "files": files,
        })
    }
}

/// The end of a `run`: the summary line, or every stage's outcome as JSON. (The text form's
/// per-stage lines are written by the observer as the stages finish.)
pub struct RunView<'a> {
    pub outcomes: &'a [StageOutcome],
    pub seconds: f64,
    /// Where the newest outputs are (`latest/`); `None` for a variant (`--set`) run, whose
    /// outputs never become the view's.
    pub latest: Option<PathBuf>,
}

impl RunView<'_> {
    fn count(&self, wanted: &[Action]) -> usize {
        self.outcomes
            .iter()
            .filter(|o| wanted.contains(&o.action))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.count(&[Action::Failed, Action::Skipped])
    }
}

impl Render for RunView<'_> {
    fn text(&self) -> io::Result<()> {
        out!(
            "{} stage(s): {} computed, {} cached, {}{} failed, in {:.2}s; {}",
            self.outcomes.len(),
            self.count(&[Action::Computed]),
            self.count(&[Action::Cached]),
            match self.count(&[Action::Pulled]) {
                0 => String::new(),
                n => format!("{n} pulled, "),
            },
            self.failed(),
            self.seconds,
            match &self.latest {
                // A failed or skipped stage leaves its link at the earlier output, if any.
                Some(latest) if self.failed() > 0 => format!(
                    "newest outputs of the stages that succeeded in {}",
                    latest.display()
                ),
                Some(latest) => format!("newest outputs in {}", latest.display()),
                None => "a variant: its outputs are in the store by key, the pipeline's newest \
                         outputs are unchanged"
                    .to_string(),
            }
        )
    }

    fn json(&self) -> Value {
        json!({ "stages": self.outcomes, "ok": self.failed() == 0 })
    }
}

/// One stage's outcome as `run` prints it when the stage finishes (first line; the observer adds
/// notes, warnings and the error under it).
pub fn outcome_line(outcome: &StageOutcome) -> String {
    let word = match outcome.action {
        Action::Computed => "computed",
        Action::Cached => "cached",
        Action::Pulled => "pulled",
        Action::Failed => "FAILED",
        Action::Skipped => "skipped",
    };
    format!(
        "{word:<9} {:<12} {:>7.2}s  {}",
        outcome.name,
        outcome.seconds,
        &outcome.key[..12.min(outcome.key.len())]
    )
}

/// `gc`.
pub struct GcView {
    pub report: GcReport,
    pub dry_run: bool,
}

impl Render for GcView {
    fn text(&self) -> io::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let r = &self.report;
        out!(
            "{verb} {} object(s) and {} leftover(s), {}; kept {} object(s) the pipeline files need",
            r.objects_removed,
            r.leftovers_removed,
            human_bytes(r.bytes),
            r.kept
        )?;
        if self.dry_run {
            for o in &r.removed_objects {
                out!(
                    "  remove  {:<12} {}  {}",
                    o.stage,
                    &o.key[..12.min(o.key.len())],
                    human_bytes(o.bytes)
                )?;
            }
            for o in &r.kept_objects {
                out!(
                    "  keep    {:<12} {}  {}  ({})",
                    o.stage,
                    &o.key[..12.min(o.key.len())],
                    human_bytes(o.bytes),
                    o.reasons.join("; ")
                )?;
            }
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let mut v = json!(self.report);
        v["dry_run"] = json!(self.dry_run);
        v
    }
}

/// `gc --remote`.
pub struct RemoteGcView {
    pub report: onenet::remote::RemoteGcReport,
    pub dry_run: bool,
    pub remote: String,
}

impl Render for RemoteGcView {
    fn text(&self) -> io::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let r = &self.report;
        out!(
            "{}: {verb} {} manifest(s) and {} blob(s), {}; kept {} manifest(s) and {} blob(s){}",
            self.remote,
            r.manifests_removed.len(),
            r.blobs_removed,
            human_bytes(r.bytes_removed),
            r.manifests_kept,
            r.blobs_kept,
            match r.blobs_too_young {
                0 => String::new(),
                n => format!(", and {n} unreferenced blob(s) younger than an hour"),
            }
        )?;
        if self.dry_run {
            for key in &r.manifests_removed {
                out!("  remove  {}", &key[..12.min(key.len())])?;
            }
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let mut v = json!(self.report);
        v["dry_run"] = json!(self.dry_run);
        v["remote"] = json!(self.remote);
        v
    }
}

/// One object `push` or `pull` handled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransferRow {
    pub stage: String,
    pub key: String,
    pub outcome: String,
    /// Bytes moved.
    pub bytes: u64,
    pub seconds: f64,
}

/// `push` and `pull`.
pub struct TransferView {
    pub rows: Vec<TransferRow>,
    pub remote: String,
}

impl Render for TransferView {
    fn text(&self) -> io::Result<()> {
        for r in &self.rows {
            let rate = if r.bytes > 0 && r.seconds > 0.0 {
                format!(" ({:.1} MB/s)", r.bytes as f64 / 1e6 / r.seconds)
            } else {
                String::new()
            };
            out!(
                "{:<12} {:<12} {} {:>10} {:>7.2}s{rate}",
                r.stage,
                &r.key[..12.min(r.key.len())],
                r.outcome,
                human_bytes(r.bytes),
                r.seconds
            )?;
        }
        let bytes: u64 = self.rows.iter().map(|r| r.bytes).sum();
        out!(
            "{} object(s), {} moved; remote {}",
            self.rows.len(),
            human_bytes(bytes),
            self.remote
        )
    }

    fn json(&self) -> Value {
        json!({"remote": self.remote, "objects": self.rows})
    }
}

/// `remote check`.
pub struct ProbeView {
    pub probes: Vec<onenet::remote::Probe>,
    pub remote: String,
}

impl Render for ProbeView {
    fn text(&self) -> io::Result<()> {
        out!("remote {}", self.remote)?;
        for p in &self.probes {
            out!(
                "  {:<4} {:<26} {}",
                if p.ok { "ok" } else { "FAIL" },
                p.step,
                p.detail
            )?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        json!({"remote": self.remote, "ok": self.probes.iter().all(|p| p.ok), "probes": self.probes})
    }
}

/// `verify`.
pub struct VerifyView(pub VerifyReport);

impl Render for VerifyView {
    fn text(&self) -> io::Result<()> {
        for damaged in &self.0.damaged {
            out!(
                "damaged: stage {} (key {}), moved to {}; the next run recomputes it",
                damaged.stage,
                damaged.key.short(),
                damaged.moved_to.display()
            )?;
            for problem in &damaged.problems {
                out!("  {problem}")?;
            }
        }
        out!(
            "verified {} object(s): {} damaged",
            self.0.checked,
            self.0.damaged.len()
        )
    }

    fn json(&self) -> Value {
        let damaged: Vec<Value> = self
            .0
            .damaged
            .iter()
            .map(|d| {
                json!({"stage": d.stage, "key": d.key.hex(), "moved_to": d.moved_to,
                       "problems": d.problems})
            })
            .collect();
        json!({ "checked": self.0.checked, "damaged": damaged })
    }
}

/// `kinds`.
pub struct KindsView<'a>(pub Vec<&'a StageKind>);

fn default_text(default: ParamDefault) -> String {
    match default {
        ParamDefault::Int(v) => v.to_string(),
        ParamDefault::Float(v) => format!("{v:?}"),
        ParamDefault::Bool(v) => v.to_string(),
        ParamDefault::Str(v) => format!("{v:?}"),
        ParamDefault::Unset => "unset".into(),
    }
}

fn device_word(device: DeviceUse) -> Option<&'static str> {
    match device {
        DeviceUse::NoLibtorch => None,
        DeviceUse::Cpu => Some("cpu"),
        DeviceUse::Best => Some("best"),
    }
}

impl Render for KindsView<'_> {
    fn text(&self) -> io::Result<()> {
        for k in &self.0 {
            out!("{} (version {}): {}", k.name, k.version, k.about)?;
            match k.device {
                DeviceUse::NoLibtorch => {}
                DeviceUse::Cpu => out!("  runs on: the CPU (by design)")?,
                DeviceUse::Best => {
                    out!("  runs on: a CUDA GPU when libtorch can use one, else the CPU")?
                }
            }
            if !k.inputs.kinds.is_empty() {
                out!(
                    "  inputs: {}..{} of kind {}",
                    k.inputs.min,
                    k.inputs.max,
                    k.inputs.kinds.join(", ")
                )?;
            }
            for p in k.params {
                let keyed = match p.effect {
                    Effect::Output => "",
                    Effect::SpeedOnly => ", speed only: not in the key",
                };
                out!(
                    "  {} ({}, default {}{keyed}): {}",
                    p.name,
                    p.ty.describe(),
                    default_text(p.default),
                    p.help
                )?;
            }
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let kinds: Vec<Value> = self
            .0
            .iter()
            .map(|k| {
                let params: Vec<Value> = k
                    .params
                    .iter()
                    .map(|p| {
                        json!({"name": p.name, "type": p.ty.describe(),
                               "default": default_text(p.default),
                               "in_key": p.effect == Effect::Output, "help": p.help})
                    })
                    .collect();
                json!({"name": k.name, "version": k.version, "about": k.about,
                       "device": device_word(k.device),
                       "inputs": {"kinds": k.inputs.kinds, "min": k.inputs.min,
                                  "max": k.inputs.max},
                       "params": params})
            })
            .collect();
        json!({ "kinds": kinds })
    }
}

/// `metrics`: the newest evaluation's table (the same text and JSON the libtorch worker printed
/// when it ran this command).
pub struct MetricsView(pub Vec<Metric>);

impl Render for MetricsView {
    fn text(&self) -> io::Result<()> {
        for m in &self.0 {
            out!(
                "{:<24} {:<16} {:<5} {:.4}",
                m.name,
                m.method,
                m.split,
                m.value
            )?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .0
            .iter()
            .map(
                |m| json!({"name": m.name, "method": m.method, "split": m.split, "value": m.value}),
            )
            .collect();
        json!({ "metrics": rows })
    }
}

/// `-V`/`--version`.
pub struct VersionView {
    pub onenet: &'static str,
    pub libtorch: String,
    /// The device, or why it is unknown.
    pub device: Result<String, String>,
}

impl Render for VersionView {
    fn text(&self) -> io::Result<()> {
        out!("onenet {}", self.onenet)?;
        out!("libtorch {}", self.libtorch)?;
        match &self.device {
            Ok(device) => out!("device: {device}"),
            Err(why) => out!("device: unknown ({why})"),
        }
    }

    fn json(&self) -> Value {
        json!({"onenet": self.onenet, "libtorch": self.libtorch,
               "device": self.device.as_ref().ok()})
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The experiments table (`exp show`, the end of a sweep): one row per object, the params that
/// differ (or all), and the metrics.
pub struct ExpTable {
    pub rows: Vec<ExpRow>,
    pub params: Vec<String>,
    pub metrics: Vec<String>,
}

impl ExpTable {
    pub fn new(rows: Vec<ExpRow>, all_params: bool) -> ExpTable {
        let params = if all_params {
            let names: std::collections::BTreeSet<&String> =
                rows.iter().flat_map(|r| r.params.keys()).collect();
            names.into_iter().cloned().collect()
        } else {
            experiments::differing_params(&rows)
        };
        let metrics = experiments::metric_names(&rows);
        ExpTable {
            rows,
            params,
            metrics,
        }
    }

    fn header(&self) -> Vec<String> {
        let mut header: Vec<String> = ["key", "created", "marks"].map(String::from).to_vec();
        header.extend(self.params.iter().cloned());
        header.extend(self.metrics.iter().cloned());
        header
    }

    fn cells(&self, row: &ExpRow) -> Vec<String> {
        let mut cells = vec![
            row.key.short(),
            onenet_stages::report::utc_text(row.created_unix),
            row.marks.join(" "),
        ];
        cells.extend(self.params.iter().map(|p| {
            row.params
                .get(p)
                .map(experiments::param_text)
                .unwrap_or_else(|| "-".into())
        }));
        cells.extend(self.metrics.iter().map(|m| {
            row.metrics
                .get(m)
                .map(|v| metric_text(*v))
                .unwrap_or_else(|| "-".into())
        }));
        cells
    }

    /// The table as CSV (RFC 4180): a header, then one record per row, full keys.
    pub fn csv(&self) -> io::Result<Vec<u8>> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(self.header())?;
        for row in &self.rows {
            let mut cells = self.cells(row);
            cells[0] = row.key.hex();
            writer.write_record(cells)?;
        }
        writer.into_inner().map_err(|e| e.into_error())
    }
}

/// A metric as a table cell: whole numbers as such, others to 3 decimals.
fn metric_text(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e12 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// Rows of cells as aligned columns, two spaces apart.
fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

impl Render for ExpTable {
    fn text(&self) -> io::Result<()> {
        if self.rows.is_empty() {
            return out!("no runs to show");
        }
        let mut lines = vec![self.header()];
        lines.extend(self.rows.iter().map(|r| self.cells(r)));
        for line in aligned(&lines) {
            out!("{line}")?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| experiments::row_json(r, &self.params))
                .collect(),
        )
    }
}

/// `exp diff`.
pub struct ExpDiffView {
    pub a: ExpRow,
    pub b: ExpRow,
    pub diff: ExpDiff,
}

impl Render for ExpDiffView {
    fn text(&self) -> io::Result<()> {
        let (a, b) = (self.a.key.short(), self.b.key.short());
        out!("{} {a} → {} {b}", self.a.stage, self.b.stage)?;
        if self.diff.params.is_empty() && self.diff.metrics.is_empty() {
            return out!("no differences in params or metrics");
        }
        let text = |v: &Option<onenet::key::KeyParam>| {
            v.as_ref()
                .map(experiments::param_text)
                .unwrap_or_else(|| "-".into())
        };
        let number = |v: &Option<f64>| v.map(metric_text).unwrap_or_else(|| "-".into());
        let mut lines = vec![vec!["".to_string(), a.clone(), b.clone(), String::new()]];
        for (name, x, y) in &self.diff.params {
            lines.push(vec![name.clone(), text(x), text(y), String::new()]);
        }
        for (name, x, y) in &self.diff.metrics {
            let change = match (x, y) {
                (Some(x), Some(y)) => format!("{:+.3}", y - x),
                _ => String::new(),
            };
            lines.push(vec![name.clone(), number(x), number(y), change]);
        }
        for line in aligned(&lines) {
            out!("  {line}")?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let params: Vec<Value> = self
            .diff
            .params
            .iter()
            .map(|(name, x, y)| {
                let typed = |v: &Option<onenet::key::KeyParam>| v.as_ref().map(|v| v.to_json());
                json!({"name": name, "a": typed(x), "b": typed(y)})
            })
            .collect();
        let metrics: Vec<Value> = self
            .diff
            .metrics
            .iter()
            .map(|(name, x, y)| json!({"name": name, "a": x, "b": y}))
            .collect();
        json!({
            "a": self.a.key.hex(),
            "b": self.b.key.hex(),
            "params": params,
            "metrics": metrics,
        })
    }
}

/// `pins`, and the pin `pin` made: each with whether all its objects are still in the store.
pub struct PinsView(pub Vec<(NamedKeys, bool)>);

impl Render for PinsView {
    fn text(&self) -> io::Result<()> {
        if self.0.is_empty() {
            return out!("no pins");
        }
        let mut lines = Vec::new();
        for (pin, present) in &self.0 {
            for (stage, key) in &pin.keys {
                lines.push(vec![
                    pin.name.clone(),
                    stage.clone(),
                    key[..12.min(key.len())].to_string(),
                    onenet_stages::report::utc_text(pin.created_unix),
                    if *present {
                        ""
                    } else {
                        "(gone from the store)"
                    }
                    .to_string(),
                ]);
            }
        }
        for line in aligned(&lines) {
            out!("{line}")?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(pin, present)| {
                    json!({"name": pin.name, "keys": pin.keys, "overrides": pin.overrides,
                           "created_unix": pin.created_unix, "present": present,
                           "pipeline": pin.pipeline})
                })
                .collect(),
        )
    }
}

/// One variant of a sweep, as run.
pub struct SweepVariant {
    pub name: String,
    pub assignments: Vec<String>,
    pub outcomes: Vec<StageOutcome>,
    pub seconds: f64,
}

/// The end of a sweep: a summary and the sweep's experiments table (text), or every variant's
/// outcomes and the table (JSON).
pub struct SweepView<'a> {
    pub sweep: &'a str,
    pub variants: Vec<SweepVariant>,
    pub table: ExpTable,
    pub seconds: f64,
}

impl Render for SweepView<'_> {
    fn text(&self) -> io::Result<()> {
        let all: Vec<&StageOutcome> = self.variants.iter().flat_map(|v| &v.outcomes).collect();
        let count = |a: Action| all.iter().filter(|o| o.action == a).count();
        out!(
            "sweep {}: {} variant(s), {} stage run(s): {} computed, {} cached, {} failed, in {:.2}s",
            self.sweep,
            self.variants.len(),
            all.len(),
            count(Action::Computed),
            count(Action::Cached) + count(Action::Pulled),
            count(Action::Failed) + count(Action::Skipped),
            self.seconds
        )?;
        self.table.text()
    }

    fn json(&self) -> Value {
        let variants: Vec<Value> = self
            .variants
            .iter()
            .map(|v| {
                json!({"name": v.name, "set": v.assignments, "stages": v.outcomes,
                       "seconds": v.seconds})
            })
            .collect();
        json!({"sweep": self.sweep, "variants": variants, "table": self.table.json()})
    }
}
