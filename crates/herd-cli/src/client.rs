//! `herd submit` and `herd wait`: a batch for a server to run, created on
//! the server (`--server URL`, `HERD_SERVER`) or in the store of a local
//! `herd serve`, and followed until it ends. Both transports give the same
//! answer, the server's batch view, so the output has one code path.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use herd_core::store::{BatchQuery, Store};
use herd_core::{Clock, SystemClock};
use herd_exec::Format;
use herd_server::client::{Client, ClientError};
use herd_server::submit::{CommandIn, NumberOrText, RetryIn, plan};
use herd_server::views::BatchView;
use herd_server::{BatchRequest, FileConfig, Overrides, ServerConfig};
use serde_json::Value;

use crate::cli::{InputFormat, RetryArgs, SubmitArgs, WaitArgs, exit};
use crate::error::{CliError, chain};
use crate::store::{BatchRef, Location, with_store};

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { status, .. } if (400..500).contains(&status) => {
                CliError::usage(chain(&e))
            }
            _ => CliError::failed(chain(&e)),
        }
    }
}

/// A client of the server at `url`, with the token in `HERD_TOKEN`.
pub fn client(url: &str) -> Result<Client, CliError> {
    let token = std::env::var("HERD_TOKEN").ok().filter(|t| !t.is_empty());
    Client::new(url, token).map_err(|e| CliError::usage(e.to_string()))
}

/// The request the flags (over `--spec`) describe.
fn request(args: &SubmitArgs) -> Result<BatchRequest, CliError> {
    let mut request = match &args.spec {
        None => BatchRequest::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read --spec {}: {e}", path.display()))
            })?;
            let toml = path.extension().is_some_and(|e| e == "toml");
            let parsed = if toml {
                toml::from_str::<BatchRequest>(&text).map_err(|e| e.to_string())
            } else {
                serde_json::from_str::<BatchRequest>(&text).map_err(|e| e.to_string())
            };
            parsed.map_err(|e| CliError::usage(format!("--spec {}: {e}", path.display())))?
        }
    };
    let mut words = args.command.clone();
    let inline = match words.iter().position(|w| w == ":::") {
        Some(i) => {
            let items = words.split_off(i + 1);
            words.pop();
            Some(items)
        }
        None => None,
    };
    if !words.is_empty() {
        request.command = Some(CommandIn::Words(words));
    }
    if args.shell {
        request.shell = Some(true);
    }
    if args.flow.is_some() {
        request.flow = args.flow.clone();
    }
    if args.name.is_some() {
        request.name = args.name.clone();
    }
    if args.concurrency.is_some() {
        request.concurrency = args.concurrency;
    }
    if let Some(p) = &args.priority {
        request.priority = Some(NumberOrText::Text(p.clone()));
    }
    if let Some(n) = args.retries {
        request.retry = Some(RetryIn::Count(n));
    }
    if args.timeout.is_some() {
        request.timeout = args.timeout.clone();
    }
    if args.paused {
        request.paused = Some(true);
    }
    if args.idempotency_key.is_some() {
        request.idempotency_key = args.idempotency_key.clone();
    }
    let records = match (inline, &args.input) {
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "records after ::: and --input both given: use one of them",
            ));
        }
        (Some(items), None) => Some(items.into_iter().map(Value::String).collect()),
        (None, Some(path)) => {
            let format = match args.format {
                Some(f) => format_of(f),
                None => Format::from_path(path),
            };
            let file = std::fs::File::open(path).map_err(|e| {
                CliError::usage(format!("cannot read --input {}: {e}", path.display()))
            })?;
            Some(records(
                std::io::BufReader::new(file),
                format,
                &path.display().to_string(),
            )?)
        }
        (None, None) if request.records.is_none() && request.tasks.is_none() => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(CliError::usage(
                    "no records: give them after :::, with --input FILE, on standard input, or in --spec",
                ));
            }
            let mut text = Vec::new();
            stdin.lock().read_to_end(&mut text)?;
            let format = format_of(args.format.unwrap_or(InputFormat::Lines));
            Some(records(&text[..], format, "standard input")?)
        }
        (None, None) => None,
    };
    if records.is_some() {
        request.records = records;
    }
    Ok(request)
}

fn format_of(format: InputFormat) -> Format {
    match format {
        InputFormat::Lines => Format::Lines,
        InputFormat::Csv => Format::Csv,
        InputFormat::Jsonl => Format::Jsonl,
    }
}

/// Records as the API takes them: lines as strings, rows and objects as
/// objects of fields.
fn records(
    reader: impl std::io::BufRead,
    format: Format,
    what: &str,
) -> Result<Vec<Value>, CliError> {
    let read = herd_exec::read_items(reader, format)
        .map_err(|e| CliError::usage(format!("{what}: {e}")))?;
    Ok(read
        .items
        .into_iter()
        .map(|item| match item.fields {
            Some(fields) => Value::Object((*fields).clone()),
            None => Value::String(item.text),
        })
        .collect())
}

/// `herd submit`.
pub async fn submit(
    args: SubmitArgs,
    store: Option<String>,
    server: Option<String>,
) -> Result<u8, CliError> {
    let request = request(&args)?;
    let batch = match &server {
        Some(url) => {
            let body = serde_json::to_vec(&request).map_err(|e| CliError::failed(e.to_string()))?;
            client(url)?
                .call("POST", "/api/batches", "application/json", &body)
                .await?
        }
        None => {
            let config = match &args.config {
                Some(path) => ServerConfig::resolve(
                    FileConfig::load(path).map_err(|e| CliError::usage(chain(&e)))?,
                    Overrides::default(),
                )
                .map_err(|e| CliError::usage(chain(&e)))?,
                None => ServerConfig::default(),
            };
            let plan = plan(request, &config).map_err(|e| match &e.field {
                Some(field) => CliError::usage(format!("{field}: {}", e.message)),
                None => CliError::usage(e.message.clone()),
            })?;
            let location = Location::resolve_or(store.as_deref(), "serve.db")?;
            with_store!(location, |store| {
                let inserted = store.batch_insert(plan.spec, SystemClock.now()).await?;
                let info = store.batch_get(inserted.batch).await?;
                to_json(&BatchView::new(&info, None))?
            })
        }
    };
    let id = batch["id"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "herd: batch {id}: {} tasks{}",
        batch["counts"]["total"],
        if server.is_some() {
            " on the server"
        } else {
            ""
        }
    );
    if args.wait {
        let wait = WaitArgs {
            batch: id,
            quiet: false,
            json: args.json,
        };
        return self::wait(wait, store, server).await;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{batch}")?;
    } else {
        writeln!(out, "{id}")?;
    }
    Ok(exit::OK)
}

fn to_json(view: &BatchView) -> Result<Value, CliError> {
    serde_json::to_value(view).map_err(|e| CliError::failed(e.to_string()))
}

/// `herd wait`: the batch's view until it ends; progress on stderr.
pub async fn wait(
    args: WaitArgs,
    store: Option<String>,
    server: Option<String>,
) -> Result<u8, CliError> {
    let batch = BatchRef::parse(&args.batch)?;
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let end = match &server {
        Some(url) => {
            let client = client(url)?;
            let id = match batch {
                BatchRef::Id(id) => id.to_string(),
                BatchRef::Last => {
                    let page = client.get("/api/batches?limit=1").await?;
                    page["batches"][0]["id"]
                        .as_str()
                        .map(String::from)
                        .ok_or_else(|| {
                            CliError::usage(
                                "the server has no batches yet: create one with `herd submit`",
                            )
                        })?
                }
            };
            let path = format!("/api/batches/{id}");
            follow(progress, || client.get(&path)).await?
        }
        None => {
            let location = Location::resolve_or(store.as_deref(), "serve.db")?;
            with_store!(location, |store| {
                let id = match batch {
                    BatchRef::Id(id) => id,
                    BatchRef::Last => {
                        let page = store
                            .batch_list(BatchQuery {
                                limit: 1,
                                ..BatchQuery::default()
                            })
                            .await?;
                        page.first().map(|b| b.id).ok_or_else(|| {
                            CliError::usage(
                                "this store has no batches yet: create one with `herd submit`",
                            )
                        })?
                    }
                };
                let store = &*store;
                follow(progress, || async move {
                    let info = store.batch_get(id).await?;
                    let stats = store.batch_stats(id, SystemClock.now()).await?;
                    to_json(&BatchView::new(&info, Some(&stats)))
                })
                .await?
            })
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{end}")?;
    }
    let c = &end["counts"];
    eprintln!(
        "herd: batch {} {}: {} succeeded, {} failed, {} cancelled, {} skipped",
        end["id"].as_str().unwrap_or_default(),
        end["state"].as_str().unwrap_or_default(),
        c["succeeded"],
        c["failed"],
        c["cancelled"],
        c["skipped"]
    );
    Ok(if end["state"] == "succeeded" {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Reads the batch's view every quarter second until it has ended.
async fn follow<F, E>(progress: bool, mut read: impl FnMut() -> F) -> Result<Value, CliError>
where
    F: std::future::Future<Output = Result<Value, E>>,
    CliError: From<E>,
{
    let mut shown = String::new();
    loop {
        let view = read().await?;
        let state = view["state"].as_str().unwrap_or_default();
        if matches!(state, "succeeded" | "partial" | "failed" | "cancelled") {
            if progress && !shown.is_empty() {
                eprintln!();
            }
            return Ok(view);
        }
        if progress {
            let c = &view["counts"];
            let line = format!(
                "\r{} {state}: {}/{} done, {} failed, {} running",
                view["id"].as_str().unwrap_or_default(),
                view["progress"]["finished"],
                view["progress"]["total"],
                c["failed"],
                c["running"]
            );
            if line != shown {
                eprint!("{line}");
                shown = line;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `herd retry --server`: the server runs the batch's failed tasks again;
/// this follows the batch to its end, as `herd wait` does.
pub async fn retry(args: RetryArgs, server: Option<String>) -> Result<u8, CliError> {
    let url = server.expect("called with a server");
    let client = client(&url)?;
    let batch = BatchRef::parse(&args.batch)?;
    let id = match batch {
        BatchRef::Id(id) => id.to_string(),
        BatchRef::Last => {
            let page = client.get("/api/batches?limit=1").await?;
            page["batches"][0]["id"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| CliError::usage("the server has no batches yet"))?
        }
    };
    let answer = client
        .call(
            "POST",
            &format!("/api/batches/{id}/retry?downstream={}", !args.failed),
            "application/json",
            b"",
        )
        .await?;
    if !args.quiet {
        eprintln!("herd: batch {id}: retrying {} tasks", answer["retried"]);
    }
    let wait = WaitArgs {
        batch: id,
        quiet: args.quiet,
        json: args.json,
    };
    self::wait(wait, None, Some(url)).await
}
