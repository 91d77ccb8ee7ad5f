//! Machine-learning benchmark: onenet's libtorch code side by side with PyTorch eager doing the
//! same work, in one run, on the same machine and the same number of threads.
//!
//! 1. Feature extraction, images/s: the `features` stage (JPEG decoding, resizing and scaling in
//!    parallel on a producer thread, overlapped with EfficientNet-Lite0, batch size 8) over 240
//!    photo-sized JPEG files (500×375, about 100 KB, in the Flickr8k layout: the no-op
//!    benchmark's generator), timed twice: as a whole `onenet run features
//!    --force features` process (ImageNet weights, process start-up and weight loading included),
//!    and in-process through `onenet_torch::features::run` with random weights. Against it:
//!    `pytorch_reference.py` (beside this file), the same network written in PyTorch with random
//!    weights, decoding with PIL and resizing one image after another in the loop, as a plain
//!    eager script does. Target: onenet ≥ 1.2× PyTorch.
//! 2. Training, samples/s: the caption model at its default shape (image 300, embedding 300, GRU
//!    516, features 1280) trained with Adam (lr 1e-3, gradients clipped at norm 5 as the `train`
//!    stage does) on random features, batch 64, against the equivalent PyTorch module and
//!    optimiser, under two conditions: the demo's (vocabulary 50, token rows of 10 to 14
//!    tokens) and Flickr8k's (vocabulary 2,000, the word counts of real Flickr8k captions from
//!    the test fixture, shuffled, each batch padded to its longest caption). The cost follows
//!    the vocabulary (the output layer and its softmax) and the padded length. Target: ≥ 1.0×.
//! 3. `find-images` latency: `onenet_torch::model::invert` at the `evaluate` stage's default
//!    steps, restarts and learning rate on an untrained default-shape model, for one query and
//!    for a batch of 16 (per query). Target: ≤ 1 s per query.
//!    3b. Beam search on 1,000 images (width 3, vocabulary 2,020, untrained model): one image at
//!    a time against all images together (`beam_search_batch`), images/s, and how many captions
//!    agree.
//! 4. Peak memory of the `features` stage on 1,000 and 8,000 images (random weights, one libtorch
//!    thread): the peak resident set of the `onenet-torch` worker process. A small helper (this
//!    binary run with `--peak-rss-helper`) starts `onenet run features` and reads its
//!    `ru_maxrss` with `wait4`, as `/usr/bin/time -v` does: Linux counts into it the reaped
//!    descendants' peaks, so it is the worker's. The figure is cross-checked by sampling the
//!    worker's `VmHWM` while it runs. Only the N × 1280 output matrix may grow with N.
//!
//! Both sides of each comparison use 2 threads (`tch::set_num_threads` and the stage's `threads`
//! param; `torch.set_num_threads` in Python), or `ONENET_BENCH_THREADS` if set: on a 2-core
//! machine running other work, two threads that spin-wait for each other slow down several
//! times over, and 1 gives steadier figures. The load average is printed first.
//!
//! PyTorch 2.13.0 (the version of onenet's libtorch) is installed once into a virtual
//! environment under `target/bench-venv/` with pip, about 3 GB with the CUDA libraries its wheel
//! depends on, and reused afterwards; the generated projects and data live under
//! `target/bench-data/` and are reused too. Timings are wall-clock on a machine that may be
//! running other work, so each is taken more than once and the best is compared; nothing is
//! asserted. The whole run took under 15 minutes on 2 cores busy with other work, half of it
//! the 8,000-image memory run; the first run also installs PyTorch and draws the images.
//!
//! Run it with `make bench` (or `cargo bench -p onenet-torch --bench ml`); set
//! `ONENET_BENCH_PARTS` to a comma-separated subset of `features,training,inversion,beam,memory`
//! to run only those.

#[path = "../../benches/support/mod.rs"]
mod support;
use support::dataset::prepare_dataset;
use support::{
    build_release, describe_actions, onenet_cmd, repo_root, stages, target_dir, write_if_changed,
};

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use onenet_stages::specs::evaluate::{
    DEFAULT_INVERT_LEARNING_RATE, DEFAULT_INVERT_RESTARTS, DEFAULT_INVERT_STEPS,
};
use onenet_stages::table::{read_parquet, strings};
use onenet_stages::{NoProgress, ParamValue, Params, StageContext, StageInput, StageJob};
use onenet_torch::model::{invert, CaptionModel, ModelConfig};
use onenet_torch::optim::Adam;
use onenet_torch::precision::Precision;

/// libtorch threads on both sides (and the `threads` param of the compared `features` runs),
/// unless `ONENET_BENCH_THREADS` says otherwise.
const DEFAULT_THREADS: i32 = 2;
/// The PyTorch version installed for the comparison: the one onenet's libtorch comes from.
const TORCH_VERSION: &str = "2.13.0";

/// Photo-sized images of the feature-extraction comparison, and the batch size.
const FEATURE_IMAGES: usize = 240;
const FEATURE_BATCH: usize = 8;
/// Repetitions of each feature-extraction measurement (one onenet CLI run, one in-process run
/// and one PyTorch run per repetition, interleaved so that a change of load hits all three).
const FEATURE_REPS: usize = 3;
/// Side of the demo pictures of the memory runs (small, so that drawing 8,000 is quick).
const DEMO_IMAGE_SIZE: u32 = 128;
/// The weights the CLI run loads (`make setup` installs them).
const WEIGHTS: &str = "weights/efficientnet-lite0-57934424.pth";

/// Training: batch size, distinct batches cycled through, untimed warm-up steps, timed steps
/// per repetition, repetitions (alternating onenet and PyTorch).
const TRAIN_BATCH: i64 = 64;
const TRAIN_BATCHES: i64 = 8;
const TRAIN_WARMUP: usize = 3;
const TRAIN_STEPS: usize = 30;
const TRAIN_REPS: usize = 4;
/// The default model shape (the `train` stage's defaults) with a demo-sized vocabulary.
const VOCAB: i64 = 50;
const FEATURE_DIM: i64 = 1280;
const IMAGE_DIM: i64 = 300;
const EMBED_DIM: i64 = 300;
const HIDDEN_DIM: i64 = 516;
/// Each token row of the demo condition is `<start>`, `MIN_WORDS + row % 5` words, `<end>`: 10
/// to 14 tokens.
const MIN_WORDS: i64 = 8;
/// The vocabulary of the Flickr8k condition (Flickr8k's train split has about 2,020 words seen at
/// least 5 times).
const FLICKR8K_VOCAB: i64 = 2000;

/// Inversion: words per query, queries of the batched measurement, repetitions.
const QUERY_WORDS: usize = 10;
const INVERT_BATCH: usize = 16;
const INVERT_REPS: usize = 5;

/// Images of the two memory runs.
const MEMORY_IMAGES: [usize; 2] = [1000, 8000];
/// libtorch threads of the memory runs. Their figure is memory, not speed, and one thread
/// finishes soonest on a 2-core machine running other work: two threads that spin-wait for each
/// other run several times slower as soon as a core is taken (measured: 5 against 18 images/s).
/// Decoding still uses every core.
const MEMORY_THREADS: i32 = 1;
/// How often the memory runs sample the worker and print progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(20);

/// The parts of the benchmark to run: `ONENET_BENCH_PARTS` (comma-separated), else all.
const PARTS: [&str; 5] = ["features", "training", "inversion", "beam", "memory"];

fn parts() -> Vec<&'static str> {
    match std::env::var("ONENET_BENCH_PARTS") {
        Ok(list) => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            for part in &wanted {
                assert!(
                    PARTS.contains(part),
                    "ONENET_BENCH_PARTS: unknown part `{part}`; the parts are {PARTS:?}"
                );
            }
            PARTS.into_iter().filter(|p| wanted.contains(p)).collect()
        }
        Err(_) => PARTS.to_vec(),
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == PEAK_RSS_HELPER) {
        std::process::exit(peak_rss_helper(&args[2..]));
    }
    let threads = threads();
    let repo = repo_root();
    let target = target_dir();
    let bench_data = target.join("bench-data");
    println!(
        "onenet ML benchmark: onenet vs PyTorch {TORCH_VERSION} eager, {threads} threads each \
         ({} CPUs available)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print_load();
    tch::set_num_threads(threads);
    let started = Instant::now();

    let parts = parts();
    // The CLI runs of features and memory need the release binaries; the PyTorch peers, the
    // virtual environment. Parts that need neither start at once.
    let onenet = if parts.iter().any(|p| ["features", "memory"].contains(p)) {
        println!("\n== building the release binaries (cargo build --release)");
        build_release()
    } else {
        PathBuf::new()
    };
    let python = if parts.iter().any(|p| ["features", "training"].contains(p)) {
        println!(
            "\n== PyTorch environment: {}",
            target.join("bench-venv").display()
        );
        ensure_venv(&target)
    } else {
        PathBuf::new()
    };
    let reference = repo
        .join("torch")
        .join("benches")
        .join("pytorch_reference.py");

    let mut rows = Vec::new();
    if parts.contains(&"features") {
        rows.extend(bench_features(
            &repo,
            &onenet,
            &python,
            &reference,
            &bench_data,
        ));
    }
    if parts.contains(&"training") {
        rows.extend(bench_training(&python, &reference));
    }
    if parts.contains(&"inversion") {
        rows.extend(bench_invert());
    }
    if parts.contains(&"beam") {
        bench_beam();
    }
    let memory = if parts.contains(&"memory") {
        bench_memory(&onenet, &bench_data)
    } else {
        Vec::new()
    };

    print_results(&rows, &memory);
    println!(
        "\nwhole benchmark: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Feature extraction

/// The comparison's rows: the CLI and in-process figures, each against PyTorch.
fn bench_features(
    repo: &Path,
    onenet: &Path,
    python: &Path,
    reference: &Path,
    bench_data: &Path,
) -> Vec<Row> {
    println!(
        "\n== 1. feature extraction: {FEATURE_IMAGES} photo-sized JPEG images, batch \
         {FEATURE_BATCH}"
    );
    let dataset = bench_data.join(format!("flickr-like-{FEATURE_IMAGES}"));
    prepare_dataset(&dataset, FEATURE_IMAGES);
    let project = bench_data.join("ml-features");
    let weights = repo.join(WEIGHTS);
    let weights_param = if weights.is_file() {
        weights.display().to_string()
    } else {
        // Random weights cost the same to run; only the loading differs.
        println!(
            "{} is missing (`make setup` installs it): the CLI runs use random weights",
            weights.display()
        );
        "random".to_string()
    };
    write_pipeline(
        &project,
        &ImageSource::Folder(&dataset),
        &weights_param,
        threads(),
    );
    let (took, stdout) = onenet_cmd(onenet, &project, &["run", "images", "--format", "json"]);
    println!(
        "dataset and images table ready in {:.1} s: {}",
        took.as_secs_f64(),
        describe_actions(&stdout)
    );

    // The exact files the stage reads, in its order, for PyTorch.
    let images_dir = project.join("artifacts").join("latest").join("images");
    let files = image_paths(&images_dir.join("images.parquet"), &project);
    assert_eq!(files.len(), FEATURE_IMAGES, "images in the images table");
    let list = project.join("files.txt");
    let listing: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    write_if_changed(&list, &listing);

    let params = features_params("random", "f32");
    let params_bf16 = features_params("random", "bf16");
    let inputs = [StageInput {
        name: "images".into(),
        kind: "images".into(),
        dir: images_dir,
    }];
    let out_dir = project.join("in-process-output");

    let mut cli = Vec::new();
    let mut stage_rates = Vec::new();
    let mut in_process = Vec::new();
    let mut in_process_bf16 = Vec::new();
    let mut pytorch = Vec::new();
    let mut pytorch_channels_last = Vec::new();
    let mut pytorch_frozen = Vec::new();
    let mut pytorch_frozen_bf16 = Vec::new();
    let mut import_secs = f64::NAN;
    for rep in 1..=FEATURE_REPS {
        println!("repetition {rep}/{FEATURE_REPS}");

        // The previous output must go, or the stage would reuse every row of it by content hash
        // and compute nothing.
        remove_latest(&project, "features");
        let (took, stdout) = onenet_cmd(
            onenet,
            &project,
            &["run", "features", "--force", "features", "--format", "json"],
        );
        let notes = stage_notes(&stdout, "features");
        expect_computed(&notes, FEATURE_IMAGES);
        let rate = FEATURE_IMAGES as f64 / took.as_secs_f64();
        let stage_rate = notes.iter().find_map(|n| leading_number(n, " images/s"));
        println!(
            "  onenet run features (whole process): {:6.2} s = {rate:6.1} images/s (the stage's \
             own figure, weights loaded: {})",
            took.as_secs_f64(),
            stage_rate.map_or("?".into(), |r| format!("{r:.1} images/s"))
        );
        cli.push(rate);
        stage_rates.extend(stage_rate);

        for (params, label, rates) in [
            (&params, "f32", &mut in_process),
            (&params_bf16, "bf16", &mut in_process_bf16),
        ] {
            recreate_dir(&out_dir);
            let job = StageJob::new(
                "features",
                "features",
                params.clone(),
                inputs.to_vec(),
                &project,
                &out_dir,
            );
            let ctx = StageContext::new(&job, &NoProgress);
            let start = Instant::now();
            let report = onenet_torch::features::run(&ctx)
                .unwrap_or_else(|e| panic!("features::run failed: {e}"));
            let took = start.elapsed().as_secs_f64();
            expect_computed(&report.notes, FEATURE_IMAGES);
            let rate = FEATURE_IMAGES as f64 / took;
            println!(
                "  onenet_torch::features::run, {label:<5}  {took:6.2} s = {rate:6.1} images/s"
            );
            rates.push(rate);
        }

        for (mode, label, rates) in [
            ("eager", "PyTorch eager loop", &mut pytorch),
            (
                "channels_last",
                "PyTorch channels-last",
                &mut pytorch_channels_last,
            ),
            (
                "frozen",
                "PyTorch channels-last, frozen",
                &mut pytorch_frozen,
            ),
            (
                "frozen_bf16",
                "PyTorch frozen, bf16",
                &mut pytorch_frozen_bf16,
            ),
        ] {
            let result = python_json(
                python,
                reference,
                &[
                    "features",
                    "--files",
                    &list.display().to_string(),
                    "--batch-size",
                    &FEATURE_BATCH.to_string(),
                    "--threads",
                    &threads().to_string(),
                    "--reps",
                    "1",
                    "--mode",
                    mode,
                ],
            );
            let secs = result["seconds"][0]
                .as_f64()
                .expect("seconds in the reference's output");
            assert_eq!(result["images"].as_u64(), Some(FEATURE_IMAGES as u64));
            import_secs = result["import_seconds"].as_f64().unwrap_or(f64::NAN);
            let rate = FEATURE_IMAGES as f64 / secs;
            println!("  {label:<34}{secs:6.2} s = {rate:6.1} images/s");
            rates.push(rate);
        }
    }
    println!(
        "(PyTorch's figure leaves out starting Python and `import torch`, {import_secs:.1} s here, \
         and building the model; the CLI's includes starting both processes and loading the \
         weights)"
    );
    let _ = fs::remove_dir_all(&out_dir);

    let best_pytorch = max(&pytorch);
    vec![
        Row::higher(
            "features, onenet CLI process vs PyTorch loop",
            "images/s",
            max(&cli),
            best_pytorch,
            Some(1.2),
        ),
        Row::higher(
            "features, onenet in-process vs PyTorch loop",
            "images/s",
            max(&in_process),
            best_pytorch,
            Some(1.2),
        ),
        Row::higher(
            "features, CLI stage's own rate, no start-up",
            "images/s",
            max(&stage_rates),
            best_pytorch,
            None,
        ),
        Row::higher(
            "features, onenet in-process vs PyTorch channels-last",
            "images/s",
            max(&in_process),
            max(&pytorch_channels_last),
            None,
        ),
        Row::higher(
            "features, onenet in-process vs PyTorch channels-last + frozen TorchScript",
            "images/s",
            max(&in_process),
            max(&pytorch_frozen),
            None,
        ),
        Row::higher(
            "features, onenet in-process bf16 vs PyTorch channels-last + frozen TorchScript",
            "images/s",
            max(&in_process_bf16),
            max(&pytorch_frozen),
            Some(1.2),
        ),
        Row::higher(
            "features, onenet in-process bf16 vs PyTorch frozen TorchScript in bf16",
            "images/s",
            max(&in_process_bf16),
            max(&pytorch_frozen_bf16),
            None,
        ),
    ]
}

/// A `features` stage's params as the engine would fill them in.
fn features_params(weights: &str, precision: &str) -> Params {
    let given = BTreeMap::from([
        (
            "backbone".to_string(),
            ParamValue::Str("efficientnet_lite0".into()),
        ),
        ("weights".to_string(), ParamValue::Str(weights.into())),
        ("precision".to_string(), ParamValue::Str(precision.into())),
        (
            "batch_size".to_string(),
            ParamValue::Int(FEATURE_BATCH as i64),
        ),
        ("threads".to_string(), ParamValue::Int(i64::from(threads()))),
    ]);
    Params::with_defaults(onenet_stages::specs::features::KIND.params, given)
}

/// The `path` column of an images table, relative paths taken from `base`.
fn image_paths(table: &Path, base: &Path) -> Vec<PathBuf> {
    let batch = read_parquet(table).unwrap_or_else(|e| panic!("{e}"));
    strings(table, &batch, "path")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| base.join(p))
        .collect()
}

/// Panics unless a `features` stage's notes say it computed all `images` rows itself.
fn expect_computed(notes: &[String], images: usize) {
    let expected = format!("{images} computed, 0 reused");
    assert!(
        notes.iter().any(|n| n.contains(&expected)),
        "the features stage did not compute every image (a timing of reused rows would be \
         meaningless); its notes: {notes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Training

/// One training condition: a vocabulary and the word count of each token row.
struct TrainingCondition {
    label: &'static str,
    vocab: i64,
    /// Both sides' precision: f32, or bf16 (onenet's `precision = "bf16"`, PyTorch's CPU
    /// autocast to bfloat16).
    precision: Precision,
    /// Words of each row (`TRAIN_BATCH × TRAIN_BATCHES` of them), without `<start>`/`<end>`.
    lengths: Vec<usize>,
}

/// The two conditions: the demo's (vocabulary 50, rows of 8 to 12 words) and Flickr8k's
/// (vocabulary 2,000, the word counts of real Flickr8k captions in a seeded random order, so a
/// batch is padded to its longest caption as in the `train` stage).
fn training_conditions() -> Vec<TrainingCondition> {
    let rows = (TRAIN_BATCH * TRAIN_BATCHES) as usize;
    let demo = (0..rows).map(|row| MIN_WORDS as usize + row % 5).collect();
    let token_file = repo_root().join("tests/fixtures/flickr8k-text/Flickr8k.token.txt");
    let text = fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", token_file.display()));
    let mut counts: Vec<usize> = text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(_, caption)| {
            caption
                .split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .count()
                .max(1)
        })
        .collect();
    let mut rng = SplitMix(0xF11C);
    for i in (1..counts.len()).rev() {
        counts.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    counts.truncate(rows);
    // The same captions in the batches the `train` stage makes with `bucket = 50` (50 batches a
    // pool: here the 8 batches are one pool).
    let bucketed: Vec<usize> = onenet_torch::train::epoch_batches(
        &counts,
        TRAIN_BATCH as usize,
        50,
        &mut rand::SeedableRng::seed_from_u64(7),
    )
    .concat()
    .into_iter()
    .map(|i| counts[i])
    .collect();
    vec![
        TrainingCondition {
            label: "training (demo: vocab 50, 10-14 tokens)",
            vocab: VOCAB,
            precision: Precision::F32,
            lengths: demo,
        },
        TrainingCondition {
            label: "training (Flickr8k: vocab 2000, its lengths, shuffled batches)",
            vocab: FLICKR8K_VOCAB,
            precision: Precision::F32,
            lengths: counts,
        },
        TrainingCondition {
            label: "training (Flickr8k: vocab 2000, its lengths, length-bucketed batches)",
            vocab: FLICKR8K_VOCAB,
            precision: Precision::F32,
            lengths: bucketed.clone(),
        },
        TrainingCondition {
            label: "training (Flickr8k, length-bucketed, bf16 both sides)",
            vocab: FLICKR8K_VOCAB,
            precision: Precision::Bf16,
            lengths: bucketed,
        },
    ]
}

fn bench_training(python: &Path, reference: &Path) -> Vec<Row> {
    let mut rows: Vec<Row> = training_conditions()
        .into_iter()
        .map(|condition| bench_training_condition(python, reference, &condition))
        .collect();
    if let [_, shuffled, bucketed, bf16] = rows.as_slice() {
        println!(
            "\n   length bucketing at Flickr8k's lengths: onenet {:.1} vs {:.1} samples/s \
             (bucketed / shuffled = {:.2}x; PyTorch {:.2}x)",
            bucketed.onenet,
            shuffled.onenet,
            bucketed.onenet / shuffled.onenet,
            bucketed.pytorch.unwrap_or(f64::NAN) / shuffled.pytorch.unwrap_or(f64::NAN)
        );
        // The target row: onenet's fastest training against PyTorch's default f32 loop fed the
        // same batches.
        let row = Row::higher(
            "training (Flickr8k, length-bucketed): onenet bf16 vs PyTorch f32",
            "samples/s",
            bf16.onenet,
            bucketed.pytorch.unwrap_or(f64::NAN),
            Some(1.2),
        );
        rows.push(row);
    }
    rows
}

fn bench_training_condition(python: &Path, reference: &Path, condition: &TrainingCondition) -> Row {
    let longest = condition.lengths.iter().max().copied().unwrap_or(0);
    let mean = condition.lengths.iter().sum::<usize>() as f64 / condition.lengths.len() as f64;
    println!(
        "\n== 2. {}: batch {TRAIN_BATCH}, GRU {HIDDEN_DIM}, vocabulary {}, words per caption \
         {mean:.1} on average, {longest} at most (each batch padded to its longest), {}, \
         {TRAIN_STEPS} timed steps per repetition after {TRAIN_WARMUP} warm-up steps",
        condition.label,
        condition.vocab,
        condition.precision.name()
    );
    tch::manual_seed(0);
    let model = CaptionModel::new(
        ModelConfig {
            vocab_size: condition.vocab,
            ..default_config()
        },
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("building the model: {e}"));
    // What the `train` stage uses.
    let mut optimizer = Adam::new(&model.vs, 1e-3);
    let (features, tokens) = training_data(condition.vocab, &condition.lengths);
    let batch_lengths: Vec<i64> = condition
        .lengths
        .chunks(TRAIN_BATCH as usize)
        .map(|batch| batch.iter().max().copied().unwrap_or(0) as i64 + 2)
        .collect();
    let lengths_file = std::env::temp_dir().join(format!(
        "onenet-bench-lengths-{}-{}.txt",
        std::process::id(),
        condition.vocab
    ));
    let lengths_text: String = condition.lengths.iter().map(|n| format!("{n}\n")).collect();
    fs::write(&lengths_file, lengths_text).expect("writing the caption lengths");
    let mut step_number = 0i64;
    let mut step = || {
        let batch = step_number % TRAIN_BATCHES;
        step_number += 1;
        let images = features.narrow(0, batch * TRAIN_BATCH, TRAIN_BATCH);
        let batch_tokens = tokens.narrow(0, batch * TRAIN_BATCH, TRAIN_BATCH).narrow(
            1,
            0,
            batch_lengths[batch as usize],
        );
        let loss = model.training_loss(
            &model.encode_images(&images),
            &batch_tokens,
            0.0,
            condition.precision,
        );
        optimizer.backward_step_clip_norm(&loss, 5.0);
        // The stage reads every step's loss back, which also waits for the step to finish.
        loss.double_value(&[])
    };
    for _ in 0..TRAIN_WARMUP {
        step();
    }

    let samples = (TRAIN_STEPS as i64 * TRAIN_BATCH) as f64;
    let mut onenet = Vec::new();
    let mut pytorch = Vec::new();
    for rep in 1..=TRAIN_REPS {
        let start = Instant::now();
        let mut loss = f64::NAN;
        for _ in 0..TRAIN_STEPS {
            loss = step();
        }
        let secs = start.elapsed().as_secs_f64();
        assert!(loss.is_finite(), "training diverged: loss {loss}");
        println!(
            "  repetition {rep}: onenet  {secs:6.2} s = {:6.1} samples/s (loss {loss:.3})",
            samples / secs
        );
        onenet.push(samples / secs);

        let result = python_json(
            python,
            reference,
            &[
                "train",
                "--threads",
                &threads().to_string(),
                "--steps",
                &TRAIN_STEPS.to_string(),
                "--warmup",
                &TRAIN_WARMUP.to_string(),
                "--batch-size",
                &TRAIN_BATCH.to_string(),
                "--batches",
                &TRAIN_BATCHES.to_string(),
                "--vocab",
                &condition.vocab.to_string(),
                "--feature-dim",
                &FEATURE_DIM.to_string(),
                "--image-dim",
                &IMAGE_DIM.to_string(),
                "--embed-dim",
                &EMBED_DIM.to_string(),
                "--hidden-dim",
                &HIDDEN_DIM.to_string(),
                "--lengths",
                &lengths_file.to_string_lossy(),
                "--precision",
                condition.precision.name(),
            ],
        );
        let secs = result["seconds"]
            .as_f64()
            .expect("seconds in the reference's output");
        let loss = result["last_loss"].as_f64().unwrap_or(f64::NAN);
        println!(
            "  repetition {rep}: PyTorch {secs:6.2} s = {:6.1} samples/s (loss {loss:.3})",
            samples / secs
        );
        pytorch.push(samples / secs);
    }
    remove_file_if_present(&lengths_file);
    Row::higher(
        condition.label,
        "samples/s",
        max(&onenet),
        max(&pytorch),
        Some(1.0),
    )
}

fn default_config() -> ModelConfig {
    ModelConfig {
        vocab_size: VOCAB,
        feature_dim: FEATURE_DIM,
        image_dim: IMAGE_DIM,
        image_regions: 1,
        embed_dim: EMBED_DIM,
        hidden_dim: HIDDEN_DIM,
        rnn: "gru".into(),
        // Word embeddings learned from scratch: the default (no `glove` param).
        pretrained_dim: 0,
    }
}

/// Random features in [0, 1) and token rows laid out as `pytorch_reference.py` lays them out:
/// row i is `<start>`, `lengths[i]` random words below `vocab`, `<end>`, padded with 0 to the
/// longest row.
fn training_data(vocab: i64, lengths: &[usize]) -> (Tensor, Tensor) {
    let rows = lengths.len() as i64;
    let features = Tensor::rand([rows, FEATURE_DIM], (Kind::Float, Device::Cpu));
    let length = lengths.iter().max().copied().unwrap_or(0) + 2;
    let mut rng = SplitMix(0x5EED);
    let mut flat = vec![0i64; rows as usize * length];
    for (tokens, &words) in flat.chunks_mut(length).zip(lengths) {
        tokens[0] = 1;
        for token in &mut tokens[1..=words] {
            *token = rng.word(vocab);
        }
        tokens[words + 1] = 2;
    }
    let tokens = Tensor::from_slice(&flat).reshape([rows, length as i64]);
    (features, tokens)
}

// ---------------------------------------------------------------------------------------------
// 3. Inversion (find-images)

fn bench_invert() -> Vec<Row> {
    let (steps, restarts) = (
        DEFAULT_INVERT_STEPS as usize,
        DEFAULT_INVERT_RESTARTS as usize,
    );
    println!(
        "\n== 3. find-images inversion: {steps} steps, {restarts} restarts, learning rate \
         {DEFAULT_INVERT_LEARNING_RATE}, queries of {QUERY_WORDS} words, untrained model"
    );
    tch::manual_seed(1);
    let mut model = CaptionModel::new(default_config(), Device::Cpu)
        .unwrap_or_else(|e| panic!("building the model: {e}"));
    let mut rng = SplitMix(0x0F1D);
    let queries: Vec<Vec<u32>> = (0..INVERT_BATCH)
        .map(|_| {
            let words = (0..QUERY_WORDS).map(|_| rng.word(VOCAB) as u32);
            std::iter::once(1).chain(words).chain([2]).collect()
        })
        .collect();
    let slices: Vec<&[u32]> = queries.iter().map(Vec::as_slice).collect();

    let time_invert = |model: &CaptionModel, label: &str, queries: &[&[u32]]| {
        // One untimed call first: the first backward pass sets libtorch's kernels up.
        let _ = invert(
            model,
            queries,
            steps,
            restarts,
            DEFAULT_INVERT_LEARNING_RATE,
        );
        let secs: Vec<f64> = (0..INVERT_REPS)
            .map(|_| {
                let start = Instant::now();
                let (z, losses) = invert(
                    model,
                    queries,
                    steps,
                    restarts,
                    DEFAULT_INVERT_LEARNING_RATE,
                );
                let took = start.elapsed().as_secs_f64();
                assert_eq!(z.size(), [queries.len() as i64, IMAGE_DIM]);
                assert!(losses.iter().all(|l| l.is_finite()), "losses {losses:?}");
                took / queries.len() as f64
            })
            .collect();
        println!(
            "  {label:50} per query: {}",
            secs.iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        min(&secs)
    };
    // `find-images` inverts the model as loaded, weights not frozen, so the backward passes also
    // compute the weights' gradients; the last figure shows what freezing them would save.
    let one = time_invert(&model, "1 query (as find-images runs it)", &slices[..1]);
    let batch = time_invert(
        &model,
        "16 queries in one batch (as find-images runs it)",
        &slices,
    );
    model.freeze();
    let frozen = time_invert(&model, "1 query, model weights frozen", &slices[..1]);
    vec![
        Row::latency("find-images inversion, 1 query", one, Some(1.0)),
        Row::latency("find-images inversion, 16 queries", batch, Some(1.0)),
        Row::latency("find-images inversion, 1 query, frozen", frozen, None),
    ]
}

// ---------------------------------------------------------------------------------------------
// 3b. Beam search: one image at a time against all images together

/// Beam search: test images, beam width, longest caption, and a Flickr8k-sized vocabulary
/// (Flickr8k's train split has 2,020 words at `min_count = 5`).
const BEAM_IMAGES: i64 = 1000;
const BEAM_WIDTH: usize = 3;
const BEAM_MAX_LENGTH: usize = 20;
const BEAM_VOCAB: i64 = 2020;

fn bench_beam() {
    println!(
        "\n== 3b. beam search: {BEAM_IMAGES} images, width {BEAM_WIDTH}, up to {BEAM_MAX_LENGTH} \
         tokens, vocabulary {BEAM_VOCAB}, untrained model (one image at a time, as `evaluate` \
         decoded before, against all images together)"
    );
    tch::manual_seed(2);
    let model = CaptionModel::new(
        ModelConfig {
            vocab_size: BEAM_VOCAB,
            ..default_config()
        },
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("building the model: {e}"));
    let embeddings = Tensor::randn([BEAM_IMAGES, IMAGE_DIM], (Kind::Float, Device::Cpu));
    let start = Instant::now();
    let one_by_one: Vec<Vec<u32>> = (0..BEAM_IMAGES)
        .map(|i| model.beam_search(&embeddings.get(i), BEAM_WIDTH, BEAM_MAX_LENGTH))
        .collect();
    let loop_rate = BEAM_IMAGES as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let batched = model.beam_search_batch(&embeddings, BEAM_WIDTH, BEAM_MAX_LENGTH, &mut |_| {});
    let batch_rate = BEAM_IMAGES as f64 / start.elapsed().as_secs_f64();
    let same = one_by_one
        .iter()
        .zip(&batched)
        .filter(|(a, b)| a == b)
        .count();
    println!("  one image at a time:  {loop_rate:8.1} images/s");
    println!("  all images together:  {batch_rate:8.1} images/s");
    println!(
        "  batched / one at a time: {:.2}x; same caption for {same} of {BEAM_IMAGES} images",
        batch_rate / loop_rate
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Peak memory of the features stage

/// One memory run's figures, in bytes.
struct MemoryRun {
    images: usize,
    /// `ru_maxrss` from `wait4` on the `onenet` process: the largest peak of it and its reaped
    /// descendants, i.e. the worker's.
    wait4_peak: u64,
    /// The worker's own `VmHWM`, last sampled before it exited.
    sampled_peak: Option<u64>,
    seconds: f64,
}

fn bench_memory(onenet: &Path, bench_data: &Path) -> Vec<MemoryRun> {
    println!(
        "\n== 4. peak memory of the features stage on {} and {} images (random weights; the \
         larger run takes minutes)",
        MEMORY_IMAGES[0], MEMORY_IMAGES[1]
    );
    let mut runs = Vec::new();
    for images in MEMORY_IMAGES {
        let project = bench_data.join(format!("ml-memory-{images}"));
        write_pipeline(
            &project,
            &ImageSource::Demo(images),
            "random",
            MEMORY_THREADS,
        );
        let (took, stdout) = onenet_cmd(onenet, &project, &["run", "images", "--format", "json"]);
        println!(
            "{images} images: dataset ready in {:.1} s ({})",
            took.as_secs_f64(),
            describe_actions(&stdout)
        );
        remove_latest(&project, "features");
        let run = measure_features_memory(onenet, &project, images);
        println!(
            "{images} images: {:.0} s, peak RSS {} (wait4), {} (worker's VmHWM, sampled)",
            run.seconds,
            mib(run.wait4_peak),
            run.sampled_peak.map_or("not seen".into(), mib)
        );
        runs.push(run);
    }
    runs
}

/// Runs `onenet run features --force features` in `project` under this binary's peak-memory
/// helper (see [`peak_rss_helper`]), while a thread samples the worker's memory and prints
/// progress.
fn measure_features_memory(onenet: &Path, project: &Path, images: usize) -> MemoryRun {
    let result_file = project.join("peak-rss.txt");
    remove_file_if_present(&result_file);
    let start = Instant::now();
    let mut helper = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .arg(PEAK_RSS_HELPER)
        .arg(&result_file)
        .arg(onenet)
        .args(["run", "features", "--force", "features", "--format", "json"])
        .current_dir(project)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the peak-memory helper");
    let helper_pid = helper.id();
    let stdout = drain(helper.stdout.take().expect("piped stdout"));
    let stderr = drain(helper.stderr.take().expect("piped stderr"));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || sample_worker(helper_pid, &done, start))
    };
    let status = helper.wait().expect("wait for the peak-memory helper");
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let sampled_peak = sampler.join().expect("sampler thread");
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "onenet run features in {} failed ({status}):\n{stderr}\n{stdout}",
        project.display()
    );
    expect_computed(&stage_notes(&stdout, "features"), images);
    let result = fs::read_to_string(&result_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", result_file.display()));
    let kib: u64 = result
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}: {result:?}", result_file.display()));
    MemoryRun {
        images,
        wait4_peak: kib * 1024,
        sampled_peak,
        seconds,
    }
}

/// The first argument that makes this binary [`peak_rss_helper`] instead of the benchmark.
const PEAK_RSS_HELPER: &str = "--peak-rss-helper";

/// `ml --peak-rss-helper RESULT PROGRAM ARGS…`: runs PROGRAM, reaps it with `wait4` and writes
/// its `ru_maxrss` (KiB) to RESULT; exits with its status. The kernel counts into that figure
/// the reaped descendants that PROGRAM waited for (so the `onenet-torch` worker) but also the
/// memory of the process PROGRAM was started from, as it was before the exec; started straight
/// from the benchmark, with libtorch and its models loaded, that would be the benchmark's own
/// size. Started from this fresh, small process it is the worker's, as `/usr/bin/time -v`
/// would report it.
fn peak_rss_helper(args: &[OsString]) -> i32 {
    let [result, program, rest @ ..] = args else {
        eprintln!("usage: {PEAK_RSS_HELPER} RESULT PROGRAM [ARGS...]");
        return 2;
    };
    let child = match Command::new(program).args(rest).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("start {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped: std reaps only in `wait`/`try_wait`, never
    // called on `child` (dropping a `Child` does not wait). Both pointers are valid for the call.
    // Reaping it here instead of through std is what yields its rusage.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        eprintln!("wait4: {}", std::io::Error::last_os_error());
        return 1;
    }
    // Linux reports ru_maxrss in KiB.
    if let Err(e) = fs::write(result, format!("{}\n", usage.ru_maxrss)) {
        eprintln!("write {}: {e}", Path::new(result).display());
        return 1;
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    }
}

/// Every `SAMPLE_EVERY` until `done`: finds the `onenet-torch` worker (a grandchild of
/// `helper`) and records its `VmHWM`; every `PROGRESS_EVERY` prints the time and its memory so
/// far. Returns the last peak seen (`VmHWM` only grows, so that is the worker's peak up to then).
fn sample_worker(helper: u32, done: &AtomicBool, start: Instant) -> Option<u64> {
    let mut peak = None;
    let mut next_report = PROGRESS_EVERY;
    while !done.load(Ordering::Relaxed) {
        if let Some((rss, hwm)) = worker_memory(helper) {
            peak = Some(hwm);
            if start.elapsed() >= next_report {
                println!(
                    "  … {:4.0} s, worker RSS {} (peak so far {})",
                    start.elapsed().as_secs_f64(),
                    mib(rss),
                    mib(hwm)
                );
                next_report += PROGRESS_EVERY;
            }
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    peak
}

/// (VmRSS, VmHWM) in bytes of the process named `onenet-torch` whose grandparent is
/// `grandparent`, if one runs.
fn worker_memory(grandparent: u32) -> Option<(u64, u64)> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(status) = proc_status(pid) else {
            continue;
        };
        if status_field(&status, "Name:").as_deref() != Some("onenet-torch") {
            continue;
        }
        let parent = status_field(&status, "PPid:").and_then(|p| p.parse::<u32>().ok());
        let grand = parent
            .and_then(proc_status)
            .and_then(|s| status_field(&s, "PPid:"))
            .and_then(|p| p.parse::<u32>().ok());
        if grand != Some(grandparent) {
            continue;
        }
        let bytes = |key: &str| {
            status_field(&status, key)
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        return Some((bytes("VmRSS:")?, bytes("VmHWM:")?));
    }
    None
}

fn proc_status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The value of `key` (with its colon) in a `/proc/PID/status` text, trimmed.
fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|rest| rest.trim().to_string())
}

/// Reads a pipe to the end on its own thread, so that a full pipe never blocks the child.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

// ---------------------------------------------------------------------------------------------
// Results

/// One line of the results table.
struct Row {
    label: &'static str,
    unit: &'static str,
    onenet: f64,
    /// The PyTorch figure, for the comparisons.
    pytorch: Option<f64>,
    /// The target: a minimum ratio for throughputs, a maximum for latencies.
    target: Option<f64>,
    higher_is_better: bool,
}

impl Row {
    fn higher(
        label: &'static str,
        unit: &'static str,
        onenet: f64,
        pytorch: f64,
        min_ratio: Option<f64>,
    ) -> Row {
        Row {
            label,
            unit,
            onenet,
            pytorch: Some(pytorch),
            target: min_ratio,
            higher_is_better: true,
        }
    }

    fn latency(label: &'static str, secs_per_query: f64, max_secs: Option<f64>) -> Row {
        Row {
            label,
            unit: "s/query",
            onenet: secs_per_query,
            pytorch: None,
            target: max_secs,
            higher_is_better: false,
        }
    }

    /// The target and whether it was met, as text.
    fn verdict(&self) -> String {
        let Some(target) = self.target else {
            return String::new();
        };
        match (self.higher_is_better, self.pytorch) {
            (true, Some(pytorch)) => {
                let ratio = self.onenet / pytorch;
                format!("≥ {target:.1}×: {}", met(ratio >= target))
            }
            _ => format!("≤ {target:.1} s: {}", met(self.onenet <= target)),
        }
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn print_results(rows: &[Row], memory: &[MemoryRun]) {
    println!(
        "\n== results (libtorch threads per side: {}; the best repetition of each side; nothing \
         asserted)",
        threads()
    );
    println!(
        "{:46} {:>10} {:>10} {:10} {:>7}  target",
        "measurement", "onenet", "PyTorch", "unit", "ratio"
    );
    for row in rows {
        let (pytorch, ratio) = match row.pytorch {
            Some(p) => (format!("{p:10.2}"), format!("{:6.2}×", row.onenet / p)),
            None => (format!("{:>10}", "-"), format!("{:>7}", "-")),
        };
        println!(
            "{:46} {:10.3} {pytorch} {:10} {ratio}  {}",
            row.label,
            row.onenet,
            row.unit,
            row.verdict()
        );
    }

    if let [small, large] = memory {
        let matrix = |n: usize| (n * FEATURE_DIM as usize * 4) as u64;
        let grown = large.wait4_peak as f64 - small.wait4_peak as f64;
        let expected = (matrix(large.images) - matrix(small.images)) as f64;
        println!(
            "\npeak RSS of the features stage (onenet-torch worker, random weights, \
             {MEMORY_THREADS} libtorch thread):"
        );
        for run in memory {
            println!(
                "  {:5} images: {:>10} (wait4)  {:>10} (sampled VmHWM)  {:5.0} s, {:.1} images/s",
                run.images,
                mib(run.wait4_peak),
                run.sampled_peak.map_or("-".into(), mib),
                run.seconds,
                run.images as f64 / run.seconds
            );
        }
        println!(
            "  ratio {:.2}×; grew by {:.1} MB; one output matrix grows by ({} - {}) × {FEATURE_DIM} \
             × 4 bytes = {:.1} MB, so the growth is {:.1} matrices' worth",
            large.wait4_peak as f64 / small.wait4_peak as f64,
            grown / 1e6,
            large.images,
            small.images,
            expected / 1e6,
            grown / expected
        );
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

// ---------------------------------------------------------------------------------------------
// Projects and processes

/// libtorch threads of the comparisons: `ONENET_BENCH_THREADS`, else `DEFAULT_THREADS`.
fn threads() -> i32 {
    static THREADS: OnceLock<i32> = OnceLock::new();
    *THREADS.get_or_init(|| match std::env::var("ONENET_BENCH_THREADS") {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("ONENET_BENCH_THREADS={value:?} is not a thread count")),
        Err(_) => DEFAULT_THREADS,
    })
}

/// Prints the load average against the CPU count: figures taken while other work runs are
/// slower, and noisier the more threads each side uses.
fn print_load() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(load) = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
    else {
        return;
    };
    let busy = if load > 0.5 {
        " (other work is running: timings are slower and noisier than on an idle machine)"
    } else {
        ""
    };
    println!("load average (1 min): {load:.2} on {cpus} CPUs{busy}");
}

/// The Python of `<target>/bench-venv`, creating the environment and installing PyTorch,
/// Pillow and NumPy into it unless they already import there.
fn ensure_venv(target: &Path) -> PathBuf {
    let venv = target.join("bench-venv");
    let python = venv.join("bin").join("python");
    let check = || {
        Command::new(&python)
            .args(["-c", "import numpy, PIL, torch; print(torch.__version__)"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let expected = |version: &str| version.split('+').next() == Some(TORCH_VERSION);
    if let Some(version) = check().filter(|v| expected(v)) {
        println!("reusing it: torch {version}");
        return python;
    }
    if venv.exists() {
        println!("it lacks torch {TORCH_VERSION}: recreating it");
        fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("remove {}: {e}", venv.display()));
    }
    let system_python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run_ok(
        Command::new(&system_python)
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        "python3 -m venv",
    );
    println!(
        "installing torch=={TORCH_VERSION}, pillow and numpy with pip (about 3 GB with the CUDA \
         libraries the wheel depends on; once)..."
    );
    let start = Instant::now();
    run_ok(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("torch=={TORCH_VERSION}"),
            "pillow",
            "numpy",
        ]),
        "pip install",
    );
    let version = check().unwrap_or_else(|| panic!("`import torch` fails in {}", venv.display()));
    assert!(
        expected(&version),
        "installed torch {version}, not {TORCH_VERSION}"
    );
    println!(
        "installed torch {version} in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    python
}

fn run_ok(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Runs `pytorch_reference.py ARGS` and parses the JSON object on the last line of its stdout.
fn python_json(python: &Path, script: &Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start the PyTorch reference");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytorch_reference.py {} failed ({}):\n{}\n{stdout}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the reference printed no JSON ({e}):\n{stdout}"))
}

/// Writes a `demo_data` → `images` → `features` pipeline of `images` pictures to `project`.
/// Where a benchmark pipeline's `images` stage finds its pictures.
enum ImageSource<'a> {
    /// A `demo_data` stage drawing this many small pictures.
    Demo(usize),
    /// A Flickr8k-layout folder.
    Folder(&'a Path),
}

/// Writes an `images` + `features` pipeline into `project`.
fn write_pipeline(project: &Path, source: &ImageSource, weights: &str, threads: i32) {
    let images_stage = match source {
        ImageSource::Demo(images) => format!(
            "[stages.demo]\nkind = \"demo_data\"\nparams = {{ images = {images}, seed = 7, \
             image_size = {DEMO_IMAGE_SIZE} }}\n\n[stages.images]\nkind = \"images\"\n\
             inputs = [\"demo\"]\n"
        ),
        ImageSource::Folder(root) => format!(
            "[stages.images]\nkind = \"images\"\nparams = {{ root = \"{}\" }}\n",
            root.display()
        ),
    };
    let text = format!(
        r#"# Written by the ML benchmark (torch/benches/ml.rs).
{images_stage}
[stages.features]
kind = "features"
inputs = ["images"]
params = {{ backbone = "efficientnet_lite0", weights = "{weights}", batch_size = {FEATURE_BATCH}, threads = {threads} }}
"#
    );
    write_if_changed(&project.join("pipeline.toml"), &text);
}

/// Removes `artifacts/latest/<stage>`, so that the next run of the stage has no previous output
/// to reuse rows from.
fn remove_latest(project: &Path, stage: &str) {
    remove_file_if_present(&project.join("artifacts").join("latest").join(stage));
}

/// The notes of stage `name` in `onenet run --format json` output.
fn stage_notes(stdout: &str, name: &str) -> Vec<String> {
    stages(stdout)
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .and_then(|s| s["notes"].as_array())
        .map(|notes| {
            notes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The number just before `suffix` in `text` ("5.2 images/s at …" → 5.2).
fn leading_number(text: &str, suffix: &str) -> Option<f64> {
    let before = &text[..text.find(suffix)?];
    before.rsplit(' ').next()?.parse().ok()
}

/// A small deterministic generator (SplitMix64) for token ids.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A word id below `vocab`: past the four special ids (`<pad>`, `<start>`, `<end>`,
    /// `<unk>`).
    fn word(&mut self, vocab: i64) -> i64 {
        4 + (self.next() % (vocab as u64 - 4)) as i64
    }
}

fn remove_file_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}

fn recreate_dir(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", dir.display()),
    }
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
}
