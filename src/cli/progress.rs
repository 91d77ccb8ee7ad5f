//! Progress of long work on stderr, and the outcome of each stage as a run goes: progress bars
//! when stderr is a terminal, plain lines at a steady interval when it is not (a log file, CI),
//! nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use onenet::engine::{Action, RunObserver, StageOutcome};
use onenet_stages::Progress;

use super::out::{self, diag, out, Verbosity};
use super::render::outcome_line;

/// How often a plain progress line is printed, unless `ONENET_PROGRESS_INTERVAL_MS` says
/// otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// How progress is shown.
#[derive(Clone)]
pub enum ProgressMode {
    /// Nothing (`--quiet`).
    Off,
    /// indicatif bars, redrawn in place (stderr is a terminal).
    Bars(MultiProgress),
    /// A plain line per running stage at this interval, and at the end of each phase.
    Lines(Duration),
}

impl ProgressMode {
    /// The mode for this process's stderr and verbosity.
    pub fn detect() -> ProgressMode {
        if out::verbosity() == Verbosity::Quiet {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            let interval = std::env::var("ONENET_PROGRESS_INTERVAL_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(DEFAULT_INTERVAL, Duration::from_millis);
            ProgressMode::Lines(interval)
        }
    }

    /// A progress sink for `name` (a stage, or a command's own work).
    pub fn start(&self, name: &str) -> Box<dyn Progress + Send + Sync> {
        match self {
            ProgressMode::Off => Box::new(onenet_stages::NoProgress),
            ProgressMode::Bars(multi) => {
                let bar = multi.add(progress_bar());
                bar.set_prefix(name.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Box::new(Bar(bar))
            }
            ProgressMode::Lines(interval) => Box::new(Lines {
                name: name.to_string(),
                interval: *interval,
                phase: Mutex::new(None),
            }),
        }
    }

    /// A byte-counting progress sink for a transfer (`pulling`, `pushing`) of `name`.
    pub fn transfer(&self, name: &str, what: &str) -> Transfer {
        let bar = match self {
            ProgressMode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.to_string());
                bar.set_message(what.to_string());
                Some(bar)
            }
            _ => None,
        };
        let now = Instant::now();
        Transfer {
            bar,
            lines: matches!(self, ProgressMode::Lines(_)),
            interval: match self {
                ProgressMode::Lines(interval) => *interval,
                _ => DEFAULT_INTERVAL,
            },
            label: format!("{name}: {what}"),
            started: now,
            printed: Mutex::new((now, 0)),
        }
    }

    /// Runs `write` (which prints lines) without tearing the bars being drawn.
    pub fn print(&self, write: impl FnOnce()) {
        match self {
            ProgressMode::Bars(multi) => multi.suspend(write),
            _ => write(),
        }
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Bytes moved so far of a transfer: a bar with bytes/s, or a plain line per interval with
/// MB/s, or nothing.
pub struct Transfer {
    bar: Option<ProgressBar>,
    lines: bool,
    interval: Duration,
    label: String,
    started: Instant,
    /// When the last plain line was printed, and at how many bytes.
    printed: Mutex<(Instant, u64)>,
}

impl Transfer {
    /// `done` of `total` bytes are moved.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        } else if self.lines {
            let mut printed = self.printed.lock().unwrap_or_else(|e| e.into_inner());
            let finished = done >= total && printed.1 < total;
            if finished || printed.0.elapsed() >= self.interval {
                let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
                diag!(
                    "{}: {:.1}/{:.1} MB ({:.1} MB/s)",
                    self.label,
                    done as f64 / 1e6,
                    total as f64 / 1e6,
                    done as f64 / 1e6 / seconds
                );
                *printed = (Instant::now(), done);
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A progress bar, cleared when its stage ends.
struct Bar(ProgressBar);

impl Progress for Bar {
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

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Plain progress lines, e.g. `features: extracting features: 1200/8091 (41.3/s)`, at most one
/// per interval, and one when a phase ends (all done, another phase starts, or the stage ends).
struct Lines {
    name: String,
    interval: Duration,
    phase: Mutex<Option<Phase>>,
}

struct Phase {
    what: String,
    message: String,
    len: u64,
    done: u64,
    started: Instant,
    printed: Instant,
    /// The line for the current position is out.
    up_to_date: bool,
}

impl Lines {
    fn print(&self, phase: &mut Phase) {
        let seconds = phase.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            phase.done as f64 / seconds
        } else {
            0.0
        };
        let message = if phase.message.is_empty() {
            String::new()
        } else {
            format!(" {}", phase.message)
        };
        diag!(
            "{}: {}: {}/{} ({rate:.1}/s){message}",
            self.name,
            phase.what,
            phase.done,
            phase.len
        );
        phase.printed = Instant::now();
        phase.up_to_date = true;
    }

    /// The last line of a phase that made progress since its last line.
    fn finish(&self, phase: &mut Option<Phase>) {
        if let Some(phase) = phase.as_mut().filter(|p| !p.up_to_date && p.done > 0) {
            self.print(phase);
        }
    }
}

impl Progress for Lines {
    fn start(&self, len: u64, what: &str) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        self.finish(&mut phase);
        let now = Instant::now();
        *phase = Some(Phase {
            what: what.to_string(),
            message: String::new(),
            len,
            done: 0,
            started: now,
            printed: now,
            up_to_date: true,
        });
    }

    fn inc(&self, n: u64) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let Some(phase) = phase.as_mut() else { return };
        phase.done += n;
        phase.up_to_date = false;
        if phase.done >= phase.len || phase.printed.elapsed() >= self.interval {
            self.print(phase);
        }
    }

    fn set_message(&self, message: &str) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(phase) = phase.as_mut() {
            phase.message = message.to_string();
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        self.finish(&mut phase);
    }
}

/// Shows a run as it goes: each finished stage on stdout (text format), its failure, warnings
/// and the progress of running stages on stderr.
pub struct RunProgress {
    mode: ProgressMode,
    /// Whether to print each stage's line on stdout (not for JSON, which is printed at the end).
    text: bool,
    /// Why each stage is computed, said when it starts (`--verbose`).
    reasons: HashMap<String, String>,
    /// Transfers to or from the remote cache in progress, by stage.
    transfers: Mutex<HashMap<String, Transfer>>,
}

impl RunProgress {
    pub fn new(text: bool, reasons: HashMap<String, String>) -> RunProgress {
        RunProgress::with_mode(ProgressMode::detect(), text, reasons)
    }

    /// Drawing into `mode`, which runs going on at the same time share (a sweep's variants).
    pub fn with_mode(
        mode: ProgressMode,
        text: bool,
        reasons: HashMap<String, String>,
    ) -> RunProgress {
        RunProgress {
            mode,
            text,
            reasons,
            transfers: Mutex::new(HashMap::new()),
        }
    }
}

impl RunObserver for RunProgress {
    fn stage_started(&self, name: &str) -> Box<dyn Progress + '_> {
        if out::verbosity() == Verbosity::Verbose {
            let why = self.reasons.get(name).map_or("", String::as_str);
            self.mode.print(|| diag!("computing {name}: {why}"));
        }
        self.mode.start(name)
    }

    fn transfer(&self, name: &str, what: &str, done: u64, total: u64) {
        let mut transfers = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        let transfer = transfers
            .entry(name.to_string())
            .or_insert_with(|| self.mode.transfer(name, what));
        transfer.update(done, total);
        if done >= total {
            transfers.remove(name);
        }
    }

    fn store_warning(&self, text: &str) {
        self.mode.print(|| diag!("warning: {text}"));
    }

    fn waiting_for_lock(&self, name: &str, lock: &Path) {
        if out::verbosity() == Verbosity::Quiet {
            return;
        }
        self.mode.print(|| {
            diag!(
                "waiting: another onenet process is computing {name} (lock {}); its result \
                 will be reused",
                lock.display()
            )
        });
    }

    fn stage_finished(&self, outcome: &StageOutcome) {
        let verbosity = out::verbosity();
        self.mode.print(|| {
            if matches!(outcome.action, Action::Failed | Action::Skipped) {
                // Errors: always, and on stderr whatever the format.
                diag!("{}", outcome_line(outcome));
                if let Some(error) = &outcome.error {
                    diag!("          error: {error}");
                }
                return;
            }
            // Results. A closed stdout only stops these lines: the run goes on, quietly.
            if self.text && !out::stdout_closed() {
                let _ = out!("{}", outcome_line(outcome));
                let notes = match (verbosity, outcome.action) {
                    (Verbosity::Quiet, _) => false,
                    (Verbosity::Normal, action) => action == Action::Computed,
                    (Verbosity::Verbose, _) => true,
                };
                if notes {
                    for note in &outcome.notes {
                        let _ = out!("          {note}");
                    }
                }
            }
            // Warnings were said when the stage was computed; a reuse repeats them with -v.
            let warnings = match verbosity {
                Verbosity::Quiet => false,
                Verbosity::Normal => outcome.action == Action::Computed,
                Verbosity::Verbose => true,
            };
            if warnings {
                for warning in &outcome.warnings {
                    diag!("warning: {}: {warning}", outcome.name);
                }
            }
        });
    }
}
