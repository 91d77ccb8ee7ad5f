//! `onenet-torch`: the process that loads libtorch. The `onenet` engine starts it to run the
//! stage kinds that need libtorch (`run-stage`, one stage per process) and hands it the task
//! commands (`caption`, `find-images`, …), so that the engine itself starts without libtorch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use onenet::config;
use onenet::engine::Engine;
use onenet::experiments::Choice;
use onenet::task_cli::{Format, Pick, TaskCommand};
use onenet_stages::specs;
use serde_json::json;

/// The libtorch worker of onenet; run `onenet` instead.
#[derive(Parser)]
#[command(name = "onenet", version)]
struct Cli {
    #[arg(long, short = 'p', global = true, default_value = "pipeline.toml")]
    pipeline: PathBuf,

    #[command(subcommand)]
    command: WorkerCommand,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Run one stage described by a JSON job read from stdin (what the engine sends).
    #[command(hide = true)]
    RunStage,
    /// Print, as JSON, the device a stage that may use a GPU runs on here and the libtorch
    /// version (what the engine puts in cache keys).
    #[command(hide = true)]
    Device,
    #[command(flatten)]
    Task(TaskCommand),
}

/// `println!` that returns the write error instead of panicking, so a closed pipe
/// (`onenet caption … | head -1`) ends the task quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // A malformed `--set` is a usage error, as `onenet`'s own commands report it.
            let usage = e.chain().any(|c| {
                c.downcast_ref::<config::ConfigError>()
                    .is_some_and(config::ConfigError::is_usage)
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let task = match cli.command {
        WorkerCommand::RunStage => return run_stage(),
        WorkerCommand::Device => {
            outln!(
                "{}",
                json!({
                    "device": onenet_torch::runtime::best_device_name(),
                    "libtorch": onenet_stages::libtorch_version(),
                })
            );
            return Ok(ExitCode::SUCCESS);
        }
        WorkerCommand::Task(task) => task,
    };
    let _ = CHOSEN.set(task.pick().clone());
    let engine = open_engine(&cli.pipeline, &task.pick().set)?;
    let result = run_task(&engine, task);
    // Said once, after the answer: which outputs were read without checking their freshness.
    for warning in engine.take_warnings() {
        eprintln!("warning: {warning}");
    }
    result
}

/// Runs one task command on the outputs `engine` resolves to.
fn run_task(engine: &Engine, task: TaskCommand) -> Result<ExitCode> {
    match task {
        TaskCommand::Caption {
            images,
            id,
            beam,
            format,
            ..
        } => caption(engine, &images, &id, beam, format),
        TaskCommand::SimilarImages {
            image,
            id,
            k,
            format,
            ..
        } => similar_images(engine, image, id, k, format),
        TaskCommand::SimilarWords {
            word, k, format, ..
        } => similar_words(engine, word, k, format),
        TaskCommand::SimilarCaptions {
            text, k, format, ..
        } => similar_captions(engine, text, k, format),
        TaskCommand::FindImages {
            texts,
            k,
            steps,
            restarts,
            rerank,
            seed,
            format,
            ..
        } => {
            let inversion = Inversion {
                steps: steps.unwrap_or(specs::evaluate::DEFAULT_INVERT_STEPS as usize),
                restarts: restarts.unwrap_or(specs::evaluate::DEFAULT_INVERT_RESTARTS as usize),
                rerank: rerank.unwrap_or(specs::evaluate::DEFAULT_RERANK as usize),
                seed: seed.unwrap_or(specs::evaluate::DEFAULT_INVERT_SEED),
            };
            find_images(engine, texts, k, &inversion, format)
        }
        // `onenet` answers `metrics` itself, from the table, without starting this worker.
        TaskCommand::Metrics { .. } => bail!("`metrics` is answered by `onenet` itself"),
    }
}

/// Captions every readable file of `images` and every dataset image of `ids`, in that order;
/// unreadable files are reported after the captions of the others, and make the status 1.
fn caption(
    engine: &Engine,
    images: &[PathBuf],
    ids: &[String],
    beam: usize,
    format: Format,
) -> Result<ExitCode> {
    let trained = load_trained(engine)?;
    let mut results = Vec::new();
    let read = onenet_torch::tasks::read_files(images);
    for warning in &read.warnings {
        eprintln!("warning: {warning}");
    }
    if !read.pictures.is_empty() {
        let extractor = load_extractor(engine)?;
        let features = extractor.features(read.pictures.iter().map(|(_, picture)| picture));
        let captions = onenet_torch::tasks::caption_features(&trained, &features, beam);
        results.extend(
            read.pictures
                .iter()
                .zip(captions)
                .map(|((path, _), caption)| onenet_torch::tasks::Captioned {
                    path: path.clone(),
                    id: None,
                    caption,
                }),
        );
    }
    if !ids.is_empty() {
        // The features the pipeline computed: the same reader read the same file.
        let features_dir = output_dir(engine, specs::features::KIND.name)?;
        let matrix = onenet_torch::features::FeatureMatrix::read(&features_dir, tch_cpu())?;
        let files_root = files_root_of(engine, &features_dir);
        let row_of = matrix.row_of();
        let rows = ids
            .iter()
            .map(|id| {
                row_of
                    .get(id.as_str())
                    .map(|&row| row as i64)
                    .with_context(|| format!("no image with id {id:?} in the pipeline's images"))
            })
            .collect::<Result<Vec<i64>>>()?;
        let features = matrix
            .features
            .index_select(0, &tch::Tensor::from_slice(&rows));
        let captions = onenet_torch::tasks::caption_features(&trained, &features, beam);
        results.extend(rows.iter().zip(captions).map(|(&row, caption)| {
            let row = &matrix.rows[row as usize];
            onenet_torch::tasks::Captioned {
                path: onenet_torch::tasks::shown_path(files_root.as_deref(), &row.path),
                id: Some(row.image_id.clone()),
                caption,
            }
        }));
    }
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "results": results,
                "unreadable": read.unreadable,
                "warnings": read.warnings,
            }))?
        ),
        Format::Text => {
            for r in &results {
                match &r.id {
                    Some(id) => outln!("{id}: {}", r.caption),
                    None => outln!("{}: {}", r.path, r.caption),
                }
            }
        }
    }
    for failed in &read.unreadable {
        eprintln!("error: {}: {}", failed.path, failed.error);
    }
    Ok(if read.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn similar_images(
    engine: &Engine,
    image: Option<PathBuf>,
    id: Option<String>,
    k: usize,
    format: Format,
) -> Result<ExitCode> {
    let embed_dir = output_dir(engine, specs::embed::KIND.name)?;
    let files_root = files_root_of(engine, &embed_dir);
    let index = onenet_torch::tasks::ImageIndex::read(&embed_dir, files_root.as_deref())?;
    let (query, exclude, label) = match (image, id) {
        (_, Some(id)) => {
            let row = index
                .row_of(&id)
                .with_context(|| format!("no image with id {id:?} in the pipeline's images"))?;
            (index.vector(row).to_vec(), Some(row), id)
        }
        (Some(path), None) => {
            let read = onenet_torch::tasks::read_files(std::slice::from_ref(&path));
            for warning in &read.warnings {
                eprintln!("warning: {warning}");
            }
            let Some((_, picture)) = read.pictures.first() else {
                let failed = read.unreadable.first().map(|u| u.error.as_str());
                bail!("{}: {}", path.display(), failed.unwrap_or("unreadable"));
            };
            let trained = load_trained(engine)?;
            let extractor = load_extractor(engine)?;
            let vector = onenet_torch::tasks::embed_picture(&trained, &extractor, picture);
            // The query file itself, if it is one of the dataset's images.
            let hash = onenet_stages::hash_file(&path)?;
            let features_dir = output_dir(engine, specs::features::KIND.name)?;
            let exclude = specs::features::read_rows(&features_dir)?
                .iter()
                .find(|r| r.hash == hash)
                .and_then(|r| index.row_of(&r.image_id));
            (vector, exclude, path.display().to_string())
        }
        (None, None) => bail!("give an image file or --id IMAGE_ID"),
    };
    let matches = index.nearest(&query, k, exclude);
    print_matches(&[(label, matches, Vec::new())], format)?;
    Ok(ExitCode::SUCCESS)
}

fn similar_words(engine: &Engine, word: String, k: usize, format: Format) -> Result<ExitCode> {
    let embed_dir = output_dir(engine, specs::embed::KIND.name)?;
    // The vocabulary beside the model, for its lemma table; the weights are not needed.
    let model_dir = output_dir(engine, specs::train::KIND.name)?;
    let vocab = onenet_stages::captions::Vocabulary::read(
        &model_dir.join(onenet_stages::captions::VOCAB_TABLE),
    )?;
    let matches = onenet_torch::tasks::similar_words(&embed_dir, &vocab, &word, k)?;
    print_matches(&[(word, matches, Vec::new())], format)?;
    Ok(ExitCode::SUCCESS)
}

fn similar_captions(engine: &Engine, text: String, k: usize, format: Format) -> Result<ExitCode> {
    let trained = load_trained(engine)?;
    let embed_dir = output_dir(engine, specs::embed::KIND.name)?;
    let (matches, unknown) = onenet_torch::tasks::similar_captions(&trained, &embed_dir, &text, k)?;
    print_matches(&[(text, matches, unknown)], format)?;
    Ok(ExitCode::SUCCESS)
}

/// `find-images`' settings, each defaulting to the `evaluate` stage's.
struct Inversion {
    steps: usize,
    restarts: usize,
    rerank: usize,
    seed: i64,
}

fn find_images(
    engine: &Engine,
    texts: Vec<String>,
    k: usize,
    inversion: &Inversion,
    format: Format,
) -> Result<ExitCode> {
    let trained = load_trained(engine)?;
    let embed_dir = output_dir(engine, specs::embed::KIND.name)?;
    let files_root = files_root_of(engine, &embed_dir);
    let index = onenet_torch::tasks::ImageIndex::read(&embed_dir, files_root.as_deref())?;
    tch::manual_seed(inversion.seed);
    let results = onenet_torch::tasks::find_images(
        &trained,
        &index,
        &texts,
        k,
        inversion.steps,
        inversion.restarts,
        specs::evaluate::DEFAULT_INVERT_LEARNING_RATE,
        inversion.rerank,
    )?;
    let labelled: Vec<_> = texts
        .into_iter()
        .zip(results)
        .map(|(t, found)| (t, found.matches, found.unknown))
        .collect();
    print_matches(&labelled, format)?;
    Ok(ExitCode::SUCCESS)
}

fn run_stage() -> Result<ExitCode> {
    // Die with the engine: a killed run must not leave its stage running.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets this process's own parent-death signal.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let job: onenet_stages::StageJob =
        serde_json::from_reader(std::io::stdin().lock()).context("reading the stage job")?;
    let run = onenet_torch::run_of_kind(&job.kind)
        .with_context(|| format!("stage kind `{}` does not run in the worker", job.kind))?;
    let device =
        onenet_torch::runtime::device_for(onenet_torch::runtime::kind_device_use(&job.kind));
    let device = onenet_torch::runtime::device_name(device);
    Ok(if onenet_stages::worker::serve(&job, run, device) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn open_engine(pipeline: &Path, set: &[String]) -> Result<Engine> {
    let mut pipeline = config::load(pipeline, onenet_stages::kinds())?;
    pipeline.apply_overrides(set)?;
    Ok(Engine::open(pipeline)?)
}

fn tch_cpu() -> tch::Device {
    tch::Device::Cpu
}

/// The outputs chosen with `--stage`, `--exp`, `--key`, for the one task this process runs.
static CHOSEN: std::sync::OnceLock<Pick> = std::sync::OnceLock::new();

/// `--stage` and the explicit choice of objects.
fn chosen() -> (Option<String>, Choice) {
    let pick = CHOSEN.get().cloned().unwrap_or_default();
    (pick.stage.clone(), pick.choice())
}

/// The output folder of the stage of kind `kind` the task reads: the one `--stage` chose (or
/// the one connected to it), else the first in the file — saying so when there are several.
fn output_dir(engine: &Engine, kind: &str) -> Result<PathBuf> {
    Ok(output_stage(engine, kind)?.1)
}

fn output_stage(engine: &Engine, kind: &str) -> Result<(String, PathBuf)> {
    let (stage, choice) = chosen();
    let (stage, dir, note) = engine
        .task_output(kind, stage.as_deref(), &choice)
        .map_err(anyhow::Error::msg)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    Ok((stage, dir))
}

/// Where the files the tables of output `dir` name are on this machine (see
/// `Engine::files_root_of_object`), for the run `--exp`/`--key`/`--set` chose.
fn files_root_of(engine: &Engine, dir: &Path) -> Option<PathBuf> {
    let (_, choice) = chosen();
    engine.files_root_of_object(dir, &choice)
}

fn load_trained(engine: &Engine) -> Result<onenet_torch::train::TrainedModel> {
    // Its error says what is missing or out of date and what to run; a prefix saying "not
    // trained" would be wrong whenever the model exists and something upstream changed.
    let dir = output_dir(engine, specs::train::KIND.name)?;
    Ok(onenet_torch::train::TrainedModel::load(&dir, tch_cpu())?)
}

/// The backbone that computed the features the task reads (the chosen run's), with the same
/// weights.
fn load_extractor(engine: &Engine) -> Result<onenet_torch::tasks::FeatureExtractor> {
    let (stage, choice) = chosen();
    let (name, dir, _) = engine
        .task_output(specs::features::KIND.name, stage.as_deref(), &choice)
        .map_err(anyhow::Error::msg)?;
    let decl = engine
        .pipeline
        .stage(&name)
        .context("the pipeline has no features stage")?;
    Ok(onenet_torch::tasks::FeatureExtractor::load(
        &dir,
        &decl.params,
        &engine.pipeline.base_dir,
    )?)
}

/// Prints (query, matches, unknown words) triples as text or JSON.
fn print_matches(
    results: &[(String, Vec<onenet_torch::tasks::Match>, Vec<String>)],
    format: Format,
) -> Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<_> = results
                .iter()
                .map(|(q, m, u)| json!({"query": q, "matches": m, "unknown_words": u}))
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&json!({ "results": rows }))?
            );
        }
        Format::Text => {
            for (query, matches, unknown) in results {
                outln!("{query}");
                if !unknown.is_empty() {
                    outln!("  (unknown words left out: {})", unknown.join(", "));
                }
                for m in matches {
                    if m.detail.is_empty() {
                        outln!("  {:>2}. {:.3}  {}", m.rank, m.score, m.id);
                    } else {
                        outln!("  {:>2}. {:.3}  {}  {}", m.rank, m.score, m.id, m.detail);
                    }
                }
            }
        }
    }
    Ok(())
}
