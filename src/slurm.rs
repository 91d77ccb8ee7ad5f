//! Running tasks on a Slurm cluster, as Snakemake and Nextflow do: submit them as one array job
//! (`sbatch --array`), poll the whole array once per interval with `squeue` (not `sacct`, which
//! needs the accounting daemon), decide success by what each task committed to the shared store
//! (not by the scheduler's state), resubmit failed tasks up to `retries` times, and cancel what
//! was submitted (`scancel`) if the run is interrupted.
//!
//! The engine knows nothing of what a task computes: each task is a command line, and `done(i)`
//! says whether task `i`'s result is in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how jobs are submitted (`[executor]` in `pipeline.toml`, with a stage's
/// `[stages.NAME.resources]` over it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `--time`, Slurm's own syntax (e.g. `1:00:00`).
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// `--mem`, Slurm's own syntax (e.g. `8G`).
    pub mem: Option<String>,
    /// `--gpus`.
    pub gpus: Option<u32>,
    /// At most this many array tasks run at once (`--array=…%N`; 0: no limit).
    pub max_parallel: u32,
    /// Further `sbatch` arguments, as given.
    pub extra_args: Vec<String>,
    /// Times a failed task is submitted again before the run fails.
    pub retries: u32,
    /// Seconds between two polls of the queue.
    pub poll_seconds: f64,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            partition: None,
            account: None,
            time: None,
            cpus_per_task: None,
            mem: None,
            gpus: None,
            max_parallel: 0,
            extra_args: Vec::new(),
            retries: 2,
            poll_seconds: 5.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "the executor is Slurm (`[executor] kind = \"slurm\"` in the pipeline file, or \
         `--executor slurm`), but `{program}` cannot be run: {source}. Install Slurm's client \
         commands on this machine (and set SLURM_CONF if its configuration is elsewhere), or run \
         with `--executor local`"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the executor is Slurm (`[executor]` in the pipeline file), and `{command}` failed: \
         {stderr}. Check that the controller answers (`sinfo`) and the job settings (`[executor]` \
         and the stage's `[stages.NAME.resources]`: partition, account, time, cpus_per_task, \
         mem, gpus, extra_args), or run with `--executor local`"
    )]
    Command { command: String, stderr: String },
    #[error(
        "the executor is Slurm, but SLURM_CONF names {}, which does not exist: point it at the \
         cluster's slurm.conf, or run with `--executor local`",
        path.display()
    )]
    NoConf { path: PathBuf },
    #[error("the Slurm queue could not be read for {seconds} s: {source}")]
    Unreachable {
        seconds: u64,
        #[source]
        source: Box<SlurmError>,
    },
    #[error(
        "task {task} of {what} failed {attempts} time(s) (Slurm job {job}); its log: {}{}",
        log.display(),
        tail_text(tail)
    )]
    TaskFailed {
        what: String,
        task: usize,
        attempts: u32,
        job: String,
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    #[error("interrupted: cancelled Slurm job(s) {0}")]
    Interrupted(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Set by SIGINT/SIGTERM while an array is being watched (checked at each poll); the handlers
/// are removed when it is dropped, so that Ctrl-C stops the rest of the run as usual.
struct Interrupted {
    flag: Arc<AtomicBool>,
    handlers: Vec<signal_hook::SigId>,
}

impl Interrupted {
    fn watch() -> Interrupted {
        let flag = Arc::new(AtomicBool::new(false));
        let handlers = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
            .into_iter()
            .filter_map(|signal| signal_hook::flag::register(signal, Arc::clone(&flag)).ok())
            .collect();
        Interrupted { flag, handlers }
    }

    fn happened(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// `; it ends: <lines>` when a log's tail has something to say.
fn tail_text(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; it ends:\n{}", tail.trim_end())
    }
}

/// The last `lines` lines of a file (empty if unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How long the queue may be unreadable (the controller down) before the run gives up.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(300);

/// One array job's tasks, as the caller describes them.
pub struct ArrayJob<'a> {
    /// What the tasks compute, for messages and the job's name (e.g. `features shards`).
    pub what: String,
    /// The shell command of each task; task `i` runs `commands[i]`.
    pub commands: Vec<String>,
    /// Folder for the job script and every task's stdout/stderr (`<task>.out`, `<task>.err`).
    pub log_dir: PathBuf,
    /// Whether task `i`'s result is committed.
    pub done: &'a (dyn Fn(usize) -> bool + Sync),
    /// Called with (tasks done, tasks) after each poll.
    pub progress: &'a dyn Fn(usize, usize),
    /// Told of each task resubmitted, in a sentence.
    pub note: &'a dyn Fn(&str),
}

/// Submits every task not yet done as one array job and waits until each is done, resubmitting
/// failed ones up to `settings.retries` times. Returns the number of tasks submitted (retries
/// included).
pub fn run_array(job: &ArrayJob, settings: &SlurmSettings) -> Result<usize, SlurmError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SlurmError::Io { path, source }
    };
    if let Some(conf) = std::env::var_os("SLURM_CONF") {
        let path = PathBuf::from(conf);
        if !path.is_file() {
            return Err(SlurmError::NoConf { path });
        }
    }
    std::fs::create_dir_all(&job.log_dir).map_err(io(&job.log_dir))?;
    let script = job.log_dir.join("array.sh");
    let mut text = String::from(
        "#!/bin/sh\n# Written by onenet: runs task $SLURM_ARRAY_TASK_ID of an array job.\n\
         case \"$SLURM_ARRAY_TASK_ID\" in\n",
    );
    for (i, command) in job.commands.iter().enumerate() {
        text.push_str(&format!("  {i}) exec {command} ;;\n"));
    }
    text.push_str("  *) echo \"no task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n");
    std::fs::write(&script, text).map_err(io(&script))?;

    let interrupted = Interrupted::watch();
    let total = job.commands.len();
    let mut attempts: BTreeMap<usize, u32> = BTreeMap::new();
    let mut submitted = 0;
    // Job id → its tasks still believed queued or running.
    let mut live: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut todo: Vec<usize> = (0..total).filter(|&i| !(job.done)(i)).collect();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if !todo.is_empty() {
            for &i in &todo {
                *attempts.entry(i).or_default() += 1;
            }
            let id = submit(job, settings, &script, &todo)?;
            submitted += todo.len();
            live.insert(id, todo.drain(..).collect());
        }
        let done = (0..total).filter(|&i| (job.done)(i)).count();
        (job.progress)(done, total);
        // Success is what the store holds: once every task's output is there, the queue has
        // nothing more to say.
        if live.is_empty() || done == total {
            return Ok(submitted);
        }
        let wait_until = Instant::now() + Duration::from_secs_f64(settings.poll_seconds.max(0.1));
        while Instant::now() < wait_until {
            if interrupted.happened() {
                let ids: Vec<String> = live.keys().cloned().collect();
                cancel(&ids);
                return Err(SlurmError::Interrupted(ids.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if (0..total).all(|i| (job.done)(i)) {
            (job.progress)(total, total);
            return Ok(submitted);
        }
        let queued = match queued_tasks(&live.keys().cloned().collect::<Vec<_>>()) {
            Ok(queued) => {
                unreachable_since = None;
                queued
            }
            // A controller busy or restarting for a moment: ask again at the next poll, but
            // not for ever (the jobs may still run; a later run finds what they committed).
            // A missing `squeue` does not come back by waiting.
            Err(e @ SlurmError::Spawn { .. }) => {
                cancel(&live.keys().cloned().collect::<Vec<_>>());
                return Err(e);
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_LIMIT {
                    return Err(SlurmError::Unreachable {
                        seconds: since.elapsed().as_secs(),
                        source: Box::new(e),
                    });
                }
                continue;
            }
        };
        let mut failed = None;
        for (id, tasks) in live.iter_mut() {
            let left: BTreeSet<usize> = tasks
                .iter()
                .copied()
                .filter(|t| queued.contains(&(id.clone(), *t)))
                .collect();
            for &task in tasks.difference(&left) {
                if (job.done)(task) {
                    continue;
                }
                let tries = attempts.get(&task).copied().unwrap_or(0);
                if tries > settings.retries {
                    failed.get_or_insert((task, tries, id.clone()));
                } else {
                    (job.note)(&format!(
                        "task {task} of {} (Slurm job {id}) ended without its output; \
                         submitting it again (retry {tries} of {}); its log: {}",
                        job.what,
                        settings.retries,
                        attempt_log(&job.log_dir, task, id).display()
                    ));
                    todo.push(task);
                }
            }
            *tasks = left;
        }
        if let Some((task, attempts, job_id)) = failed {
            cancel(&live.keys().cloned().collect::<Vec<_>>());
            let log = attempt_log(&job.log_dir, task, &job_id);
            return Err(SlurmError::TaskFailed {
                what: job.what.clone(),
                task,
                attempts,
                tail: log_tail(&log, 5),
                job: job_id,
                log,
            });
        }
        live.retain(|_, tasks| !tasks.is_empty());
    }
}

/// The stderr log of task `task`'s attempt in array job `job` (each attempt keeps its own).
fn attempt_log(dir: &Path, task: usize, job: &str) -> PathBuf {
    dir.join(format!("{task}.{job}.err"))
}

/// `sbatch --parsable --array=…` of `tasks`; returns the job id.
fn submit(
    job: &ArrayJob,
    settings: &SlurmSettings,
    script: &Path,
    tasks: &[usize],
) -> Result<String, SlurmError> {
    let list: Vec<String> = tasks.iter().map(usize::to_string).collect();
    let mut array = list.join(",");
    if settings.max_parallel > 0 {
        array.push_str(&format!("%{}", settings.max_parallel));
    }
    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!("--array={array}"),
        format!("--job-name=onenet-{}", job.what.replace(' ', "-")),
        format!("--output={}/%a.%A.out", job.log_dir.display()),
        format!("--error={}/%a.%A.err", job.log_dir.display()),
    ];
    let mut push = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            args.push(format!("--{flag}={value}"));
        }
    };
    push("partition", settings.partition.clone());
    push("account", settings.account.clone());
    push("time", settings.time.clone());
    push(
        "cpus-per-task",
        settings.cpus_per_task.map(|n| n.to_string()),
    );
    push("mem", settings.mem.clone());
    push("gpus", settings.gpus.map(|n| n.to_string()));
    args.extend(settings.extra_args.iter().cloned());
    args.push(script.display().to_string());
    let out = command("sbatch", &args)?;
    // `--parsable` prints `jobid` or `jobid;cluster`.
    Ok(out.trim().split(';').next().unwrap_or("").to_string())
}

/// The (job id, task) pairs `squeue` still lists, for the given array jobs: one query.
fn queued_tasks(ids: &[String]) -> Result<BTreeSet<(String, usize)>, SlurmError> {
    let out = command(
        "squeue",
        &[
            "--noheader".into(),
            "--array".into(),
            format!("--jobs={}", ids.join(",")),
            "--format=%i".into(),
        ],
    )?;
    let mut queued = BTreeSet::new();
    for line in out.lines() {
        // `123_4` for one task, `123_[5-9%2]` for tasks not yet started.
        let Some((id, tasks)) = line.trim().split_once('_') else {
            continue;
        };
        for task in expand_tasks(tasks) {
            queued.insert((id.to_string(), task));
        }
    }
    Ok(queued)
}

/// Task indices of `squeue`'s array notation: `4`, `[5-9%2]`, `[1,3,7-8]`.
fn expand_tasks(text: &str) -> Vec<usize> {
    let inner = text.trim_start_matches('[').trim_end_matches(']');
    let inner = inner.split('%').next().unwrap_or("");
    let mut tasks = Vec::new();
    for part in inner.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    tasks.extend(a..=b);
                }
            }
            None => tasks.extend(part.parse::<usize>().ok()),
        }
    }
    tasks
}

fn cancel(ids: &[String]) {
    if !ids.is_empty() {
        let _ = command("scancel", ids);
    }
}

fn command(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SlurmError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(SlurmError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_array_notation_expands_to_task_indices() {
        assert_eq!(expand_tasks("4"), vec![4]);
        assert_eq!(expand_tasks("[5-8%2]"), vec![5, 6, 7, 8]);
        assert_eq!(expand_tasks("[1,3,7-8]"), vec![1, 3, 7, 8]);
        assert!(expand_tasks("[]").is_empty());
    }
}
