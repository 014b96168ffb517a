//! The `herd` binary, run as a user runs it: real processes, a real SQLite
//! store in a temporary `HERD_HOME`, signals from outside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

#[path = "cli/serve.rs"]
mod serve;

/// A `herd` with its own store and working directory.
struct Herd {
    home: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Herd {
    fn new() -> Herd {
        Herd {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herd"));
        command
            .args(args)
            .env("HERD_HOME", self.home.path())
            .env_remove("HERD_STORE")
            .env_remove("HERD_LOG")
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// One JSON value per line.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Waits until `done` holds, polling, for at most 30 s.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn runs_every_item_and_exits_zero() {
    let herd = Herd::new();
    let out = herd.run(&["run", "-j2", "--", "echo", "hello", ":::", "a", "b", "c"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["hello a", "hello b", "hello c"]);
    let status = herd.json(&["status", "last", "--json"]);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["counts"]["succeeded"], 3);
    assert_eq!(herd.json_lines(&["list", "--json"]).len(), 1);
}

#[test]
fn items_come_from_standard_input_one_per_line() {
    let herd = Herd::new();
    let mut child = herd
        .command(&["run", "--keep-order", "--", "echo", "got"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo words\nthree\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0));
    assert_eq!(text(&out.stdout), "got one\ngot two words\ngot three\n");
}

#[test]
fn a_failed_task_exits_one_and_keeps_its_exit_code_and_output() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo out {}; echo err {} >&2; exit {}",
        ":::",
        "0",
        "3",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("task #2") && stderr.contains("exit code 3"),
        "the failure is reported as it happens: {stderr}"
    );
    let failed = herd.json_lines(&["tasks", "last", "--state", "failed", "--json"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["job"], 2);
    assert_eq!(failed[0]["exit_code"], 3);
    assert_eq!(failed[0]["reason"], "exit_code(3)");
    let logs = herd.run(&["logs", "last", "2"]);
    let logs = text(&logs.stdout);
    assert!(
        logs.contains("out 3\n") && logs.contains("err 3\n"),
        "{logs}"
    );
}

#[test]
fn bad_input_exits_two_and_creates_nothing() {
    let herd = Herd::new();
    std::fs::write(herd.path("users.csv"), "id,name\n1,ann\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--", "echo", "{nope}", ":::", "a"], "{nope}"),
        (&["run", "--", ":::", "a"], "no command"),
        (
            &["run", "--input", "missing.txt", "--", "echo"],
            "missing.txt",
        ),
        (
            &["run", "--timeout", "ten", "--", "echo", ":::", "a"],
            "--timeout",
        ),
        (
            &["run", "--max-failures", "150%", "--", "echo", ":::", "a"],
            "--max-failures",
        ),
        (&["run", "--jobs", "0", "--", "echo", ":::", "a"], "--jobs"),
        (
            &["run", "--input", "users.csv", "--", "echo", "{email}"],
            "email",
        ),
        (&["run", "--resume", "b99"], "b99"),
        (
            &["run", "--store", "mysql://x/y", "--", "echo", ":::", "a"],
            "sqlite:PATH",
        ),
        (&["status", "b7"], "b7"),
        (&["logs", "b7", "x"], "\"x\""),
    ];
    for (args, names) in cases {
        let out = herd.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("herd: error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(names), "{args:?} names {names}: {stderr}");
    }
    assert!(herd.json_lines(&["list", "--json"]).is_empty());
}

#[test]
fn a_dry_run_prints_the_commands_and_creates_nothing() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--dry-run",
        "--",
        "cp",
        "{}",
        "{.}.bak",
        ":::",
        "a.txt",
        "it's",
    ]);
    assert_eq!(code(&out), Some(0));
    assert_eq!(
        text(&out.stdout),
        "cp a.txt a.bak\ncp 'it'\\''s' 'it'\\''s.bak'\n"
    );
    assert!(herd.json_lines(&["list", "--json"]).is_empty());
}

#[test]
fn chunks_pass_several_items_per_command() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "-n",
        "3",
        "--keep-order",
        "--",
        "echo",
        ":::",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
    ]);
    assert_eq!(code(&out), Some(0));
    assert_eq!(text(&out.stdout), "1 2 3\n4 5 6\n7\n");
}

#[test]
fn csv_columns_and_json_fields_by_name() {
    let herd = Herd::new();
    std::fs::write(herd.path("users.csv"), "id,name\n1,ann\n2,\"bob, jr\"\n").unwrap();
    std::fs::write(
        herd.path("users.jsonl"),
        "{\"id\": 1, \"name\": \"ann\"}\n{\"id\": 2, \"name\": \"bob\"}\n",
    )
    .unwrap();
    for input in ["users.csv", "users.jsonl"] {
        let out = herd.run(&[
            "run",
            "--keep-order",
            "--input",
            input,
            "--",
            "echo",
            "{id}:{name}",
        ]);
        assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
        let expected = if input.ends_with("csv") {
            "1:ann\n2:bob, jr\n"
        } else {
            "1:ann\n2:bob\n"
        };
        assert_eq!(text(&out.stdout), expected);
    }
}

#[test]
fn hostile_items_under_a_shell_are_only_text() {
    let herd = Herd::new();
    let items = [
        "$(touch pwned1)",
        "`touch pwned2`",
        "; touch pwned3",
        "a' ; touch pwned4; echo '",
        "x\" && touch pwned5 \"",
        "line\nbreak; touch pwned6",
        "| touch pwned7",
    ];
    let mut args = vec![
        "run",
        "--shell",
        "--keep-order",
        "--",
        "printf '%s|' {}",
        ":::",
    ];
    args.extend(items);
    let out = herd.run(&args);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let expected: String = items.iter().map(|i| format!("{i}|")).collect();
    assert_eq!(text(&out.stdout), expected);
    let created: Vec<_> = std::fs::read_dir(herd.work.path()).unwrap().collect();
    assert!(created.is_empty(), "no side effect: {created:?}");
}

#[test]
fn results_dir_keeps_each_tasks_output_and_exit_code() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--results",
        "out",
        "--",
        "sh",
        "-c",
        "echo said {}; exit {}",
        ":::",
        "0",
        "4",
    ]);
    assert_eq!(code(&out), Some(1));
    assert_eq!(herd.file("out/1/stdout"), "said 0\n");
    assert_eq!(herd.file("out/2/stdout"), "said 4\n");
    assert_eq!(herd.file("out/1/exit").trim(), "0");
    assert_eq!(herd.file("out/2/exit").trim(), "4");
}

#[test]
fn a_timeout_kills_the_command_and_its_grandchildren() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--timeout",
        "1s",
        "--grace",
        "200ms",
        "--",
        "sh",
        "-c",
        "sleep 100 & echo $! > {}; wait",
        ":::",
        "pid",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    let tasks = herd.json_lines(&["tasks", "last", "--json"]);
    assert_eq!(tasks[0]["reason"], "timeout");
    let pid: i32 = herd.file("pid").trim().parse().unwrap();
    until("the grandchild to die", || {
        matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        ) || is_zombie(pid)
    });
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn retry_runs_the_failed_tasks_again_and_keeps_the_rest() {
    let herd = Herd::new();
    let script = "echo {} >> runs; test {} != b || test -e fixed";
    let out = herd.run(&["run", "--", "sh", "-c", script, ":::", "a", "b", "c"]);
    assert_eq!(code(&out), Some(1));
    std::fs::write(herd.path("fixed"), "").unwrap();
    let out = herd.run(&["retry", "last"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let mut runs: Vec<String> = herd.file("runs").lines().map(String::from).collect();
    runs.sort();
    assert_eq!(runs, ["a", "b", "b", "c"], "only the failed task ran again");
    assert_eq!(herd.json(&["status", "--json"])["state"], "succeeded");
}

/// Each item's start and end markers in the file `log`.
fn markers(herd: &Herd) -> (BTreeMap<String, u32>, BTreeSet<String>) {
    let mut starts = BTreeMap::new();
    let mut ends = BTreeSet::new();
    for line in herd.file("log").lines() {
        match line.split_once(' ') {
            Some(("start", item)) => *starts.entry(item.to_string()).or_default() += 1,
            Some(("end", item)) => {
                ends.insert(item.to_string());
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    (starts, ends)
}

const SLOW: &str = "echo start {} >> log; sleep 0.3; echo end {} >> log";

fn items(n: u32) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

#[test]
fn ctrl_c_lets_running_tasks_finish_and_resume_completes_without_rerunning() {
    let herd = Herd::new();
    let items = items(20);
    let mut args = vec!["run", "-j2", "--", "sh", "-c", SLOW, ":::"];
    args.extend(items.iter().map(String::as_str));
    let child = herd.spawn(&args);
    until("a few tasks to end", || markers(&herd).1.len() >= 4);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(130), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("herd run --resume"), "{stderr}");
    let (starts, ends) = markers(&herd);
    assert_eq!(
        starts.keys().cloned().collect::<BTreeSet<_>>(),
        ends,
        "what was running finished within the grace"
    );
    assert!(ends.len() < 20, "the interrupt stopped the batch early");

    let out = herd.run(&["run", "--resume"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let (starts, ends) = markers(&herd);
    assert_eq!(ends.len(), 20);
    assert!(
        starts.values().all(|&n| n == 1),
        "no task ran twice: {starts:?}"
    );
}

#[test]
fn kill_9_of_herd_then_resume_reruns_only_what_was_in_flight() {
    let herd = Herd::new();
    let items = items(20);
    let mut args = vec!["run", "-j2", "--", "sh", "-c", SLOW, ":::"];
    args.extend(items.iter().map(String::as_str));
    let mut child = herd.spawn(&args);
    until("a few tasks to end", || markers(&herd).1.len() >= 4);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The store says what was in flight at the kill: the tasks the dead
    // herd held (running), and what it had finished (succeeded). The
    // markers cannot: the killed herd's commands are orphans now, still
    // writing them, late ones as late as the machine's load makes them.
    let tasks = herd.json_lines(&["tasks", "last", "--json"]);
    let jobs = |state: &str| -> BTreeSet<String> {
        tasks
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| t["job"].to_string())
            .collect()
    };
    let in_flight = jobs("running");
    let finished_before = jobs("succeeded");
    assert!(in_flight.len() <= 2, "-j2: {in_flight:?}");

    let started = Instant::now();
    let out = herd.run(&["run", "--resume"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the dead herd's leases (30 s) were released at once, not waited out"
    );
    let (after, ends_after) = markers(&herd);
    assert_eq!(ends_after.len(), 20);
    for (item, runs) in &after {
        if *runs > 1 {
            assert!(
                in_flight.contains(item) && *runs == 2,
                "item {item} ran {runs} times but was not in flight at the kill ({in_flight:?})"
            );
        }
    }
    for item in &finished_before {
        assert_eq!(after[item], 1, "item {item} had finished before the kill");
    }
}

#[test]
fn the_summary_and_json_outputs_keep_their_shape() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run", "--json", "--name", "shapes", "--", "sh", "-c", "exit {}", ":::", "0", "0", "2",
    ]);
    assert_eq!(code(&out), Some(1));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    insta::assert_json_snapshot!("run_json_summary", summary, {
        ".wall_seconds" => "[seconds]",
        ".attempt_ms.p50" => "[ms]",
        ".attempt_ms.p95" => "[ms]",
        ".attempt_ms.p99" => "[ms]",
        ".slowest[].seconds" => "[seconds]",
        ".slowest[].job" => "[job]",
    });
    let tasks = herd.json_lines(&["tasks", "last", "--json"]);
    insta::assert_json_snapshot!("tasks_json", tasks, {
        "[].seconds" => "[seconds]",
    });
    let status = herd.json(&["status", "last", "--json"]);
    insta::assert_json_snapshot!("status_json", status, {
        ".created_at" => "[time]",
        ".started_at" => "[time]",
        ".finished_at" => "[time]",
        ".stats.attempt_ms.p50" => "[ms]",
        ".stats.attempt_ms.p95" => "[ms]",
        ".stats.attempt_ms.p99" => "[ms]",
        ".stats.throughput" => "[rate]",
        ".stats.wall_seconds" => "[seconds]",
    });

    let out = herd.run(&["run", "--", "sh", "-c", "exit {}", ":::", "0", "5"]);
    let stderr = text(&out.stderr);
    insta::with_settings!({filters => vec![
        (r"\b\d+(\.\d+)?(ms|s)\b", "[time]"),
        (r"#\d+ \[time\]", "#[job] [time]"),
    ]}, {
        insta::assert_snapshot!("run_text_summary", stderr);
    });
}

#[test]
fn completions_are_printed_for_each_shell() {
    let herd = Herd::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = herd.run(&["completions", shell]);
        assert_eq!(code(&out), Some(0));
        assert!(text(&out.stdout).contains("resume"), "{shell}");
    }
}

#[test]
fn run_help_teaches_with_examples() {
    let herd = Herd::new();
    let out = herd.run(&["run", "--help"]);
    let help = text(&out.stdout);
    for needle in [
        "Examples:",
        "herd run --resume",
        "{/.}",
        "Exit codes:",
        "130",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
}

#[test]
fn cancel_from_another_process_stops_a_running_batch() {
    let herd = Herd::new();
    let child = herd.spawn(&[
        "run",
        "-j2",
        "--",
        "sh",
        "-c",
        "echo started >> log; sleep 100",
        ":::",
        "1",
        "2",
        "3",
    ]);
    until("two commands to start", || {
        herd.file("log").lines().count() >= 2
    });
    let out = herd.run(&["cancel", "last"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the running herd saw the cancel at once (its lease renewal is 10 s away)"
    );
    let status = herd.json(&["status", "--json"]);
    assert_eq!(status["state"], "cancelled");
    assert_eq!(status["counts"]["cancelled"], 3);
    assert_eq!(
        herd.file("log").lines().count(),
        2,
        "the third never started"
    );
}

#[test]
fn export_writes_every_task_as_json_jsonl_or_csv() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo said {}; exit {}",
        ":::",
        "0",
        "7",
    ]);
    assert_eq!(code(&out), Some(1));

    let json = herd.json(&["export", "last", "--format", "json"]);
    let tasks = json.as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1]["exit_code"], 7);
    assert_eq!(tasks[1]["stdout"], "said 7\n");
    assert_eq!(tasks[1]["items"], serde_json::json!(["7"]));

    let lines = herd.json_lines(&["export", "last", "--format", "jsonl"]);
    assert_eq!(lines, *tasks);

    let out = herd.run(&["export", "last", "--format", "csv", "-o", "out.csv"]);
    assert_eq!(code(&out), Some(0));
    let mut csv = csv::Reader::from_path(herd.path("out.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "job",
            "task",
            "state",
            "reason",
            "attempts",
            "exit_code",
            "seconds",
            "items",
            "command",
            "stdout"
        ]
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[1][2], "failed");
    assert_eq!(&rows[1][5], "7");
    assert_eq!(&rows[1][9], "said 7\n");
}

#[test]
fn a_flood_of_output_keeps_its_tail_and_its_size() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--quiet",
        "--",
        "sh",
        "-c",
        "yes {} | head -c 5000000; echo; echo last line",
        ":::",
        "y",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let logs = herd.json(&["logs", "last", "1", "--json"]);
    let attempt = &logs[0];
    assert_eq!(attempt["stdout_bytes"], 5_000_000 + 1 + 10);
    let tail = attempt["stdout"].as_str().unwrap();
    assert_eq!(tail.len(), 64 * 1024);
    assert!(
        tail.ends_with("y\ny\n\nlast line\n"),
        "{:?}",
        &tail[tail.len() - 20..]
    );
}

#[test]
fn logs_show_every_attempt_with_all() {
    let herd = Herd::new();
    let out = herd.run(&[
        "run",
        "--retries",
        "1",
        "--backoff",
        "10ms",
        "--",
        "sh",
        "-c",
        "echo attempt $HERD_ATTEMPT; test $HERD_ATTEMPT = 2",
        ":::",
        "x",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let all = herd.json(&["logs", "last", "1", "--all", "--json"]);
    let stdouts: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stdout"].as_str().unwrap())
        .collect();
    assert_eq!(stdouts, ["attempt 1\n", "attempt 2\n"]);
    let last = herd.run(&["logs", "last", "1"]);
    let last = text(&last.stdout);
    assert!(
        last.contains("attempt 2") && !last.contains("attempt 1\n"),
        "{last}"
    );
}
