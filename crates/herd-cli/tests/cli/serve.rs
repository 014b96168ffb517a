//! `herd serve` as a process: the API over a real socket, SIGTERM and
//! `kill -9` then a restart, all through HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::{Herd, code, text};

/// A running `herd serve` and the lines of its stderr.
struct Server {
    child: Child,
    stderr: BufReader<ChildStderr>,
    addr: SocketAddr,
}

impl Server {
    fn start(herd: &Herd, args: &[&str]) -> Server {
        Server::start_with(herd, args, &[])
    }

    /// `herd serve ARGS` with the environment variables `env`.
    fn start_with(herd: &Herd, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut child = herd
            .command(&all)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let line = read_line(&mut stderr);
        let addr = line
            .trim()
            .strip_prefix("herd serve: listening on http://")
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            stderr,
            addr,
        }
    }

    /// Waits for a line of stderr containing `what`.
    fn expect(&mut self, what: &str) {
        loop {
            let line = read_line(&mut self.stderr);
            assert!(!line.is_empty(), "the server exited before saying {what:?}");
            if line.contains(what) {
                return;
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, body) = exchange(self.addr, method, path, body);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.http("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Reads the event stream at `path` until `done` holds for the events
    /// so far (or the stream ends); the events.
    fn events_until(&self, path: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut events = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("events within 30 s");
            if n == 0 {
                return events;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                events.push(serde_json::from_str::<Value>(data).unwrap());
                if done(&events) {
                    return events;
                }
            }
        }
    }

    /// Follows a batch's stream to its end (the batch's terminal event).
    fn finish(&self, batch: &str) -> Value {
        let events = self.events_until(&format!("/api/batches/{batch}/events"), |_| false);
        let last = events.last().expect("a stream of a batch has events");
        assert_eq!(last["type"], "batch", "{last}");
        self.get(&format!("/api/batches/{batch}"))
    }

    fn exit_code(mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// Waits for the exit: its code and the rest of stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (self.child.wait().unwrap().code(), rest)
    }
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// One HTTP/1.1 request on a fresh connection: status and body.
fn exchange(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A task that notes its start, waits for the file `release`, notes its end.
fn blocked(records: &[&str], concurrency: u32) -> Value {
    json!({
        "command": ["echo {} >> starts; while [ ! -e release ]; do sleep 0.02; done; echo {} >> ends"],
        "shell": true,
        "records": records,
        "concurrency": concurrency,
    })
}

/// Tasks of `batch` that started running among `events`.
fn running(events: &[Value], batch: &str) -> usize {
    events
        .iter()
        .filter(|e| e["batch"] == batch && e["type"] == "task" && e["to"] == "running")
        .count()
}

#[test]
fn sigterm_lets_running_tasks_finish_and_the_next_server_runs_the_queued_ones() {
    let herd = Herd::new();
    let server = Server::start(&herd, &["--slots", "1", "--shutdown-grace", "20s"]);
    let (status, created) = server.http("POST", "/api/batches", Some(blocked(&["a", "b", "c"], 1)));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    server.events_until(&format!("/api/batches/{id}/events"), |e| {
        running(e, &id) == 1
    });

    let mut server = server;
    server.signal(Signal::SIGTERM);
    server.expect("stopping");
    // The worker starts nothing new from here: let the running task end.
    std::fs::write(herd.path("release"), "").unwrap();
    assert_eq!(server.exit_code(), Some(0));
    assert_eq!(herd.file("ends").lines().collect::<Vec<_>>(), ["a"]);

    let url = format!("sqlite:{}", herd.home.path().join("serve.db").display());
    let status = herd.json(&["--store", &url, "status", &id, "--json"]);
    assert_eq!(status["counts"]["succeeded"], 1, "{status}");
    assert_eq!(
        status["counts"]["queued"], 2,
        "queued tasks stay in the store: {status}"
    );

    let server = Server::start(&herd, &["--slots", "1"]);
    let done = server.finish(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    let starts = herd.file("starts");
    let mut started: Vec<&str> = starts.lines().collect();
    started.sort_unstable();
    assert_eq!(started, ["a", "b", "c"], "nothing ran twice");
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn kill_9_then_restart_finishes_every_batch() {
    let herd = Herd::new();
    let server = Server::start(&herd, &["--slots", "2"]);
    let (status, a) = server.http(
        "POST",
        "/api/batches",
        Some(blocked(&["1", "2", "3", "4"], 2)),
    );
    assert_eq!(status, 201, "{a}");
    let (status, b) = server.http(
        "POST",
        "/api/batches",
        Some(json!({"command": ["true"], "records": ["x", "y"]})),
    );
    assert_eq!(status, 201, "{b}");
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    // Both slots held by `a`'s blocked tasks (`b`'s may have run before).
    server.events_until("/api/events?after=0", |e| running(e, &a) == 2);

    let mut server = server;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    std::fs::write(herd.path("release"), "").unwrap();

    let started = Instant::now();
    let server = Server::start(&herd, &["--slots", "2"]);
    for batch in [&a, &b] {
        let done = server.finish(batch);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the dead server's leases (30 s) were released at once, not waited out"
    );
    // The two tasks in flight at the kill ran again (at-least-once); the
    // others once.
    let tasks = server.get(&format!("/api/batches/{a}/tasks"));
    let attempts: Vec<u64> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(
        attempts.iter().filter(|&&n| n == 2).count(),
        2,
        "{attempts:?}"
    );
    assert_eq!(
        attempts.iter().filter(|&&n| n == 1).count(),
        2,
        "{attempts:?}"
    );
    let lost = server.get(&format!("/api/batches/{a}/tasks/1"));
    assert_eq!(lost["attempt_history"][0]["reason"], "lost", "{lost}");
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn serve_refuses_the_network_without_a_token_and_bad_settings() {
    let herd = Herd::new();
    let out = herd.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out.stderr).contains("HERD_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    let out = herd
        .command(&["serve"])
        .env("HERD_SLOTS", "0")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(text(&out.stderr).contains("slots"), "{}", text(&out.stderr));
    std::fs::write(herd.path("herd.toml"), "[flows.f]\ncommand = \"echo {\"\n").unwrap();
    let out = herd.run(&["serve", "--config", "herd.toml"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out.stderr).contains("flow \"f\": command"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn flows_come_from_the_config_file_named_by_herd_config_and_a_token_from_herd_token() {
    let herd = Herd::new();
    std::fs::write(
        herd.path("herd.toml"),
        "[flows.greet]\ncommand = [\"echo\", \"hello\", \"{name}\"]\n",
    )
    .unwrap();
    let mut command = herd.command(&["serve", "--listen", "127.0.0.1:0"]);
    command
        .env("HERD_CONFIG", "herd.toml")
        .env("HERD_TOKEN", "tok")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let line = read_line(&mut stderr);
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let server = Server {
        child,
        stderr,
        addr,
    };
    let (status, _) = server.http("GET", "/api/batches", None);
    assert_eq!(status, 401, "the token from HERD_TOKEN is required");
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = json!({"flow": "greet", "records": [{"name": "ann"}]}).to_string();
    write!(
        stream,
        "POST /api/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("\"flow\":\"greet\""), "{answer}");
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn submit_and_wait_work_against_a_server() {
    let herd = Herd::new();
    let server = Server::start(&herd, &["--slots", "2"]);
    let url = format!("http://{}", server.addr);
    let out = herd.run(&[
        "submit", "--server", &url, "--name", "greet", "--", "echo", "hi", "{}", ":::", "a", "b",
        "c",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(id.starts_with('b'), "the id on stdout: {id:?}");
    let out = herd.run(&["wait", &id, "--server", &url, "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(end["state"], "succeeded");
    assert_eq!(end["counts"]["succeeded"], 3);
    assert_eq!(end["name"], "greet");

    // A failure: `--wait` exits 1, like `herd run`.
    let out = herd.run(&[
        "submit", "--server", &url, "--wait", "--shell", "--", "exit {}", ":::", "0", "3",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 failed"),
        "{}",
        text(&out.stderr)
    );

    // A spec file, records from standard input.
    std::fs::write(
        herd.path("spec.toml"),
        "command = [\"echo\", \"{n}\"]\nconcurrency = 1\n",
    )
    .unwrap();
    let mut child = herd
        .command(&[
            "submit",
            "--server",
            &url,
            "--spec",
            "spec.toml",
            "--format",
            "jsonl",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"n\": 1}\n{\"n\": 2}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            created["counts"]["total"].clone(),
            created["concurrency"].clone()
        ),
        (json!(2), json!(1))
    );

    // A bad request: exit 2, the field named, nothing created.
    let out = herd.run(&[
        "submit", "--server", &url, "-j", "0", "--", "echo", ":::", "a",
    ]);
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out.stderr).contains("concurrency"),
        "{}",
        text(&out.stderr)
    );
    let list = server.get("/api/batches");
    assert_eq!(list["batches"].as_array().unwrap().len(), 3);
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn submit_without_a_server_stores_the_batch_for_a_local_serve() {
    let herd = Herd::new();
    let out = herd.run(&["submit", "--", "echo", "{}", ":::", "x", "y"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "b1");
    let server = Server::start(&herd, &["--slots", "2"]);
    let out = herd.run(&["wait", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (end["id"].clone(), end["state"].clone()),
        (json!("b1"), json!("succeeded"))
    );
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn the_inspection_commands_print_the_same_through_a_server_as_from_the_store() {
    let herd = Herd::new();
    let server = Server::start(&herd, &["--slots", "2"]);
    let url = format!("http://{}", server.addr);
    let out = herd.run(&[
        "submit",
        "--server",
        &url,
        "--wait",
        "--shell",
        "--",
        "echo out {}; echo err {} >&2; exit {}",
        ":::",
        "0",
        "3",
        "0",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    let store = format!("sqlite:{}", herd.home.path().join("serve.db").display());
    let both = |args: &[&str]| {
        let mut local = vec!["--store", store.as_str()];
        local.extend_from_slice(args);
        let mut remote = vec!["--server", url.as_str()];
        remote.extend_from_slice(args);
        let (l, r) = (herd.run(&local), herd.run(&remote));
        assert_eq!(code(&l), Some(0), "{args:?} local: {}", text(&l.stderr));
        assert_eq!(code(&r), Some(0), "{args:?} remote: {}", text(&r.stderr));
        (text(&l.stdout), text(&r.stdout))
    };
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["tasks", "b1"],
        &["tasks", "b1", "--json", "--state", "failed"],
        &["logs", "b1", "2"],
        &["logs", "b1", "2", "--all", "--json"],
        &["export", "b1", "--format", "csv"],
        &["export", "b1", "--format", "json"],
    ] {
        let (local, remote) = both(args);
        assert_eq!(local, remote, "{args:?}");
        assert!(!local.trim().is_empty(), "{args:?}");
    }
    let (local, remote) = both(&["status", "b1", "--json"]);
    let (mut local, mut remote): (Value, Value) = (
        serde_json::from_str(&local).unwrap(),
        serde_json::from_str(&remote).unwrap(),
    );
    // Figures go over the wire in milliseconds: compare them apart.
    let (ls, rs) = (local["stats"].take(), remote["stats"].take());
    assert_eq!(local, remote);
    assert_eq!(ls["retries"], rs["retries"]);
    let p50 = |s: &Value| s["attempt_ms"]["p50"].as_f64().unwrap();
    assert!((p50(&ls) - p50(&rs)).abs() < 0.01, "{ls} {rs}");
    assert!(
        local["command"].as_str().unwrap().contains("echo out"),
        "{local}"
    );

    // Cancel through the server; an unknown batch is a usage error (exit 2).
    let out = herd.run(&[
        "submit", "--server", &url, "--paused", "--", "true", ":::", "a",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let out = herd.run(&["--server", &url, "cancel", "b2", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let cancelled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let out = herd.run(&["--server", &url, "status", "b99"]);
    assert_eq!(code(&out), Some(2));
    assert!(text(&out.stderr).contains("b99"), "{}", text(&out.stderr));

    // Retry through the server: the failed task runs again and fails again.
    let out = herd.run(&["--server", &url, "retry", "b1", "--json"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(end["counts"]["failed"], 1);
    let logs = herd.run(&["--server", &url, "logs", "b1", "2", "--all", "--json"]);
    let attempts: Value = serde_json::from_slice(&logs.stdout).unwrap();
    assert_eq!(attempts.as_array().unwrap().len(), 2, "{attempts}");

    let out = herd.run(&["--server", &url, "run", "--", "true", ":::", "a"]);
    assert_eq!(code(&out), Some(2), "herd run runs here, not on a server");
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit_code(), Some(0));
}

#[test]
fn herd_log_info_logs_each_request_and_the_default_logs_none() {
    let herd = Herd::new();
    let server = Server::start_with(&herd, &[], &[("HERD_LOG", "info")]);
    server.get("/healthz");
    let (status, _) = server.http("GET", "/api/batches/b999", None);
    assert_eq!(status, 404);
    server.signal(Signal::SIGTERM);
    let (code, log) = server.exit();
    assert_eq!(code, Some(0), "{log}");
    let line = |path: &str| {
        log.lines()
            .find(|l| l.contains(&format!("uri={path} ")))
            .unwrap_or_else(|| panic!("no request log of {path} in {log}"))
            .to_string()
    };
    let health = line("/healthz");
    assert!(
        health.contains("INFO") && health.contains("method=GET"),
        "{health}"
    );
    assert!(
        health.contains("status=200") && health.contains("latency="),
        "{health}"
    );
    assert!(line("/api/batches/b999").contains("status=404"), "{log}");

    // Without HERD_LOG: warnings only, so nothing for a request.
    let server = Server::start(&herd, &[]);
    server.get("/healthz");
    server.signal(Signal::SIGTERM);
    let (code, log) = server.exit();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("uri=") && !log.contains("INFO"), "{log}");
}
