//! Load on a running `herd serve`: many clients creating small batches and
//! reading their status, then one large NDJSON batch. Prints requests per
//! second, latency percentiles and errors. Driven by `benches/serve_load.sh`.
//!
//!   serve_load ADDR load CLIENTS SECONDS \[paused\]
//!   serve_load ADDR big RECORDS
//!
//! Each client keeps one HTTP/1.1 connection (herd's own API client, the
//! one behind `herd --server`: hyper's pool, reconnecting after an error)
//! and loops: `POST /api/batches` (three records of `true`), then
//! `GET /api/batches/{id}`; with `paused` the batches are stored paused
//! (the API alone, no worker writing beside it). `big` creates one paused batch of RECORDS
//! records through the NDJSON endpoint, then reads its status 50 times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herd_server::client::Client;

/// A client of its own (one kept connection) for one simulated user.
fn connect(addr: SocketAddr) -> Client {
    Client::new(&format!("http://{addr}"), None).expect("a server URL")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn client(addr: SocketAddr, until: Instant, paused: bool) -> (Vec<Duration>, u64) {
    let conn = connect(addr);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let create =
        format!(r#"{{"command": ["true"], "records": ["a", "b", "c"], "paused": {paused}}}"#);
    let create = create.as_bytes();
    while Instant::now() < until {
        let start = Instant::now();
        let id = match conn
            .call("POST", "/api/batches", "application/json", create)
            .await
        {
            Ok(v) => {
                latencies.push(start.elapsed());
                v["id"].as_str().map(String::from)
            }
            _ => {
                errors += 1;
                None
            }
        };
        let Some(id) = id else { continue };
        let start = Instant::now();
        match conn
            .fetch(
                "GET",
                &format!("/api/batches/{id}"),
                "application/json",
                b"",
            )
            .await
        {
            Ok(_) => latencies.push(start.elapsed()),
            _ => errors += 1,
        }
    }
    (latencies, errors)
}

async fn load(addr: SocketAddr, clients: usize, seconds: u64, paused: bool) {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, until, paused)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await.expect("a client");
        all.extend(l);
        errors += e;
    }
    let wall = started.elapsed();
    all.sort_unstable();
    println!(
        "load{}: {clients} clients, {:.0} s: {} requests, {:.0} req/s, p50 {}, p99 {}, max {}, errors {errors}",
        if paused { " (batches paused)" } else { "" },
        wall.as_secs_f64(),
        all.len(),
        all.len() as f64 / wall.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
}

async fn big(addr: SocketAddr, records: usize) {
    let mut body = Vec::with_capacity(records * 16);
    for i in 0..records {
        body.extend_from_slice(format!("{{\"n\": {i}}}\n").as_bytes());
    }
    let conn = connect(addr);
    let started = Instant::now();
    let v = conn
        .call(
            "POST",
            "/api/batches?command=true&paused=true&name=big",
            "application/x-ndjson",
            &body,
        )
        .await
        .expect("the big create");
    let took = started.elapsed();
    let id = v["id"].as_str().unwrap().to_string();
    println!(
        "big: {records} records ({} KiB NDJSON) created in {}",
        body.len() / 1024,
        ms(took)
    );
    let mut status_times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        conn.fetch(
            "GET",
            &format!("/api/batches/{id}"),
            "application/json",
            b"",
        )
        .await
        .expect("status");
        status_times.push(start.elapsed());
    }
    status_times.sort_unstable();
    println!(
        "big: status of the {records}-task batch: p50 {}, max {}",
        ms(percentile(&status_times, 0.5)),
        ms(*status_times.last().unwrap())
    );
    conn.call(
        "DELETE",
        &format!("/api/batches/{id}"),
        "application/json",
        b"",
    )
    .await
    .expect("cancel");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect("ADDR");
    let mode = args.next().expect("load or big");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        "load" => {
            let clients = args.next().and_then(|a| a.parse().ok()).expect("CLIENTS");
            let seconds = args.next().and_then(|a| a.parse().ok()).expect("SECONDS");
            let paused = args.next().as_deref() == Some("paused");
            runtime.block_on(load(addr, clients, seconds, paused));
        }
        "big" => {
            let records = args.next().and_then(|a| a.parse().ok()).expect("RECORDS");
            runtime.block_on(big(addr, records));
        }
        other => panic!("unknown mode {other}: load or big"),
    }
}
