//! No-op benchmark: how long `onenet run` and `onenet status` take on a Flickr8k-sized dataset
//! when nothing has changed, compared with the cost of hashing every image from scratch.
//!
//! The benchmark builds (once, then reuses) a synthetic dataset with the Flickr8k layout under
//! `target/bench-data/flickr8k-sized/`: 8,091 noisy JPEG files of about 100 KB each, five short
//! captions per image and a 6000/1000/1091 train/dev/test split. It builds the release `onenet`
//! binary, points a `captions` + `images` pipeline at the dataset
//! (`target/bench-data/noop-project/`), runs it once to fill the store, and then times whole
//! processes, each over several repetitions:
//!
//! * a. `onenet run` when nothing changed (warm stat cache: one `stat` per source file);
//! * b. `onenet status` when nothing changed;
//! * c. `onenet status` with `artifacts/statcache.json` deleted before each repetition, so every
//!   image is read and hashed again;
//! * d. `b3sum` over the same image files, the floor for hashing them (taken from `PATH`, or
//!   installed once under `target/bench-tools/` with `cargo install`);
//! * e. `onenet --version`, for reference: the cost of starting the process at all (loading its
//!   shared libraries), which every command pays before doing any work.
//!
//! It prints the minimum and median wall-clock time of each, their ratios, and whether the no-op
//! `run` and `status` meet the 0.3 s target. The target is reported, not asserted: timings on a
//! shared machine are noisy. All measurements run with the files in the page cache.
//!
//! Run it with `make bench` (or `cargo bench --bench noop`).

mod support;
use support::dataset::{prepare_dataset, FLICKR8K_IMAGES, IMAGE_DIR};
use support::{
    build_release, cargo, describe_actions, onenet_cmd, stages, target_dir, write_if_changed,
};

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Repetitions per measurement.
const REPS: usize = 7;
/// The target for a no-op `run` and `status`, in seconds.
const TARGET_SECS: f64 = 0.3;
/// Bytes of file-name arguments per `b3sum` process, well below any `ARG_MAX`.
const ARG_BYTES_PER_CALL: usize = 128 * 1024;

const PIPELINE: &str = r#"# Written by the no-op benchmark (benches/noop.rs).
[stages.captions]
kind = "captions"
params = { root = "../flickr8k-sized" }

[stages.images]
kind = "images"
params = { root = "../flickr8k-sized" }
"#;

fn main() {
    let target = target_dir();
    let bench_data = target.join("bench-data");
    let data = bench_data.join("flickr8k-sized");
    println!(
        "onenet no-op benchmark ({} CPUs available)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. The dataset.
    println!("\n== dataset: {}", data.display());
    let names = prepare_dataset(&data, FLICKR8K_IMAGES);
    let image_dir = data.join(IMAGE_DIR);
    let total_bytes: u64 = names
        .iter()
        .map(|name| {
            let path = image_dir.join(name);
            fs::metadata(&path)
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                .len()
        })
        .sum();
    println!(
        "{} images, {:.1} MB in all, mean file size {:.1} KB",
        names.len(),
        total_bytes as f64 / 1e6,
        total_bytes as f64 / names.len() as f64 / 1e3
    );

    // 2. The binary, the project and a warm-up run.
    println!("\n== building the release binary");
    let onenet = build_release();
    let project = bench_data.join("noop-project");
    write_if_changed(&project.join("pipeline.toml"), PIPELINE);
    let statcache = project.join("artifacts").join("statcache.json");
    println!("\n== warm-up: onenet run in {}", project.display());
    let (took, stdout) = onenet_cmd(&onenet, &project, &["run", "--format", "json"]);
    println!(
        "took {:.2} s: {}",
        took.as_secs_f64(),
        describe_actions(&stdout)
    );
    let b3sum = find_or_install_b3sum(&target);
    println!("b3sum: {}", b3sum.display());

    // 3. The measurements.
    println!("\n== measuring ({REPS} repetitions each)");
    let run_noop = measure("a. onenet run, nothing changed", || {
        let (took, stdout) = onenet_cmd(&onenet, &project, &["run", "--format", "json"]);
        expect_all(&stdout, "action", "cached", "no-op run");
        took
    });
    let status_noop = measure("b. onenet status, nothing changed", || {
        let (took, stdout) = onenet_cmd(&onenet, &project, &["status", "--format", "json"]);
        expect_all(&stdout, "state", "fresh", "no-op status");
        took
    });
    let mut status_rewrote_cache = true;
    let status_cold = measure("c. onenet status, statcache.json deleted", || {
        remove_if_present(&statcache);
        let (took, stdout) = onenet_cmd(&onenet, &project, &["status", "--format", "json"]);
        expect_all(
            &stdout,
            "state",
            "fresh",
            "status after deleting the stat cache",
        );
        status_rewrote_cache &= statcache.exists();
        took
    });
    let b3sum_all = measure("d. b3sum over the image files", || {
        b3sum_files(&b3sum, &image_dir, &names)
    });
    let startup = measure("e. onenet --version (process start)", || {
        onenet_cmd(&onenet, &project, &["--version"]).0
    });
    // Leave the store with a warm stat cache, as a user's would be.
    onenet_cmd(&onenet, &project, &["run", "--format", "json"]);

    // 4. The report.
    println!("\n== results (wall-clock seconds per whole process)");
    let rows = [&run_noop, &status_noop, &status_cold, &b3sum_all, &startup];
    let width = rows.iter().map(|m| m.label.len()).max().unwrap_or(0);
    println!("{:width$}  {:>8}  {:>8}", "measurement", "min", "median");
    for m in rows {
        println!("{:width$}  {:>8.3}  {:>8.3}", m.label, m.min(), m.median());
    }
    println!("\nratios of medians:");
    for (label, num, den) in [
        (
            "a / d  (no-op run vs hashing everything)",
            &run_noop,
            &b3sum_all,
        ),
        (
            "b / d  (no-op status vs hashing everything)",
            &status_noop,
            &b3sum_all,
        ),
        (
            "c / d  (cold status vs hashing everything)",
            &status_cold,
            &b3sum_all,
        ),
        (
            "c / b  (cold status vs no-op status)",
            &status_cold,
            &status_noop,
        ),
    ] {
        println!("  {label:48} {:>8.2}", num.median() / den.median());
    }
    println!("beyond process start (median - median of e):");
    for (label, m) in [
        ("a  (no-op run)", &run_noop),
        ("b  (no-op status)", &status_noop),
    ] {
        println!("  {label:48} {:>8.3} s", m.median() - startup.median());
    }
    if !status_rewrote_cache {
        println!("\nnote: `onenet status` did not write statcache.json back after it was deleted");
    }
    println!("\ntarget: no-op run/status under {TARGET_SECS} s");
    for m in [&run_noop, &status_noop] {
        let verdict = if m.median() < TARGET_SECS {
            "PASS"
        } else {
            "FAIL"
        };
        println!(
            "  {:width$}  median {:.3} s  {verdict}",
            m.label,
            m.median()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Panics unless every stage in onenet's JSON output has `field` equal to `expected`: a
/// measurement of a "no-op" that did work would be meaningless.
fn expect_all(stdout: &str, field: &str, expected: &str, what: &str) {
    let stages = stages(stdout);
    assert!(!stages.is_empty(), "{what}: no stages in the output");
    for stage in &stages {
        assert!(
            stage[field].as_str() == Some(expected),
            "{what}: expected every stage's {field} to be `{expected}`, got:\n{stdout}"
        );
    }
}

/// `b3sum` from `PATH`, or one installed under `<target>/bench-tools` (installing it if needed).
fn find_or_install_b3sum(target: &Path) -> PathBuf {
    let exe = format!("b3sum{}", std::env::consts::EXE_SUFFIX);
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(&exe))
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        return found;
    }
    let root = target.join("bench-tools");
    let installed = root.join("bin").join(&exe);
    if !installed.is_file() {
        println!(
            "b3sum is not on PATH: installing it with `cargo install b3sum --locked --root {}`",
            root.display()
        );
        let status = Command::new(cargo())
            .args(["install", "b3sum", "--locked", "--root"])
            .arg(&root)
            .status()
            .expect("start cargo install");
        assert!(status.success(), "cargo install b3sum failed: {status}");
    }
    installed
}

/// Hashes `names` (in `dir`) with `b3sum`, in as few processes as the argument limit allows;
/// returns the processes' summed wall-clock time.
fn b3sum_files(b3sum: &Path, dir: &Path, names: &[String]) -> Duration {
    let mut total = Duration::ZERO;
    let mut hashed = 0;
    for chunk in arg_chunks(names) {
        let begin = Instant::now();
        let out = Command::new(b3sum)
            .args(chunk)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("start b3sum");
        total += begin.elapsed();
        assert!(
            out.status.success(),
            "b3sum failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        hashed += out.stdout.iter().filter(|&&b| b == b'\n').count();
    }
    assert_eq!(hashed, names.len(), "b3sum printed one line per file");
    total
}

/// `names` cut into runs of at most `ARG_BYTES_PER_CALL` bytes of arguments each.
fn arg_chunks(names: &[String]) -> Vec<&[String]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, name) in names.iter().enumerate() {
        let len = name.len() + 1; // with its terminating NUL
        if index > start && bytes + len > ARG_BYTES_PER_CALL {
            chunks.push(&names[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += len;
    }
    if start < names.len() {
        chunks.push(&names[start..]);
    }
    chunks
}

// ---------------------------------------------------------------------------------------------
// Timing and files

/// One measurement's repetitions, in seconds.
struct Measurement {
    label: &'static str,
    secs: Vec<f64>,
}

impl Measurement {
    fn min(&self) -> f64 {
        self.secs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn median(&self) -> f64 {
        let mut sorted = self.secs.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        }
    }
}

/// Runs `once` `REPS` times (it returns the time of the part to count) and prints each time.
fn measure(label: &'static str, mut once: impl FnMut() -> Duration) -> Measurement {
    print!("{label:42}");
    flush();
    let secs: Vec<f64> = (0..REPS)
        .map(|_| {
            let secs = once().as_secs_f64();
            print!(" {secs:.3}");
            flush();
            secs
        })
        .collect();
    println!();
    Measurement { label, secs }
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}
