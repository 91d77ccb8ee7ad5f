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

    /// Use the local store only: never ask or write the remote cache (`[store] remote` or
    /// ONENET_REMOTE).
    #[arg(long, global = true)]
    pub offline: bool,

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
        /// The executor the run would use (`run --executor`): a Slurm job's key names the device
        /// its resources ask for.
        #[arg(long, value_enum)]
        executor: Option<ExecutorArg>,
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
    /// Remove store objects that no pipeline file needs, and leftovers of killed runs.
    ///
    /// Kept: what every pipeline file that ran against the store resolves to (as it reads now,
    /// and as it last ran), every view's newest outputs, every pin, with `--keep-sweeps` every
    /// experiment's outputs, and everything upstream of those.
    Gc {
        /// Report what would be removed, and how many bytes, without removing anything.
        #[arg(long)]
        dry_run: bool,
        /// Also keep the outputs of every variant run and sweep (`onenet exp show` lists them).
        #[arg(long)]
        keep_sweeps: bool,
        /// Collect the remote cache instead of the local store: remove the manifests of
        /// objects that nothing kept here needs, then the blobs no manifest names (blobs younger
        /// than an hour stay: a push may be in progress). Pins and pipeline files are this
        /// machine's: run it where they are known.
        #[arg(long)]
        remote: bool,
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
    /// Compare runs: the experiments table, and the difference of two runs.
    #[command(subcommand)]
    Exp(ExpCommand),
    /// Keep a run's outputs (and everything upstream of them) from `gc`, under a name.
    ///
    /// Pins what the pipeline (with any `--set`) resolves to now: every stage, or one with
    /// `--stage`; or one object with `--key`. Pinning an existing name replaces that pin.
    Pin {
        /// The pin's name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Pin only this stage's output.
        #[arg(long, conflicts_with = "key")]
        stage: Option<String>,
        /// Pin the object whose key starts with this.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Pin the variant these overrides make (as `run --set`).
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE", conflicts_with = "key")]
        set: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List the pins: name, stage, key, and whether the object is still in the store.
    Pins {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Remove a pin (its objects stay until a `gc` finds nothing else keeping them).
    Unpin { name: String },
    /// Upload outputs to the remote cache: the newest output of each named stage (default:
    /// every stage), or a pin's objects.
    ///
    /// Each object's files go up first, as blobs named by their BLAKE3 hash (those the remote
    /// has are skipped), then its manifest, written only if the remote has none for the key: the
    /// first machine to push a key wins and nothing is overwritten.
    Push {
        /// Stages whose newest output to push.
        stages: Vec<String>,
        /// Push this pin's objects instead.
        #[arg(long, conflicts_with = "stages")]
        pin: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Download outputs from the remote cache: what each named stage (default: every stage)
    /// resolves to now, or a pin's objects. Every file is checked against its manifest.
    Pull {
        /// Stages whose current output to pull.
        stages: Vec<String>,
        /// Pull this pin's objects instead.
        #[arg(long, conflicts_with = "stages")]
        pin: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The remote cache: check that it works.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Compute one stage, or one shard of a sharded stage, from a task file (what a cluster job
    /// runs).
    #[command(hide = true)]
    StageTask { file: PathBuf },
    /// Try to lock a file held by the calling run (exit 0: got it, 3: held): tells a run
    /// whether its store's file system honours locks between processes.
    #[command(hide = true)]
    LockProbe { file: PathBuf },
    /// Run SQL over the store's tables (Polars' SQL dialect) and print the result.
    ///
    /// Tables: `<stage>.<table>` for the output each stage of the pipeline file resolves to
    /// (e.g. `captions.captions`, `evaluate.metrics`); `<stage>@<key12>.<table>` for any output
    /// in the store, by the first twelve hex digits of its key as `run` and `status` print it
    /// (quoted: `"train@1a2b3c4d5e6f".log`); and `runs` for the run log. Example:
    /// `onenet query "select split, count(*) as n from captions.captions group by split"`.
    Query(QueryArgs),
    /// Print a completion script for a shell, e.g. `onenet completions bash >
    /// ~/.local/share/bash-completion/completions/onenet`.
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Task(TaskCommand),
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Probe the remote cache once (write, a put-if-absent that must be refused, read, delete,
    /// list) and say what works. Exits with status 1 if anything does not.
    Check {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
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
    /// Run the sweep declared as `[sweeps.NAME]` in the pipeline file.
    #[arg(long, value_name = "NAME")]
    pub sweep: Option<String>,
    /// Name this variant run (or sweep), for `exp show`, `--exp` and `pin` (default: a name
    /// made from its overrides).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where libtorch stages compute: here, or as Slurm jobs (a sharded stage's shards as one
    /// array job, other libtorch stages as one job each, except those whose
    /// `[stages.NAME.resources]` say `local = true`; table stages always run here).
    /// Default: `[executor] kind` in the pipeline file, else local.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// Do not upload what this run computes to the remote cache (it still pulls from it).
    #[arg(long)]
    pub no_push: bool,
    /// Run up to this many variants of a sweep at once (each also runs its independent stages
    /// in parallel; stages the variants share are computed once). Default: 1, or every variant
    /// at once with the Slurm executor (each variant's libtorch stages are jobs of their own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
}

/// `--executor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorArg {
    Local,
    Slurm,
}

impl From<ExecutorArg> for onenet::config::ExecutorKind {
    fn from(arg: ExecutorArg) -> Self {
        match arg {
            ExecutorArg::Local => onenet::config::ExecutorKind::Local,
            ExecutorArg::Slurm => onenet::config::ExecutorKind::Slurm,
        }
    }
}

/// Output format of a table: readable text, JSON (an array of rows) or CSV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    Text,
    Json,
    Csv,
}

#[derive(Args)]
pub struct QueryArgs {
    /// One SQL statement.
    pub sql: String,
    /// text: a table for people; json: an array of row objects; csv: RFC 4180 with a header;
    /// parquet: a Parquet file (needs --output or a redirected stdout).
    #[arg(long, value_enum, default_value = "text")]
    pub format: QueryFormat,
    /// Write the result to this file (replaced whole, only once the query has succeeded)
    /// instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Output format of `query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    Text,
    Json,
    Csv,
    Parquet,
}

#[derive(Subcommand)]
pub enum ExpCommand {
    /// One row per output of a stage (default: every output of the pipeline's last stage that
    /// reports metrics, e.g. every `evaluate`), with the params that differ between the rows —
    /// its own and its upstream stages' — and its metrics. Rows are marked `latest` (the
    /// pipeline's own), `pin:NAME` or `exp:NAME`.
    Show(ExpShowArgs),
    /// The params and metrics that differ between two runs, each given as a key prefix, a pin
    /// or an experiment name.
    Diff {
        a: String,
        b: String,
        /// The stage compared when A or B is a pin or experiment (default as for `exp show`).
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
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

/// What `exp show` shows.
#[derive(Args)]
pub struct ExpShowArgs {
    /// The stage whose outputs are the rows.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only the runs of this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Sort by this metric, largest first.
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// With --sort: smallest first (for losses).
    #[arg(long, requires = "sort")]
    pub ascending: bool,
    /// Keep rows whose param has this value, e.g. `--where train.rnn=lstm` (repeatable).
    #[arg(long = "where", value_name = "STAGE.PARAM=VALUE")]
    pub filters: Vec<String>,
    /// Show every param, not only those that differ.
    #[arg(long)]
    pub all_params: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TableFormat,
}
