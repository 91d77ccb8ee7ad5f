//! The command line's arguments.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use onenet::task_cli::{Format, TaskCommand};

use super::out::Verbosity;

/// The default pipeline file.
pub const DEFAULT_PIPELINE: &str = "pipeline.toml";

/// Train one captioning network once and use it for four tasks, as a content-hashed batch
/// pipeline.
///
/// onenet reads the stages declared in pipeline.toml, computes a cache key for each from its
/// kind, code version, params, upstream keys, source-file contents and environment, and runs only
/// the stages whose key has no output in the artifact store yet. Outputs (Parquet tables,
/// safetensors tensors) stay in the store; artifacts/latest/<stage>/ holds the newest of each.
///
/// Results go to stdout; progress, warnings and errors to stderr.
#[derive(Parser)]
#[command(
    name = "onenet",
    about,
    long_about,
    override_usage = "onenet [OPTIONS] <COMMAND>\n       onenet --version",
    disable_version_flag = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args)]
pub struct GlobalArgs {
    /// The pipeline file.
    #[arg(long, short = 'p', global = true, default_value = DEFAULT_PIPELINE)]
    pub pipeline: PathBuf,

    /// Print only results and errors: no progress, notes or warnings.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also say why each stage is computed, and every stage's notes.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,

    /// Print the version of onenet and of libtorch, and the device a stage that can use a GPU
    /// would run on here.
    #[arg(long, short = 'V', action = ArgAction::SetTrue)]
    pub version: bool,
}

impl GlobalArgs {
    pub fn verbosity(&self) -> Verbosity {
        if self.quiet {
            Verbosity::Quiet
        } else if self.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }

    /// Whether `--pipeline` was left at its default (then an error suggests giving it).
    pub fn default_pipeline(&self) -> bool {
        self.pipeline.as_os_str() == DEFAULT_PIPELINE
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the stale stages (all, or the named ones and what they need), reusing cached outputs.
    ///
    /// Each stage is shown as computed or cached, with its time and key, on stdout; failures,
    /// warnings and progress go to stderr. Independent stages run in parallel. A second onenet
    /// process running the same stage waits for the first and reuses its result. If stdout's
    /// reader goes away (`onenet run | head -1`), the run still finishes its stages, quietly.
    Run(RunArgs),
    /// Say whether each stage is fresh, stale or missing, and why (old → new per changed field).
    Status {
        /// Override params as `run --set` would, to see what that run would recompute.
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        set: Vec<String>,
        /// Exit with status 1 when any stage is stale or missing (0 when all are fresh).
        #[arg(long)]
        exit_code: bool,
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
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Re-hash every stored output against what was written; move damaged ones aside so the next
    /// run recomputes them. Exits with status 1 if anything was damaged.
    Verify {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List the built-in stage kinds and their params (or one kind's, in detail).
    Kinds {
        kind: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print a completion script for a shell, e.g. `onenet completions bash >
    /// ~/.local/share/bash-completion/completions/onenet`.
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Task(TaskCommand),
}

#[derive(Args)]
pub struct RunArgs {
    /// Stages to bring up to date, with everything upstream of them (default: all).
    pub stages: Vec<String>,
    /// Recompute this stage even if its output exists (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Override a param for this run only, e.g. `--set captions.min_count=3`; keys change
    /// exactly as if the file said so (repeatable).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Say what would be computed or reused, and why, without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format: readable text, or JSON for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Seconds to wait for another onenet process computing the same stage.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub wait: u64,
}

/// The arguments the libtorch worker gets for a task: ours without the flags only `onenet`
/// knows (`--quiet`, `--verbose`); everything after `--` is passed as it is.
pub fn worker_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut rest = false;
    args.into_iter()
        .filter(|arg| {
            rest |= arg == "--";
            rest || !["-q", "--quiet", "-v", "--verbose"].contains(&arg.to_str().unwrap_or(""))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn worker_args_drop_our_own_flags_only() {
        let args = ["caption", "-q", "x.jpg", "--verbose", "--", "-v"].map(Into::into);
        let kept: Vec<_> = worker_args(args);
        assert_eq!(
            kept,
            ["caption", "x.jpg", "--", "-v"].map(std::ffi::OsString::from)
        );
    }
}
