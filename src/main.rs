//! The `onenet` command line: runs the pipeline declared in `pipeline.toml` and inspects its
//! artifact store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use onenet::config::{self, Pipeline};
use onenet::engine::{
    latest_dir, Action, Engine, RunObserver, RunOptions, StageOutcome, StageState, StageStatus,
};
use onenet::formats::FileSummary;
use onenet::plan;
use onenet::store::describe_object;
use onenet::task_cli::{Format, TaskCommand};
use onenet_stages::Progress;
use serde_json::json;
use std::os::unix::process::CommandExt;

/// Train one captioning network once and use it for four tasks, as a content-hashed batch
/// pipeline.
///
/// onenet reads the stages declared in pipeline.toml, computes a cache key for each from its
/// kind, code version, params, upstream keys, source-file contents and environment, and runs only
/// the stages whose key has no output in the artifact store yet. Outputs (Parquet tables,
/// safetensors tensors) stay in the store; artifacts/latest/<stage>/ holds the newest of each.
#[derive(Parser)]
#[command(name = "onenet", version, about, long_about)]
struct Cli {
    /// The pipeline file.
    #[arg(long, short = 'p', global = true, default_value = "pipeline.toml")]
    pipeline: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stale stages (all, or the named ones and what they need), reusing cached outputs.
    ///
    /// Each stage is shown as computed or cached, with its time and key. Independent stages run
    /// in parallel. A second onenet process running the same stage waits for the first and
    /// reuses its result.
    Run {
        /// Stages to bring up to date, with everything upstream of them (default: all).
        stages: Vec<String>,
        /// Recompute this stage even if its output exists (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Override a param for this run only, e.g. `--set captions.min_count=3`; keys change
        /// exactly as if the file said so (repeatable).
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        set: Vec<String>,
        /// Say what would be computed or reused, and why, without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Output format: readable text, or JSON for scripts.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Seconds to wait for another onenet process computing the same stage.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        wait: u64,
    },
    /// Say whether each stage is fresh, stale or missing, and why (old → new per changed field).
    Status {
        /// Override params as `run --set` would, to see what that run would recompute.
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        set: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show the stage graph: each stage's kind, inputs, key and state, in execution order.
    Dag {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show a stage's newest output: key, paths, and each table's row count and schema.
    Show {
        stage: String,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Remove store objects that no stage's newest output needs, and leftovers of killed runs.
    Gc {
        /// Report what would be removed, and how many bytes, without removing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every stored output against what was written; move damaged ones aside so the next
    /// run recomputes them. Exits with status 1 if anything was damaged.
    Verify,
    /// List the built-in stage kinds and their params (or one kind's, in detail).
    Kinds { kind: Option<String> },
    #[command(flatten)]
    Task(TaskCommand),
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            stages,
            force,
            set,
            dry_run,
            format,
            wait,
        } => {
            let engine = open_engine(&cli.pipeline, &set)?;
            for name in &force {
                if engine.pipeline.stage(name).is_none() {
                    bail!(
                        "--force {name}: no such stage in {}",
                        cli.pipeline.display()
                    );
                }
            }
            let selection = plan::select(&engine.pipeline, &stages).map_err(anyhow::Error::msg)?;
            let planned = engine.plan(&selection)?;
            if dry_run {
                let statuses = engine.status(&planned);
                print_status(&statuses, format, true);
                return Ok(ExitCode::SUCCESS);
            }
            let observer = TerminalObserver::new(format == Format::Text);
            let options = RunOptions {
                force,
                lock_timeout: Duration::from_secs(wait),
            };
            let start = std::time::Instant::now();
            let outcomes = engine.run(&planned, &options, &observer);
            let failed = outcomes
                .iter()
                .filter(|o| matches!(o.action, Action::Failed | Action::Skipped))
                .count();
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "stages": outcomes, "ok": failed == 0 })
                    )?
                ),
                Format::Text => {
                    let computed = outcomes
                        .iter()
                        .filter(|o| o.action == Action::Computed)
                        .count();
                    let cached = outcomes
                        .iter()
                        .filter(|o| o.action == Action::Cached)
                        .count();
                    println!(
                        "{} stage(s): {computed} computed, {cached} cached, {failed} failed, in {:.2}s; newest outputs in {}",
                        outcomes.len(),
                        start.elapsed().as_secs_f64(),
                        engine.store.root().join("latest").display()
                    );
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { set, format } => {
            let engine = open_engine(&cli.pipeline, &set)?;
            let planned = engine.plan(&plan::topological_order(&engine.pipeline))?;
            print_status(&engine.status(&planned), format, false);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dag { format } => {
            let engine = open_engine(&cli.pipeline, &[])?;
            let planned = engine.plan(&plan::topological_order(&engine.pipeline))?;
            let statuses = engine.status(&planned);
            let rows: Vec<_> = planned
                .iter()
                .zip(&statuses)
                .map(|(p, s)| {
                    let decl = &engine.pipeline.stages[p.index];
                    (decl, p, s)
                })
                .collect();
            match format {
                Format::Json => {
                    let stages: Vec<_> = rows
                        .iter()
                        .map(|(d, p, s)| {
                            json!({"name": d.name, "kind": d.kind.name, "inputs": d.inputs,
                                   "key": p.key.hex(), "state": s.state})
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({ "stages": stages }))?
                    );
                }
                Format::Text => {
                    let width = rows.iter().map(|(d, _, _)| d.name.len()).max().unwrap_or(0);
                    for (d, p, s) in rows {
                        let inputs = if d.inputs.is_empty() {
                            String::new()
                        } else {
                            format!(" ← {}", d.inputs.join(", "))
                        };
                        println!(
                            "{:width$}  {:7}  {}  {}{inputs}",
                            d.name,
                            state_word(s.state),
                            p.key.short(),
                            d.kind.name,
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { stage, format } => {
            let engine = open_engine(&cli.pipeline, &[])?;
            show(&engine, &stage, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { dry_run } => {
            let store_dir = config::load(&cli.pipeline)?.store_dir;
            let store = onenet::store::ArtifactStore::open(&store_dir)?;
            let report = store.gc(dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} object(s) and {} leftover(s), {}; kept {} object(s) the newest outputs need",
                report.objects_removed,
                report.leftovers_removed,
                human_bytes(report.bytes),
                report.kept
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let store_dir = config::load(&cli.pipeline)?.store_dir;
            let store = onenet::store::ArtifactStore::open(&store_dir)?;
            let bar = progress_bar(std::io::stderr().is_terminal());
            let report = store.verify(&|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            for damaged in &report.damaged {
                println!(
                    "damaged: stage {} (key {}), moved to {}; the next run recomputes it",
                    damaged.stage,
                    damaged.key.short(),
                    damaged.moved_to.display()
                );
                for problem in &damaged.problems {
                    println!("  {problem}");
                }
            }
            println!(
                "verified {} object(s): {} damaged",
                report.checked,
                report.damaged.len()
            );
            Ok(if report.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Task(_) => {
            // The tasks need libtorch: the worker binary runs them, with these very arguments.
            let worker = onenet_stages::worker::worker_path();
            let error = std::process::Command::new(&worker)
                .args(std::env::args_os().skip(1))
                .exec();
            bail!("cannot start {}: {error}", worker.display())
        }
        Command::Kinds { kind } => {
            let kinds: Vec<_> = match &kind {
                None => onenet_stages::kinds().iter().collect(),
                Some(name) => vec![onenet_stages::kind(name).with_context(|| {
                    format!(
                        "no stage kind `{name}`{}",
                        config::did_you_mean(name, onenet_stages::kinds().iter().map(|k| k.name))
                    )
                })?],
            };
            for k in kinds {
                println!("{} (version {}): {}", k.name, k.version, k.about);
                match k.device {
                    onenet_stages::DeviceUse::NoLibtorch => {}
                    onenet_stages::DeviceUse::Cpu => println!("  runs on: the CPU (by design)"),
                    onenet_stages::DeviceUse::Best => {
                        println!("  runs on: a CUDA GPU when libtorch can use one, else the CPU")
                    }
                }
                if !k.inputs.kinds.is_empty() {
                    println!(
                        "  inputs: {}..{} of kind {}",
                        k.inputs.min,
                        k.inputs.max,
                        k.inputs.kinds.join(", ")
                    );
                }
                for p in k.params {
                    let default = match p.default {
                        onenet_stages::ParamDefault::Int(v) => v.to_string(),
                        onenet_stages::ParamDefault::Float(v) => format!("{v:?}"),
                        onenet_stages::ParamDefault::Bool(v) => v.to_string(),
                        onenet_stages::ParamDefault::Str(v) => format!("{v:?}"),
                        onenet_stages::ParamDefault::Unset => "unset".into(),
                    };
                    let keyed = match p.effect {
                        onenet_stages::Effect::Output => "",
                        onenet_stages::Effect::SpeedOnly => ", speed only: not in the key",
                    };
                    println!(
                        "  {} ({}, default {default}{keyed}): {}",
                        p.name,
                        p.ty.describe(),
                        p.help
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_engine(pipeline: &Path, set: &[String]) -> Result<Engine> {
    let mut pipeline: Pipeline = config::load(pipeline)?;
    pipeline.apply_overrides(set)?;
    Ok(Engine::open(pipeline)?)
}

fn state_word(state: StageState) -> &'static str {
    match state {
        StageState::Fresh => "fresh",
        StageState::Stale => "stale",
        StageState::Missing => "missing",
    }
}

fn print_status(statuses: &[StageStatus], format: Format, dry_run: bool) {
    match format {
        Format::Json => {
            let stages: Vec<_> = statuses
                .iter()
                .map(|s| {
                    let mut v = json!(s);
                    if dry_run {
                        v["action"] = json!(if s.state == StageState::Fresh {
                            "cached"
                        } else {
                            "compute"
                        });
                    }
                    v
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "stages": stages })).unwrap_or_default()
            );
        }
        Format::Text => {
            let width = statuses.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in statuses {
                let word = if dry_run {
                    if s.state == StageState::Fresh {
                        "would reuse"
                    } else {
                        "would compute"
                    }
                } else {
                    state_word(s.state)
                };
                let reasons = if s.reasons.is_empty() {
                    String::new()
                } else {
                    format!("  {}", s.reasons_text())
                };
                println!("{:width$}  {word:<13}  {}{reasons}", s.name, &s.key[..12]);
            }
        }
    }
}

fn show(engine: &Engine, stage: &str, format: Format) -> Result<()> {
    let Some(decl) = engine.pipeline.stage(stage) else {
        bail!(
            "no stage `{stage}` in {}{}",
            engine.pipeline.path.display(),
            config::did_you_mean(
                stage,
                engine.pipeline.stages.iter().map(|s| s.name.as_str())
            )
        );
    };
    let planned = engine
        .plan(&plan::select(&engine.pipeline, &[stage.to_string()]).map_err(anyhow::Error::msg)?)?;
    let current = planned
        .iter()
        .find(|p| p.name == stage)
        .context("stage missing from its own plan")?;
    let status = engine.status(std::slice::from_ref(current)).remove(0);
    let Some(dir) = latest_dir(&engine.store, stage) else {
        bail!(
            "stage `{stage}` has no output yet ({}); run `onenet run {stage}`",
            status.reasons_text()
        );
    };
    let key = engine
        .store
        .latest_key(stage)
        .context("latest link vanished")?;
    let meta = engine
        .store
        .meta(&key)
        .context("object metadata unreadable")?;
    let files = describe_object(&dir, &meta);
    let latest = engine.store.latest_link(stage);
    match format {
        Format::Json => {
            let files: Vec<_> = files
                .iter()
                .map(|(path, bytes, summary)| {
                    let mut v = json!({"path": latest.join(path), "bytes": bytes});
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
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "name": stage, "kind": decl.kind.name, "key": meta.key,
                    "state": status.state, "path": latest, "object": dir,
                    "seconds": meta.seconds, "warnings": meta.warnings, "notes": meta.notes,
                    "files": files,
                }))?
            );
        }
        Format::Text => {
            println!("stage   {stage} ({})", decl.kind.name);
            println!("key     {}", meta.key);
            println!(
                "state   {} {}",
                state_word(status.state),
                status.reasons_text()
            );
            println!("path    {}", latest.display());
            println!("object  {}", dir.display());
            println!("took    {:.2}s", meta.seconds);
            for note in &meta.notes {
                println!("note    {note}");
            }
            for warning in &meta.warnings {
                println!("warning {warning}");
            }
            // Large folders (thousands of images) are summarised, tables shown in full.
            let mut others = 0usize;
            let mut other_bytes = 0u64;
            for (path, bytes, summary) in &files {
                match summary {
                    Ok(FileSummary::Table { rows, columns }) => {
                        println!("\n{path}  ({rows} rows, {})", human_bytes(*bytes));
                        for (name, ty) in columns {
                            println!("  {name}: {ty}");
                        }
                    }
                    Ok(FileSummary::Tensors { tensors }) => {
                        println!("\n{path}  ({})", human_bytes(*bytes));
                        for (name, dtype, shape) in tensors {
                            println!("  {name}: {dtype} {shape:?}");
                        }
                    }
                    Ok(FileSummary::Other) => {
                        others += 1;
                        other_bytes += bytes;
                    }
                    Err(e) => println!("\n{path}: {e}"),
                }
            }
            if others > 0 {
                println!("\n{others} other file(s), {}", human_bytes(other_bytes));
            }
        }
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
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

fn progress_bar(visible: bool) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if !visible {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Prints stage outcomes as they finish and draws a progress bar per running stage (on stderr,
/// only when it is a terminal).
struct TerminalObserver {
    multi: MultiProgress,
    text: bool,
}

impl TerminalObserver {
    fn new(text: bool) -> Self {
        let target = if text && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        TerminalObserver {
            multi: MultiProgress::with_draw_target(target),
            text,
        }
    }
}

struct StageBar(ProgressBar);

impl Progress for StageBar {
    fn start(&self, len: u64, what: &str) {
        self.0.set_length(len);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }

    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn set_message(&self, message: &str) {
        self.0.set_message(message.to_string());
    }
}

impl Drop for StageBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl RunObserver for TerminalObserver {
    fn stage_started(&self, name: &str) -> Box<dyn Progress + '_> {
        let bar = self.multi.add(progress_bar(true));
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Box::new(StageBar(bar))
    }

    fn waiting_for_lock(&self, name: &str, lock: &Path) {
        let _ = self.multi.println(format!(
            "waiting: another onenet process is computing {name} (lock {}); its result will be reused",
            lock.display()
        ));
        if !std::io::stderr().is_terminal() {
            eprintln!(
                "waiting: another onenet process is computing {name} (lock {}); its result will be reused",
                lock.display()
            );
        }
    }

    fn stage_finished(&self, outcome: &StageOutcome) {
        if !self.text {
            return;
        }
        let word = match outcome.action {
            Action::Computed => "computed",
            Action::Cached => "cached",
            Action::Failed => "FAILED",
            Action::Skipped => "skipped",
        };
        let mut text = format!(
            "{word:<9} {:<12} {:>7.2}s  {}",
            outcome.name,
            outcome.seconds,
            &outcome.key[..12]
        );
        if outcome.action == Action::Computed {
            for note in &outcome.notes {
                text.push_str(&format!("\n          {note}"));
            }
            for warning in &outcome.warnings {
                text.push_str(&format!("\n          warning: {warning}"));
            }
        }
        if let Some(error) = &outcome.error {
            text.push_str(&format!("\n          error: {error}"));
        }
        self.multi.suspend(|| println!("{text}"));
    }
}
