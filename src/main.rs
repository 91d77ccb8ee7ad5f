//! The `onenet` command line: runs the pipeline declared in `pipeline.toml` and inspects its
//! artifact store. `main` parses the arguments and hands each command to one small function;
//! what they print is rendered by `cli::render`, progress by `cli::progress`.

mod cli;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};
use onenet::engine::{latest_dir, Engine, RunOptions, StageState};
use onenet::plan;
use onenet::store::describe_object;
use onenet::task_cli::{Format, TaskCommand};

use cli::args::{Cli, Command, GlobalArgs, RunArgs};
use cli::out::{self, diag, Verbosity};
use cli::progress::{ProgressMode, RunProgress};
use cli::render::{self, emit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    out::set_verbosity(cli.global.verbosity());
    match run(cli) {
        Ok(code) => code,
        // The reader of our output has gone (`onenet status | head -1`): not an error.
        Err(e) if out::is_closed_pipe(&e) => ExitCode::SUCCESS,
        // A command line that names what does not exist, like clap's own usage errors.
        Err(e) if cli::is_usage_error(&e) => {
            diag!("error: {}", cli::error_message(&e));
            ExitCode::from(2)
        }
        Err(e) => {
            diag!("error: {}", cli::error_message(&e));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    if global.version {
        return version();
    }
    let Some(command) = cli.command else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required",
            )
            .exit()
    };
    match command {
        Command::Run(args) if args.dry_run => dry_run(global, &args),
        Command::Run(args) => run_stages(global, &args),
        Command::Status {
            set,
            exit_code,
            format,
        } => status(global, &set, exit_code, format),
        Command::Dag { format } => dag(global, format),
        Command::Show { stage, format } => show(global, &stage, format),
        Command::Gc { dry_run, format } => gc(global, dry_run, format),
        Command::Verify { format } => verify(global, format),
        Command::Kinds { kind, format } => kinds(kind.as_deref(), format),
        Command::Completions { shell } => completions(shell),
        Command::Task(TaskCommand::Metrics { format }) => metrics(global, format),
        Command::Task(_) => task(),
    }
}

fn ok_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The engine for `run`, with every `--force` checked against the pipeline.
fn engine_for_run(global: &GlobalArgs, args: &RunArgs) -> Result<(Engine, Vec<usize>)> {
    let engine = cli::open_engine(global, &args.set)?;
    for name in &args.force {
        if engine.pipeline.stage(name).is_none() {
            return Err(cli::UsageError(format!(
                "--force {name}: no such stage in {}",
                global.pipeline.display()
            ))
            .into());
        }
    }
    let selection = plan::select(&engine.pipeline, &args.stages).map_err(cli::UsageError)?;
    Ok((engine, selection))
}

fn dry_run(global: &GlobalArgs, args: &RunArgs) -> Result<ExitCode> {
    let (engine, selection) = engine_for_run(global, args)?;
    let statuses = engine.status(&engine.plan(&selection)?);
    let view = render::StatusView {
        statuses: &statuses,
        dry_run: Some(&args.force),
    };
    emit(&view, args.format)?;
    Ok(ExitCode::SUCCESS)
}

/// If stdout's reader goes away mid-run (`onenet run | head -1`), the run still finishes the
/// stages it started and the ones after them, printing nothing more on stdout, and exits as it
/// would have. Stopping instead would throw away the work of the running stages (a training
/// run, say) for a closed pipe, and the engine offers no point between stages to stop at;
/// every commit is atomic either way, so nothing half-written is ever left.
fn run_stages(global: &GlobalArgs, args: &RunArgs) -> Result<ExitCode> {
    let (engine, selection) = engine_for_run(global, args)?;
    let planned = engine.plan(&selection)?;
    let mut reasons = HashMap::new();
    if out::verbosity() == Verbosity::Verbose {
        for s in engine.status(&planned) {
            let why = if args.force.contains(&s.name) {
                "--force".to_string()
            } else {
                s.reasons_text()
            };
            reasons.insert(s.name, why);
        }
    }
    let observer = RunProgress::new(args.format == Format::Text, reasons);
    let options = RunOptions {
        force: args.force.clone(),
        lock_timeout: Duration::from_secs(args.wait),
    };
    let start = Instant::now();
    let outcomes = engine.run(&planned, &options, &observer);
    let view = render::RunView {
        outcomes: &outcomes,
        seconds: start.elapsed().as_secs_f64(),
        latest: engine.store.root().join(engine.store.view()),
    };
    out::ignore_closed(emit(&view, args.format))?;
    Ok(ok_if(view.failed() == 0))
}

fn status(
    global: &GlobalArgs,
    set: &[String],
    exit_code: bool,
    format: Format,
) -> Result<ExitCode> {
    let engine = cli::open_engine(global, set)?;
    let planned = engine.plan(&plan::topological_order(&engine.pipeline))?;
    let statuses = engine.status(&planned);
    let view = render::StatusView {
        statuses: &statuses,
        dry_run: None,
    };
    emit(&view, format)?;
    let all_fresh = statuses.iter().all(|s| s.state == StageState::Fresh);
    Ok(ok_if(!exit_code || all_fresh))
}

fn dag(global: &GlobalArgs, format: Format) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &[])?;
    let planned = engine.plan(&plan::topological_order(&engine.pipeline))?;
    let statuses = engine.status(&planned);
    let rows = planned
        .iter()
        .zip(&statuses)
        .map(|(p, s)| (&engine.pipeline.stages[p.index], p, s))
        .collect();
    emit(&render::DagView { rows }, format)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the store only: never starts the libtorch worker.
fn show(global: &GlobalArgs, stage: &str, format: Format) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &[])?.without_worker();
    let Some(decl) = engine.pipeline.stage(stage) else {
        bail!(
            "no stage `{stage}` in {}{}",
            engine.pipeline.path.display(),
            onenet::config::did_you_mean(
                stage,
                engine.pipeline.stages.iter().map(|s| s.name.as_str())
            )
        );
    };
    let status = cli::current_status(&engine, stage);
    let Some(object) = latest_dir(&engine.store, stage) else {
        let why = match &status {
            Ok(status) => format!(" ({})", status.reasons_text()),
            Err(_) => String::new(),
        };
        bail!("stage `{stage}` has no output yet{why}; run `onenet run {stage}`");
    };
    let key = engine
        .store
        .latest_key(stage)
        .context("latest link vanished")?;
    let meta = engine
        .store
        .meta(&key)
        .context("object metadata unreadable")?;
    let view = render::ShowView {
        stage,
        kind: decl.kind.name,
        status,
        files: describe_object(&object, &meta),
        meta,
        latest: engine.store.latest_link(stage),
        object,
    };
    emit(&view, format)?;
    Ok(ExitCode::SUCCESS)
}

fn gc(global: &GlobalArgs, dry_run: bool, format: Format) -> Result<ExitCode> {
    let report = cli::open_engine(global, &[])?.gc(dry_run)?;
    emit(&render::GcView { report, dry_run }, format)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(global: &GlobalArgs, format: Format) -> Result<ExitCode> {
    let store = cli::open_store(global)?;
    let progress = ProgressMode::detect().start("verify");
    let last = std::cell::Cell::new(None::<(u64, u64)>);
    let report = store.verify(&|done, total| {
        let before = match last.get() {
            Some((seen, len)) if len == total => seen,
            _ => {
                progress.start(total, "hashing objects");
                0
            }
        };
        progress.inc(done.saturating_sub(before));
        last.set(Some((done, total)));
    })?;
    drop(progress);
    let clean = report.damaged.is_empty();
    emit(&render::VerifyView(report), format)?;
    Ok(ok_if(clean))
}

fn kinds(kind: Option<&str>, format: Format) -> Result<ExitCode> {
    let kinds = match kind {
        None => onenet_stages::kinds().iter().collect(),
        Some(name) => vec![onenet_stages::kind(name).with_context(|| {
            format!(
                "no stage kind `{name}`{}",
                onenet::config::did_you_mean(name, onenet_stages::kinds().iter().map(|k| k.name))
            )
        })?],
    };
    emit(&render::KindsView(kinds), format)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the evaluation's table itself: no libtorch needed, so no worker started.
fn metrics(global: &GlobalArgs, format: Format) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &[])?.without_worker();
    let (_, dir) = engine
        .newest_output_of_kind("evaluate")
        .map_err(anyhow::Error::msg)?;
    let metrics = onenet_stages::specs::evaluate::read_metrics(&dir)?;
    emit(&render::MetricsView(metrics), format)?;
    Ok(ExitCode::SUCCESS)
}

fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "onenet", &mut script);
    out::bytes(&script)?;
    Ok(ExitCode::SUCCESS)
}

fn version() -> Result<ExitCode> {
    let view = render::VersionView {
        onenet: env!("CARGO_PKG_VERSION"),
        libtorch: onenet_stages::libtorch_version(),
        device: cli::device_here(),
    };
    emit(&view, Format::Text)?;
    Ok(ExitCode::SUCCESS)
}

/// The tasks need libtorch: the worker binary runs them, with these very arguments.
fn task() -> Result<ExitCode> {
    let worker = onenet_stages::worker::worker_path();
    let error = std::process::Command::new(&worker)
        .args(cli::args::worker_args(std::env::args_os().skip(1)))
        .exec();
    bail!(
        "cannot start the libtorch worker {}: {error} (it is built with `cargo build`)",
        worker.display()
    )
}
