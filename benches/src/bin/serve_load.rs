//! Load on a running `herd serve`: many clients creating small batches and
//! reading their status, then one large NDJSON batch. Prints requests per
//! second, latency percentiles and errors. Driven by `benches/serve_load.sh`.
//!
//!   serve_load ADDR load CLIENTS SECONDS \[paused\]
//!   serve_load ADDR big RECORDS
//!
//! Each client keeps one HTTP/1.1 connection (reconnecting after an error)
//! and loops: `POST /api/batches` (three records of `true`), then
//! `GET /api/batches/{id}`; with `paused` the batches are stored paused
//! (the API alone, no worker writing beside it). `big` creates one paused batch of RECORDS
//! records through the NDJSON endpoint, then reads its status 50 times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    /// One request: the status and body, or an I/O error (the connection
    /// is dropped and made again next time).
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let result = self.try_call(method, path, content_type, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn try_call(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().expect("connected");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await?;
        stream.get_mut().write_all(body).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
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
    let mut conn = Conn::new(addr);
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
            Ok((201, body)) => {
                latencies.push(start.elapsed());
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
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
            .call(
                "GET",
                &format!("/api/batches/{id}"),
                "application/json",
                b"",
            )
            .await
        {
            Ok((200, _)) => latencies.push(start.elapsed()),
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
    let mut conn = Conn::new(addr);
    let started = Instant::now();
    let (status, answer) = conn
        .call(
            "POST",
            "/api/batches?command=true&paused=true&name=big",
            "application/x-ndjson",
            &body,
        )
        .await
        .expect("the big create");
    let took = started.elapsed();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    println!(
        "big: {records} records ({} KiB NDJSON) created in {}",
        body.len() / 1024,
        ms(took)
    );
    let mut status_times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let (status, _) = conn
            .call(
                "GET",
                &format!("/api/batches/{id}"),
                "application/json",
                b"",
            )
            .await
            .expect("status");
        assert_eq!(status, 200);
        status_times.push(start.elapsed());
    }
    status_times.sort_unstable();
    println!(
        "big: status of the {records}-task batch: p50 {}, max {}",
        ms(percentile(&status_times, 0.5)),
        ms(*status_times.last().unwrap())
    );
    let (status, _) = conn
        .call(
            "DELETE",
            &format!("/api/batches/{id}"),
            "application/json",
            b"",
        )
        .await
        .expect("cancel");
    assert_eq!(status, 200);
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
