//! Where the command line's output goes, and how much of it: results on stdout, progress,
//! warnings and errors on stderr (clig.dev's convention, so `onenet run > log` still shows a
//! failure on the terminal), `--quiet` and `--verbose`, and a reader of stdout that goes away.
//!
//! Every result line goes through `out!`, which returns the write's error instead of panicking
//! as `println!` does: a closed pipe (`onenet status | head -1`) surfaces as an `io::Error` of
//! kind `BrokenPipe`, which `main` turns into a quiet exit 0, like other Unix tools. SIGPIPE is
//! not reset to its default for that: it would kill the process wherever it happens to be,
//! possibly between a stage's output and its `latest` link. Diagnostics go through `diag!`,
//! which ignores write errors (a closed stderr must not stop a run either).

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// How much the command line says besides its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `--quiet`: results and errors only.
    Quiet,
    Normal,
    /// `--verbose`: also why each stage is computed, and every stage's notes.
    Verbose,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(1);
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

pub fn set_verbosity(verbosity: Verbosity) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// Writes one line of results to stdout. Once the reader is gone, every later call fails
/// with `BrokenPipe` at once, without trying to write.
pub fn line(args: fmt::Arguments) -> io::Result<()> {
    write_stdout(|out| {
        out.write_fmt(args)?;
        out.write_all(b"\n")
    })
}

/// Writes bytes as they are to stdout (e.g. a generated completion script).
pub fn bytes(data: &[u8]) -> io::Result<()> {
    write_stdout(|out| out.write_all(data))
}

fn write_stdout(write: impl FnOnce(&mut io::StdoutLock) -> io::Result<()>) -> io::Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    let mut out = io::stdout().lock();
    // Rust's stdout is line-buffered: a whole line reaches the reader as soon as it is written.
    let result = write(&mut out).and_then(|()| out.flush());
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
    result
}

/// Whether stdout's reader has gone away.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Whether an error is, somewhere in its chain, a write to a closed pipe.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Treats a closed stdout as success: for results whose reader may leave early while the work
/// behind them has to finish anyway (`run`'s summary).
pub fn ignore_closed(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes a line to stderr, ignoring write errors.
pub fn diag_line(args: fmt::Arguments) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// A note for people on stderr (not a result): left out with `--quiet`.
pub fn note(text: &str) {
    if verbosity() != Verbosity::Quiet {
        diag_line(format_args!("{text}"));
    }
}

/// `out!("…", args)`: one line of results on stdout; returns `io::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

/// `diag!("…", args)`: one line of progress, warning or error on stderr; never fails.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::cli::out::diag_line(format_args!($($arg)*))
    };
}

pub(crate) use {diag, out};
