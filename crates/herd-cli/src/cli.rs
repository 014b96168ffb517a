//! The command line: what `herd` accepts, and the help that teaches it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, documented in `herd --help` and the README.
pub mod exit {
    /// Every task succeeded (or the command did what was asked).
    pub const OK: u8 = 0;
    /// At least one task failed, was cancelled or skipped.
    pub const FAILED: u8 = 1;
    /// The command line, the input or the store was wrong; nothing was created.
    pub const USAGE: u8 = 2;
    /// Interrupted (Ctrl-C or SIGTERM); the batch can be resumed.
    pub const INTERRUPTED: u8 = 130;
}

const EXIT_CODES: &str = "\
Exit codes:
  0    every task succeeded
  1    at least one task failed (or was cancelled or skipped)
  2    usage or input error: nothing was created
  130  interrupted: resume with `herd run --resume`";

/// Durable, resumable batches of commands.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Where batches are kept: a SQLite file (`sqlite:PATH`) or PostgreSQL
    /// (`postgres://USER@HOST/DB`). Default: herd.db in $HERD_HOME, or in the
    /// user's data directory.
    #[arg(long, global = true, env = "HERD_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// A herd server (`http://HOST:PORT`) for list, status, tasks, logs,
    /// export, cancel, retry, submit and wait, instead of the local store.
    /// Its token comes from HERD_TOKEN.
    #[arg(long, global = true, env = "HERD_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command over many inputs, as a durable batch.
    Run(Box<RunArgs>),
    /// List batches, newest first.
    List(ListArgs),
    /// Show a batch: state, counts, timings.
    Status(BatchArgs),
    /// List a batch's tasks.
    Tasks(TasksArgs),
    /// Show what a task printed (the kept tail of each attempt).
    Logs(LogsArgs),
    /// Write a batch's tasks and results as JSON, JSON lines or CSV.
    Export(ExportArgs),
    /// Cancel a batch: waiting tasks at once, running ones through their worker.
    Cancel(CancelArgs),
    /// Run a finished batch's failed tasks again, in the same batch.
    Retry(RetryArgs),
    /// Serve the HTTP API: batches created over HTTP, run by a worker of its own.
    Serve(ServeArgs),
    /// Create a batch for a server to run: on the server at --server, or in
    /// the store a local `herd serve` runs.
    Submit(Box<SubmitArgs>),
    /// Wait for a batch to end, showing its progress; exits like `herd run`.
    Wait(WaitArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

const RUN_EXAMPLES: &str = "\
Examples:
  # Compress every log file, 4 at a time:
  herd run -j4 -- gzip {} ::: *.log

  # One line of input per task, from a file or standard input:
  herd run --input urls.txt -- curl -sfO {}
  find . -name '*.png' | herd run -- convert {} {.}.jpg

  # Columns of a CSV file (or fields of a .jsonl file) by name:
  herd run --input users.csv -- ./notify --id {id} --email {email}

  # Retry with backoff, cut each attempt at 30s, stop after 5% failures:
  herd run --retries 3 --backoff 1s,30s --timeout 30s --max-failures 5% \\
      -- ./fetch.sh {} ::: $(seq 1000)

  # Ten items per invocation, like xargs -n 10:
  herd run -n 10 -- rm -- ::: *.tmp

  # Through a shell (items are quoted, so they cannot inject commands):
  herd run --shell -- 'grep -c ERROR {} > {/.}.count' ::: logs/*

  # After a crash or Ctrl-C, finish the last batch without redoing what succeeded:
  herd run --resume

Placeholders: {} item, {#} job number, {.} without extension, {/} basename,
{//} directory, {/.} basename without extension, {name} CSV column or JSON
field, {{ and }} literal braces. Without a placeholder the item is appended.

Exit codes:
  0    every task succeeded
  1    at least one task failed (or was cancelled or skipped)
  2    usage or input error: nothing was created
  130  interrupted: resume with `herd run --resume`";

/// `herd run`.
#[derive(Debug, Args)]
#[command(after_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// The command and its arguments (after `--`), then `::: ITEM...`.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Read items from FILE: lines, or CSV / JSON lines by extension or --format.
    #[arg(long, short = 'a', value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// How to read the input.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,

    /// Commands running at once [default: number of CPUs].
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<u32>,

    /// Items per command invocation, appended or substituted (like `xargs -n`).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1)]
    pub chunk: u32,

    /// Run each command through `sh -c`; substituted items are shell-quoted.
    #[arg(long)]
    pub shell: bool,

    /// Attempts after the first, for a task that fails or times out.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Wait between attempts: exponential from BASE, doubling, up to MAX.
    #[arg(long, value_name = "BASE[,MAX]", default_value = "1s,60s")]
    pub backoff: String,

    /// Cut an attempt after this long (e.g. 30s, 5m): SIGTERM, then SIGKILL after the grace.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Time a process gets after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub grace: String,

    /// What a failure does once the threshold is reached: keep going, start
    /// nothing new, or also kill what runs.
    #[arg(long, value_enum, default_value_t = OnFailureArg::Continue)]
    pub on_failure: OnFailureArg,

    /// Failures that trip --on-failure: a count, or a share like 5%
    /// [default: the first failure].
    #[arg(long, value_name = "N|P%")]
    pub max_failures: Option<String>,

    /// Priority against other batches: low, normal, high, critical or a number.
    #[arg(long, default_value = "normal")]
    pub priority: String,

    /// Run the items in random order.
    #[arg(long)]
    pub shuffle: bool,

    /// Run at most N items (after --shuffle).
    #[arg(long, value_name = "N")]
    pub max_records: Option<u64>,

    /// Print each command's output in input order (buffered) rather than as it comes.
    #[arg(long)]
    pub keep_order: bool,

    /// A name for the batch, shown by `herd list`.
    #[arg(long)]
    pub name: Option<String>,

    /// Write each task's full stdout, stderr and exit code under DIR/JOB/.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,

    /// Print the commands that would run, and create nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print no command output and no progress; only the summary and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Print the summary as JSON on stdout (command output then goes only to
    /// the store and --results).
    #[arg(long)]
    pub json: bool,

    /// Finish an interrupted batch (the last one, or BATCH) without re-running
    /// what succeeded. Other options, except output ones, come from the batch.
    #[arg(long, value_name = "BATCH", num_args = 0..=1, default_missing_value = "last")]
    pub resume: Option<String>,
}

/// How `--input` is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One item per line.
    Lines,
    /// A header row, then one item per row; `{column}` picks a field.
    Csv,
    /// One JSON object per line; `{field}` picks a field.
    Jsonl,
}

/// `--on-failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Run every task whatever fails.
    Continue,
    /// Start nothing new; let running tasks finish.
    Stop,
    /// Start nothing new and kill running tasks.
    Abort,
}

/// `herd list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only batches in this state (queued, running, paused, succeeded, partial, failed, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// JSON lines, one batch per line.
    #[arg(long)]
    pub json: bool,
}

/// A command about one batch.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    #[arg(default_value = "last")]
    pub batch: String,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herd tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    pub batch: String,
    /// Only tasks in this state (queued, running, succeeded, failed, …).
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON lines, one task per line.
    #[arg(long)]
    pub json: bool,
}

/// `herd logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    pub batch: String,
    /// The task: its job number `{#}` (e.g. 7) or its id (e.g. t345).
    pub task: String,
    /// Every attempt, not only the last.
    #[arg(long)]
    pub all: bool,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herd export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    pub batch: String,
    /// The format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Write to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `herd export --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per task.
    Csv,
}

/// `herd cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    pub batch: String,
    /// Kill running commands at once (SIGKILL) instead of SIGTERM and the grace.
    #[arg(long)]
    pub force: bool,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herd retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    #[arg(default_value = "last")]
    pub batch: String,
    /// Only the failed tasks, not the ones skipped because of them.
    #[arg(long)]
    pub failed: bool,
    /// Commands running at once [default: as the batch ran].
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<u32>,
    /// Print no command output and no progress.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

const SERVE_EXAMPLES: &str = "\
Examples:
  # On 127.0.0.1:7500, batches in serve.db in $HERD_HOME (or the data directory):
  herd serve

  # Flows from a config file, 16 slots, a token (required beyond loopback):
  HERD_TOKEN=$(cat /etc/herd/token) herd serve --config herd.toml --slots 16 --listen 0.0.0.0:7500

  # Create a batch and follow it:
  curl -s localhost:7500/api/batches -H 'content-type: application/json' -d '{\"command\": [\"echo\", \"{}\"], \"records\": [\"a\", \"b\"]}'
  curl -sN localhost:7500/api/batches/b1/events

Settings come from flags, then HERD_* variables, then the config file's
[server] table. SIGTERM or Ctrl-C stops taking requests and lets running
tasks finish within --shutdown-grace; queued tasks wait in the store for the
next `herd serve`.";

/// `herd serve`.
#[derive(Debug, Args)]
#[command(after_help = SERVE_EXAMPLES)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:7500]. Beyond
    /// loopback a token is required.
    #[arg(long, env = "HERD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Tasks the server's worker runs at once [default: number of CPUs].
    #[arg(long, env = "HERD_SLOTS", value_name = "N")]
    pub slots: Option<u32>,
    /// A herd.toml with [server] settings and [flows.NAME] tables.
    #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A file holding the bearer token every /api call must carry (or set HERD_TOKEN).
    #[arg(long, env = "HERD_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest request body, in bytes [default: 256 MiB].
    #[arg(long, env = "HERD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most records (or tasks) in one batch [default: 1000000].
    #[arg(long, env = "HERD_MAX_RECORDS", value_name = "N")]
    pub max_records: Option<usize>,
    /// Time running tasks get to finish when the server stops [default: 30s].
    #[arg(long, env = "HERD_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

const SUBMIT_EXAMPLES: &str = "\
Examples:
  # Three records, a command, on a server:
  herd submit --server http://127.0.0.1:7500 -- echo hi {} ::: a b c

  # A flow of the server's herd.toml, records from a CSV file, then wait:
  herd submit --flow thumbnail --input photos.csv --wait

  # A whole request from a file (the fields of POST /api/batches):
  herd submit --spec nightly.toml

Without --server (or HERD_SERVER) the batch goes into the store of a local
`herd serve` (serve.db in $HERD_HOME, or --store), which runs it. The batch
id is printed on stdout.";

/// `herd submit`.
#[derive(Debug, Args)]
#[command(after_help = SUBMIT_EXAMPLES)]
pub struct SubmitArgs {
    /// The command and its arguments (after `--`), then `::: RECORD...`.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// A batch request in JSON or TOML (by extension): the fields of
    /// POST /api/batches. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// A flow of the server's herd.toml instead of a command.
    #[arg(long)]
    pub flow: Option<String>,
    /// Records from FILE: lines, or CSV / JSON lines (fields by name) by
    /// extension or --format; else standard input, when it is not a terminal.
    #[arg(long, short = 'a', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// How to read the records.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Run the command through `sh -c`.
    #[arg(long)]
    pub shell: bool,
    /// A name for the batch.
    #[arg(long)]
    pub name: Option<String>,
    /// Tasks at once.
    #[arg(short = 'j', long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Priority: low, normal, high, critical or a number.
    #[arg(long)]
    pub priority: Option<String>,
    /// Attempts after the first, for a task that fails.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Cut an attempt after this long (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Store the batch paused.
    #[arg(long)]
    pub paused: bool,
    /// Submitting again with the same key returns the first batch.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// The herd.toml whose flows a local submit uses.
    #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Then wait for the batch to end (as `herd wait`).
    #[arg(long)]
    pub wait: bool,
    /// Print the batch as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herd wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The batch (e.g. b12 or 12), or `last`.
    #[arg(default_value = "last")]
    pub batch: String,
    /// No progress; only the end.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the batch as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

/// `herd completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}
