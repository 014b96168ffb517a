//! `herd`: run a command over many inputs as a durable, resumable batch, and
//! inspect the batches of a store.
//!
//! Every `herd run` is a batch in a store (a SQLite file by default), run by
//! a worker embedded in the process: the same scheduler and store as the
//! library and the server. The modules: `cli` (arguments and help), `store`
//! (which store, opening it), `run` (building a batch, running it, resuming
//! it), `show` (progress, command output, the summary), `inspect` (list,
//! status, tasks, logs, export, cancel), `serve` (the HTTP server),
//! `client` (submit and wait, on a server or its local store).

mod cli;
mod client;
mod error;
mod inspect;
mod run;
mod serve;
mod show;
mod source;
mod store;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, exit};
use error::CliError;
use store::Location;

fn main() -> ExitCode {
    let cli = Cli::parse();
    log();
    if let Command::Completions(args) = &cli.command {
        clap_complete::generate(
            args.shell,
            &mut Cli::command(),
            "herd",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    // The server answers requests while its worker runs tasks: all cores.
    let mut builder = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&CliError::failed(format!("cannot start: {e}"))),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

async fn dispatch(cli: Cli) -> Result<u8, CliError> {
    let server = cli.server;
    match cli.command {
        Command::Serve(_) | Command::Run(_) if server.is_some() => {
            return Err(CliError::usage(
                "--server (or HERD_SERVER) is for the commands that talk to a server: `herd run` and `herd serve` run here; create a batch on a server with `herd submit`",
            ));
        }
        Command::Serve(args) => return serve::serve(args, cli.store).await,
        Command::Submit(args) => return client::submit(*args, cli.store, server).await,
        Command::Wait(args) => return client::wait(args, cli.store, server).await,
        Command::Retry(args) if server.is_some() => return client::retry(args, server).await,
        _ => {}
    }
    let location = Location::resolve(cli.store.as_deref())?;
    match cli.command {
        Command::Run(args) => run::run(*args, location).await,
        Command::Retry(args) => run::retry(args, location).await,
        Command::List(args) => inspect::list(args, location, server).await,
        Command::Status(args) => inspect::status(args, location, server).await,
        Command::Tasks(args) => inspect::tasks(args, location, server).await,
        Command::Logs(args) => inspect::logs(args, location, server).await,
        Command::Export(args) => inspect::export(args, location, server).await,
        Command::Cancel(args) => inspect::cancel(args, location, server).await,
        Command::Completions(_) | Command::Serve(_) | Command::Submit(_) | Command::Wait(_) => {
            Ok(exit::OK)
        }
    }
}

/// The log, to stderr: warnings unless `HERD_LOG` says otherwise, in
/// `tracing`'s filter syntax (`info` for `herd serve`'s request log,
/// `herd_exec=debug,warn`, ...). Commands print their output themselves:
/// the log is for what goes wrong beside it.
fn log() {
    let filter = match std::env::var("HERD_LOG") {
        Err(_) => EnvFilter::new("warn"),
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!(
                "herd: HERD_LOG={text:?} is not a log filter ({e}): logging warnings; write it like `info` or `tower_http=info,warn`"
            );
            EnvFilter::new("warn")
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn fail(error: &CliError) -> ExitCode {
    let prefix = if std::io::stderr().is_terminal() {
        "\x1b[1;31mherd: error:\x1b[0m"
    } else {
        "herd: error:"
    };
    eprintln!("{prefix} {error}");
    ExitCode::from(error.code)
}
