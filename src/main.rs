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
use std::collections::BTreeMap;

use onenet::config::SweepAxis;
use onenet::engine::{
    latest_dir, Action, Engine, PullOutcome, RunOptions, StageOutcome, StageState,
};
use onenet::experiments;
use onenet::key::CacheKey;
use onenet::plan;
use onenet::store::describe_object;
use onenet::store::Bucket;
use onenet::task_cli::{Format, Pick, TaskCommand};

use cli::args::{
    Cli, Command, ExpCommand, ExpShowArgs, GlobalArgs, QueryArgs, QueryFormat, RemoteCommand,
    RunArgs, TableFormat,
};
use cli::out::{self, diag, out, Verbosity};
use cli::progress::{ProgressMode, RunProgress};
use cli::render::{self, emit};
use onenet_query::{OutputFormat, QueryError};

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
        Command::Run(args) => run_command(global, &args),
        Command::Status {
            set,
            exit_code,
            executor,
            format,
        } => status(global, &set, exit_code, executor, format),
        Command::Dag { format } => dag(global, format),
        Command::Show { stage, format } => show(global, &stage, format),
        Command::Gc {
            dry_run,
            keep_sweeps,
            remote: true,
            format,
        } => gc_remote(global, dry_run, keep_sweeps, format),
        Command::Gc {
            dry_run,
            keep_sweeps,
            remote: false,
            format,
        } => gc(global, dry_run, keep_sweeps, format),
        Command::Push {
            stages,
            pin,
            format,
        } => push(global, &stages, pin.as_deref(), format),
        Command::Pull {
            stages,
            pin,
            format,
        } => pull(global, &stages, pin.as_deref(), format),
        Command::Remote(RemoteCommand::Check { format }) => remote_check(global, format),
        Command::StageTask { file } => stage_task(&file),
        Command::LockProbe { file } => lock_probe(&file),
        Command::Exp(ExpCommand::Show(args)) => exp_show(global, &args),
        Command::Exp(ExpCommand::Diff {
            a,
            b,
            stage,
            format,
        }) => exp_diff(global, &a, &b, stage.as_deref(), format),
        Command::Pin {
            name,
            stage,
            key,
            set,
            format,
        } => pin(
            global,
            &name,
            stage.as_deref(),
            key.as_deref(),
            &set,
            format,
        ),
        Command::Pins { format } => pins(global, format),
        Command::Unpin { name } => unpin(global, &name),
        Command::Verify { format } => verify(global, format),
        Command::Kinds { kind, format } => kinds(kind.as_deref(), format),
        Command::Query(args) => query(global, &args),
        Command::Completions { shell } => completions(shell),
        Command::Task(TaskCommand::Metrics { pick, format }) => metrics(global, &pick, format),
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

/// `run`: one run of the pipeline (with any `--set` values), or a sweep when a `--set` lists
/// several values or `--sweep` names one.
fn run_command(global: &GlobalArgs, args: &RunArgs) -> Result<ExitCode> {
    let pipeline = cli::load_pipeline(global)?;
    let mut axes = match &args.sweep {
        None => Vec::new(),
        Some(name) => pipeline.sweeps.get(name).cloned().ok_or_else(|| {
            cli::UsageError(format!(
                "--sweep {name}: no [sweeps.{name}] in {}{}",
                global.pipeline.display(),
                onenet::config::did_you_mean(name, pipeline.sweeps.keys().map(String::as_str))
            ))
        })?,
    };
    axes.extend(SweepAxis::from_assignments(&args.set)?);
    let variants = SweepAxis::grid(&axes);
    if args.sweep.is_none() && variants.len() == 1 {
        return if args.dry_run {
            dry_run(global, args)
        } else {
            run_stages(global, args)
        };
    }
    run_sweep(global, args, pipeline, variants)
}

/// The engine for `run`, with every `--force` checked against the pipeline.
fn engine_for_run(global: &GlobalArgs, args: &RunArgs) -> Result<(Engine, Vec<usize>)> {
    let mut engine = cli::open_engine(global, &args.set)?;
    if let Some(kind) = args.executor {
        engine.pipeline.executor.kind = kind.into();
    }
    let selection = selection(&engine, global, args)?;
    Ok((engine, selection))
}

/// Checks `--force` and the stages named against `engine`'s pipeline; the stages to run.
fn selection(engine: &Engine, global: &GlobalArgs, args: &RunArgs) -> Result<Vec<usize>> {
    for name in &args.force {
        if engine.pipeline.stage(name).is_none() {
            return Err(cli::UsageError(format!(
                "--force {name}: no such stage in {}",
                global.pipeline.display()
            ))
            .into());
        }
    }
    Ok(plan::select(&engine.pipeline, &args.stages).map_err(cli::UsageError)?)
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
    cli::check_shared_locks(&engine);
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
        push: !args.no_push,
    };
    let start = Instant::now();
    let outcomes = engine.run(&planned, &options, &observer);
    // A variant run (or a named one) is an experiment: `exp show` names it, `--exp` reads it.
    if !engine.pipeline.overrides.is_empty() || args.name.is_some() {
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| experiment_name("exp", &engine.pipeline.overrides));
        if let Err(e) = engine.record_experiment(&name, None, ran_keys(&outcomes)) {
            diag!("warning: could not record the experiment `{name}`: {e}");
        } else {
            out::note(&format!(
                "recorded as experiment `{name}` (read it with --exp {name}; compare with `onenet exp show`)"
            ));
        }
    }
    let view = render::RunView {
        outcomes: &outcomes,
        seconds: start.elapsed().as_secs_f64(),
        latest: engine
            .pipeline
            .overrides
            .is_empty()
            .then(|| engine.store.root().join(engine.store.view())),
    };
    out::ignore_closed(emit(&view, args.format))?;
    Ok(ok_if(view.failed() == 0))
}

/// The keys of the stages a run computed or reused.
fn ran_keys(outcomes: &[StageOutcome]) -> BTreeMap<String, String> {
    outcomes
        .iter()
        .filter(|o| matches!(o.action, Action::Computed | Action::Cached | Action::Pulled))
        .map(|o| (o.name.clone(), o.key.clone()))
        .collect()
}

/// A name for an unnamed experiment or sweep: the same overrides give the same name.
fn experiment_name(prefix: &str, assignments: &[String]) -> String {
    let mut sorted = assignments.to_vec();
    sorted.sort();
    let hash = blake3::hash(sorted.join("\n").as_bytes()).to_hex();
    format!("{prefix}-{}", &hash[..8])
}

/// One variant's stage outcomes and seconds.
type VariantRun = (Vec<StageOutcome>, f64);

/// A sweep: one run per variant (every combination of the values given), each recorded as the
/// experiment `<sweep>-<n>`; stages the variants share are computed once (the later variants
/// find them in the store, or wait for the variant computing them). Every variant is checked
/// before anything runs. Prints the sweep's experiments table at the end.
fn run_sweep(
    global: &GlobalArgs,
    args: &RunArgs,
    pipeline: onenet::config::Pipeline,
    variants: Vec<Vec<String>>,
) -> Result<ExitCode> {
    let mut runs = Vec::with_capacity(variants.len());
    for assignments in &variants {
        let mut variant = pipeline.clone();
        variant.apply_overrides(assignments)?;
        if let Some(kind) = args.executor {
            variant.executor.kind = kind.into();
        }
        let remote = cli::open_remote(global, &variant)?;
        let engine = Engine::open(variant)?.with_remote(remote);
        let selection = selection(&engine, global, args)?;
        runs.push((assignments, engine, selection));
    }
    if let Some((_, engine, _)) = runs.first() {
        cli::check_shared_locks(engine);
    }
    let everything: Vec<String> = variants.iter().flatten().cloned().collect();
    let sweep = match (&args.name, &args.sweep) {
        (Some(name), _) | (None, Some(name)) => name.clone(),
        (None, None) => experiment_name("sweep", &everything),
    };
    onenet::store::check_name(&sweep).map_err(|e| cli::UsageError(e.to_string()))?;
    let total = runs.len();
    let header = |i: usize, assignments: &[String]| {
        format!(
            "variant {}/{total} ({sweep}-{}): {}",
            i + 1,
            i + 1,
            if assignments.is_empty() {
                "as the file reads".to_string()
            } else {
                assignments.join(" ")
            }
        )
    };
    if args.dry_run {
        let mut ok = true;
        for (i, (assignments, engine, selection)) in runs.iter().enumerate() {
            let statuses = engine.status(&engine.plan(selection)?);
            if args.format == Format::Text {
                out!("{}", header(i, assignments))?;
            }
            ok &= emit(
                &render::StatusView {
                    statuses: &statuses,
                    dry_run: Some(&args.force),
                },
                args.format,
            )
            .is_ok();
        }
        return Ok(ok_if(ok));
    }
    let options = RunOptions {
        force: args.force.clone(),
        lock_timeout: Duration::from_secs(args.wait),
        push: !args.no_push,
    };
    let mode = ProgressMode::detect();
    let text = args.format == Format::Text;
    // On a cluster every variant is submitted at once by default: the scheduler decides what
    // runs when.
    let on_cluster = args
        .executor
        .map(onenet::config::ExecutorKind::from)
        .unwrap_or(pipeline.executor.kind)
        == onenet::config::ExecutorKind::Slurm;
    let jobs = match args.jobs {
        Some(n) => usize::from(n),
        None if on_cluster => total,
        None => 1,
    }
    .min(total);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<VariantRun>>> =
        std::sync::Mutex::new(vec![None; total]);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..jobs {
            handles.push(scope.spawn(|| -> Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((assignments, engine, selection)) = runs.get(i) else {
                        return Ok(());
                    };
                    // One variant at a time: its stage lines under its header, as they finish.
                    if text && jobs == 1 {
                        mode.print(|| {
                            let _ = out!("{}", header(i, assignments));
                        });
                    }
                    let observer =
                        RunProgress::with_mode(mode.clone(), text && jobs == 1, HashMap::new());
                    let began = Instant::now();
                    let planned = engine.plan(selection)?;
                    let outcomes = engine.run(&planned, &options, &observer);
                    let seconds = began.elapsed().as_secs_f64();
                    let name = format!("{sweep}-{}", i + 1);
                    if let Err(e) =
                        engine.record_experiment(&name, Some(&sweep), ran_keys(&outcomes))
                    {
                        diag!("warning: could not record the experiment `{name}`: {e}");
                    }
                    if text && jobs > 1 {
                        mode.print(|| {
                            let _ = out!("{}", header(i, assignments));
                            for outcome in &outcomes {
                                let _ = out!("{}", render::outcome_line(outcome));
                            }
                        });
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] =
                        Some((outcomes, seconds));
                }
            }));
        }
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a sweep worker thread panicked"))??;
        }
        Ok(())
    })?;
    let results: Vec<VariantRun> = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect();
    let failed = results
        .iter()
        .flat_map(|(o, _)| o)
        .filter(|o| matches!(o.action, Action::Failed | Action::Skipped))
        .count();
    let table = cli::open_engine(global, &[])?
        .without_worker()
        .exp_rows(None, Some(&sweep))
        .unwrap_or_default();
    let view = render::SweepView {
        sweep: &sweep,
        variants: runs
            .iter()
            .zip(&results)
            .enumerate()
            .map(
                |(i, ((assignments, _, _), (outcomes, seconds)))| render::SweepVariant {
                    name: format!("{sweep}-{}", i + 1),
                    assignments: assignments.to_vec(),
                    outcomes: outcomes.clone(),
                    seconds: *seconds,
                },
            )
            .collect(),
        table: render::ExpTable::new(table, false),
        seconds: start.elapsed().as_secs_f64(),
    };
    out::ignore_closed(emit(&view, args.format))?;
    Ok(ok_if(failed == 0))
}

fn status(
    global: &GlobalArgs,
    set: &[String],
    exit_code: bool,
    executor: Option<cli::args::ExecutorArg>,
    format: Format,
) -> Result<ExitCode> {
    let mut engine = cli::open_engine(global, set)?;
    if let Some(kind) = executor {
        engine.pipeline.executor.kind = kind.into();
    }
    // A stage whose key cannot be computed here (its dataset folder not mounted) is `unknown`,
    // with the reason, and the others are still told.
    let (mut statuses, planned) = engine.status_each(&plan::topological_order(&engine.pipeline));
    let (known, remote_error) = engine.status_with_remote(&planned);
    for status in known {
        if let Some(slot) = statuses.iter_mut().find(|s| s.name == status.name) {
            *slot = status;
        }
    }
    if let Some(e) = remote_error {
        diag!("warning: the remote cache was not asked: {e}");
    }
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
    // A stage whose key cannot be computed here is shown `unknown`, as `status` does.
    let (statuses, _) = engine.status_each(&plan::topological_order(&engine.pipeline));
    let rows = statuses
        .iter()
        .filter_map(|s| Some((engine.pipeline.stage(&s.name)?, s)))
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

fn gc(global: &GlobalArgs, dry_run: bool, keep_sweeps: bool, format: Format) -> Result<ExitCode> {
    let report = cli::open_engine(global, &[])?.gc(dry_run, keep_sweeps)?;
    emit(&render::GcView { report, dry_run }, format)?;
    Ok(ExitCode::SUCCESS)
}

/// The engine and its remote cache, or a usage error saying how to configure one.
fn engine_with_remote(global: &GlobalArgs) -> Result<Engine> {
    let engine = cli::open_engine(global, &[])?;
    if engine.remote().is_none() {
        return Err(cli::usage(if global.offline {
            "--offline: this command needs the remote cache".to_string()
        } else {
            format!(
                "no remote cache: set `remote` under [store] in {}, or ONENET_REMOTE (e.g. \
                 s3://bucket/prefix)",
                global.pipeline.display()
            )
        }));
    }
    Ok(engine)
}

fn gc_remote(
    global: &GlobalArgs,
    dry_run: bool,
    keep_sweeps: bool,
    format: Format,
) -> Result<ExitCode> {
    let engine = engine_with_remote(global)?;
    let keep = engine.gc_roots(keep_sweeps).into_keys().collect();
    let remote = engine.remote().expect("checked above");
    let report = remote.gc(&keep, onenet::remote::BLOB_GRACE, dry_run)?;
    let view = render::RemoteGcView {
        report,
        dry_run,
        remote: remote.url().to_string(),
    };
    emit(&view, format)?;
    Ok(ExitCode::SUCCESS)
}

/// The objects `push` or `pull` moves: a pin's, or one per named stage (default: all) as `pick`
/// finds it; a stage name that is not in the pipeline is a usage error.
fn transfer_targets(
    engine: &Engine,
    global: &GlobalArgs,
    stages: &[String],
    pin: Option<&str>,
    pick: impl Fn(&str) -> Result<Option<CacheKey>>,
) -> Result<Vec<(String, Option<CacheKey>)>> {
    if let Some(name) = pin {
        let pins = engine.store.named(Bucket::Pins);
        let Some(pin) = pins.iter().find(|p| p.name == name) else {
            let known: Vec<&str> = pins.iter().map(|p| p.name.as_str()).collect();
            return Err(cli::usage(format!(
                "no pin named `{name}`{}",
                onenet::config::did_you_mean(name, known.into_iter())
            )));
        };
        return Ok(pin
            .keys
            .iter()
            .map(|(stage, hex)| (stage.clone(), CacheKey::from_hex(hex)))
            .collect());
    }
    for stage in stages {
        if engine.pipeline.stage(stage).is_none() {
            return Err(cli::usage(format!(
                "no stage `{stage}` in {}",
                global.pipeline.display()
            )));
        }
    }
    let order = plan::select(&engine.pipeline, stages).map_err(cli::usage)?;
    order
        .iter()
        .map(|&i| &engine.pipeline.stages[i].name)
        .filter(|name| stages.is_empty() || stages.contains(name))
        .map(|name| Ok((name.clone(), pick(name)?)))
        .collect()
}

fn push(
    global: &GlobalArgs,
    stages: &[String],
    pin: Option<&str>,
    format: Format,
) -> Result<ExitCode> {
    let engine = engine_with_remote(global)?;
    let remote = engine.remote().expect("checked above");
    let targets = transfer_targets(&engine, global, stages, pin, |stage| {
        Ok(engine.store.latest_key(stage))
    })?;
    let mode = ProgressMode::detect();
    let mut rows = Vec::new();
    for (stage, key) in targets {
        let start = Instant::now();
        let (outcome, bytes) = match key.filter(|k| engine.store.has(k)) {
            None => ("not in the local store".to_string(), 0),
            Some(key) => {
                let transfer = mode.transfer(&stage, "pushing");
                match remote.push(&key, &engine.store, &|done, total| {
                    transfer.update(done, total)
                })? {
                    onenet::remote::Pushed::Done { bytes, .. } => ("pushed".to_string(), bytes),
                    onenet::remote::Pushed::AlreadyThere { bytes, .. } => {
                        ("already in the remote".to_string(), bytes)
                    }
                }
            }
        };
        rows.push(render::TransferRow {
            stage,
            key: key.map(|k| k.hex()).unwrap_or_default(),
            outcome,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let ok = rows.iter().all(|r| r.outcome != "not in the local store");
    emit(
        &render::TransferView {
            rows,
            remote: remote.url().to_string(),
        },
        format,
    )?;
    Ok(ok_if(ok))
}

fn pull(
    global: &GlobalArgs,
    stages: &[String],
    pin: Option<&str>,
    format: Format,
) -> Result<ExitCode> {
    let engine = engine_with_remote(global)?;
    let planned = if pin.is_none() {
        let order = plan::select(&engine.pipeline, stages).map_err(cli::usage)?;
        engine.plan(&order)?
    } else {
        Vec::new()
    };
    let targets = transfer_targets(&engine, global, stages, pin, |stage| {
        Ok(planned.iter().find(|p| p.name == stage).map(|p| p.key))
    })?;
    let mode = ProgressMode::detect();
    let mut rows = Vec::new();
    let mut ok = true;
    for (stage, key) in targets {
        let start = Instant::now();
        let Some(key) = key else { continue };
        let transfer = mode.transfer(&stage, "pulling");
        let outcome = engine.pull_key(
            &stage,
            &key,
            pin.is_none(),
            Duration::from_secs(3600),
            &|done, total| transfer.update(done, total),
        )?;
        drop(transfer);
        let (outcome, bytes) = match outcome {
            PullOutcome::Local => ("already here".to_string(), 0),
            PullOutcome::Pulled { bytes } => ("pulled".to_string(), bytes),
            PullOutcome::NotInRemote => {
                ok = false;
                ("not in the remote".to_string(), 0)
            }
            PullOutcome::Unusable(reason) => {
                ok = false;
                (format!("unusable in the remote: {reason}"), 0)
            }
        };
        rows.push(render::TransferRow {
            stage,
            key: key.hex(),
            outcome,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    emit(
        &render::TransferView {
            rows,
            remote: engine
                .remote()
                .map(|r| r.url().to_string())
                .unwrap_or_default(),
        },
        format,
    )?;
    Ok(ok_if(ok))
}

/// One stage, or one shard of a sharded stage, as a cluster job runs it: computed and
/// committed into the shared store named in `file` (written by the engine that submitted it).
fn stage_task(file: &std::path::Path) -> Result<ExitCode> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let task: onenet::task::StageTask = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a stage task", file.display()))?;
    // Tests make a task fail once, to see it resubmitted: the first attempt of each task leaves
    // a marker in this folder and fails.
    if let Some(dir) = std::env::var_os("ONENET_TEST_FAIL_TASK_ONCE") {
        let marker = std::path::Path::new(&dir).join(task.key_inputs.key().hex());
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::File::create_new(&marker).is_ok() {
            bail!("failing this task once on purpose (ONENET_TEST_FAIL_TASK_ONCE)");
        }
    }
    let progress = ProgressMode::detect().start(&task.stage);
    let computed = onenet::task::run_task(
        &task,
        onenet_stages::kinds(),
        Duration::from_secs(24 * 3600),
        progress.as_ref(),
    )?;
    drop(progress);
    out!(
        "{} {} {}",
        if computed { "computed" } else { "cached" },
        task.stage,
        task.key_inputs.key().short()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Whether this process can lock `file` (exit status 0) or another holds it (3): how a run
/// learns that its store's file system honours locks across processes.
fn lock_probe(file: &std::path::Path) -> Result<ExitCode> {
    let handle = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    Ok(match handle.try_lock() {
        Ok(()) => ExitCode::SUCCESS,
        Err(std::fs::TryLockError::WouldBlock) => ExitCode::from(3),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", file.display()))
        }
    })
}

fn remote_check(global: &GlobalArgs, format: Format) -> Result<ExitCode> {
    let engine = engine_with_remote(global)?;
    let remote = engine.remote().expect("checked above");
    let probes = remote.check();
    let ok = probes.iter().all(|p| p.ok);
    emit(
        &render::ProbeView {
            probes,
            remote: remote.url().to_string(),
        },
        format,
    )?;
    Ok(ok_if(ok))
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
fn metrics(global: &GlobalArgs, pick: &Pick, format: Format) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &pick.set)?.without_worker();
    let (_, dir, note) = engine
        .task_output("evaluate", pick.stage.as_deref(), &pick.choice())
        .map_err(anyhow::Error::msg)?;
    if let Some(note) = note {
        out::note(&format!("note: {note}"));
    }
    for warning in engine.take_warnings() {
        diag!("warning: {warning}");
    }
    let metrics = onenet_stages::specs::evaluate::read_metrics(&dir)?;
    emit(&render::MetricsView(metrics), format)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the store only: never starts the libtorch worker.
fn exp_show(global: &GlobalArgs, query: &ExpShowArgs) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &[])?.without_worker();
    let rows = engine
        .exp_rows(query.stage.as_deref(), query.sweep.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut rows = experiments::filter(rows, &query.filters).map_err(cli::usage)?;
    if let Some(metric) = &query.sort {
        experiments::sort_by_metric(&mut rows, metric, query.ascending).map_err(cli::usage)?;
    }
    let table = render::ExpTable::new(rows, query.all_params);
    match query.format {
        TableFormat::Text => emit(&table, Format::Text)?,
        TableFormat::Json => emit(&table, Format::Json)?,
        TableFormat::Csv => out::bytes(&table.csv()?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn query(global: &GlobalArgs, args: &QueryArgs) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let format = match args.format {
        QueryFormat::Text => OutputFormat::Text,
        QueryFormat::Json => OutputFormat::Json,
        QueryFormat::Csv => OutputFormat::Csv,
        QueryFormat::Parquet => OutputFormat::Parquet,
    };
    if format == OutputFormat::Parquet && args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(cli::usage(
            "Parquet is binary: give --output FILE or redirect stdout to a file",
        ));
    }
    let engine = cli::open_engine(global, &[])?.without_worker();
    let (catalog, warnings) = cli::tables::catalog(&engine);
    for warning in warnings {
        diag!("warning: {warning}");
    }
    let mut result = match onenet_query::query(&catalog, &args.sql) {
        Ok(result) => result,
        Err(QueryError::UnknownTable { name, known }) => {
            // Every output in the store has its own names; list those only when asked for one.
            let older = name.contains('@');
            let listed: Vec<&str> = known
                .iter()
                .map(String::as_str)
                .filter(|k| older || !k.contains('@'))
                .collect();
            let hint = if older {
                String::new()
            } else {
                format!(
                    "; older outputs are `<stage>@<key{}>.<table>` (`onenet exp show` lists keys)",
                    cli::tables::KEY_PREFIX_LEN
                )
            };
            return Err(cli::usage(format!(
                "unknown table `{name}`{}; known tables: {}{hint}",
                onenet::config::did_you_mean(&name, listed.iter().copied()),
                if listed.is_empty() {
                    "none (run the pipeline first)".to_string()
                } else {
                    listed.join(", ")
                }
            )));
        }
        Err(e @ QueryError::Sql(_)) => return Err(cli::usage(e)),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    onenet_query::write(&mut result, format, &mut bytes)?;
    match &args.output {
        Some(path) => write_whole(path, &bytes)?,
        None => out::bytes(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces `path` with `bytes` by writing a temporary file beside it and renaming it, so a
/// failed write leaves the old file (or none), never half a result.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn exp_diff(
    global: &GlobalArgs,
    a: &str,
    b: &str,
    stage: Option<&str>,
    format: Format,
) -> Result<ExitCode> {
    let engine = cli::open_engine(global, &[])?.without_worker();
    let a = engine.exp_object(a, stage).map_err(anyhow::Error::msg)?;
    let b = engine.exp_object(b, stage).map_err(anyhow::Error::msg)?;
    let diff = experiments::diff(&a, &b);
    emit(&render::ExpDiffView { a, b, diff }, format)?;
    Ok(ExitCode::SUCCESS)
}

fn pin(
    global: &GlobalArgs,
    name: &str,
    stage: Option<&str>,
    key: Option<&str>,
    set: &[String],
    format: Format,
) -> Result<ExitCode> {
    let engine = cli::open_engine(global, set)?;
    if let Some(stage) = stage {
        if engine.pipeline.stage(stage).is_none() {
            return Err(cli::UsageError(format!(
                "--stage {stage}: no such stage in {}",
                global.pipeline.display()
            ))
            .into());
        }
    }
    let pin = engine.pin(name, stage, key).map_err(anyhow::Error::msg)?;
    emit(&render::PinsView(vec![(pin, true)]), format)?;
    Ok(ExitCode::SUCCESS)
}

fn pins(global: &GlobalArgs, format: Format) -> Result<ExitCode> {
    let store = cli::open_store(global)?;
    let pins = store
        .named(Bucket::Pins)
        .into_iter()
        .map(|pin| {
            let present = pin
                .keys
                .values()
                .all(|hex| CacheKey::from_hex(hex).is_some_and(|k| store.has(&k)));
            (pin, present)
        })
        .collect();
    emit(&render::PinsView(pins), format)?;
    Ok(ExitCode::SUCCESS)
}

fn unpin(global: &GlobalArgs, name: &str) -> Result<ExitCode> {
    let store = cli::open_store(global)?;
    if !store.remove_named(Bucket::Pins, name)? {
        let known: Vec<String> = store
            .named(Bucket::Pins)
            .into_iter()
            .map(|p| p.name)
            .collect();
        return Err(cli::UsageError(format!(
            "no pin named `{name}`{}",
            onenet::config::did_you_mean(name, known.iter().map(String::as_str))
        ))
        .into());
    }
    out::note(&format!(
        "unpinned `{name}`; `onenet gc` may now remove its outputs"
    ));
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
