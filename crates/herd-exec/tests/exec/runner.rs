//! The runner under a real worker, with real processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_core::store::{CancelMode, Store};
use herd_core::{Backoff, Reason, RetryPolicy, TaskState};
use herd_exec::{Exit, MAX_PIECE, Stream};

use crate::support::{Harness, Recorder, gone, pids, sh, wait_gone};

#[tokio::test]
async fn exit_codes_and_messages() {
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(4, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(
            vec![
                sh("echo fine", &[]),
                sh(
                    "echo warming up >&2; echo 'no such thing' >&2; echo >&2; exit 3",
                    &[],
                ),
                sh("kill -9 $$", &[]),
                sh("exit 0", &[]),
            ],
            |_| {},
        )
        .await;
    let info = h.finished(inserted.batch).await;
    assert_eq!((info.counts.succeeded, info.counts.failed), (2, 2));
    let [ok, three, nine, zero] = inserted.tasks[..] else {
        panic!()
    };

    let t = h.task(ok).await;
    assert_eq!((t.state, t.message), (TaskState::Succeeded, None));
    assert_eq!(rec.text(ok, Stream::Stdout), "fine\n");
    let end = &rec.ended(ok)[0];
    assert_eq!(end.exit, Exit::Code(0));
    assert_eq!(end.log.exit_code, Some(0));
    assert_eq!(
        (end.log.stdout.as_slice(), end.log.stdout_total),
        (&b"fine\n"[..], 5)
    );
    assert!(!end.output_cut && !end.cancelled);

    let t = h.task(three).await;
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Failed, Some(Reason::ExitCode(3)))
    );
    assert_eq!(t.message.as_deref(), Some("exit code 3: no such thing"));
    assert_eq!(rec.ended(three)[0].log.exit_code, Some(3));

    let t = h.task(nine).await;
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Failed, Some(Reason::Signal(9)))
    );
    assert_eq!(t.message.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    let end = &rec.ended(nine)[0];
    assert_eq!((end.exit, end.log.exit_code), (Exit::Signal(9), None));

    assert_eq!(h.task(zero).await.state, TaskState::Succeeded);

    // Every task's end reached the hook, once.
    let mut ended: Vec<_> = h.ends.lock().unwrap().iter().map(|e| e.task).collect();
    ended.sort();
    assert_eq!(ended, inserted.tasks);
    h.shutdown().await;
}

#[tokio::test]
async fn start_failures_name_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("data.txt");
    std::fs::write(&not_executable, "not a program").unwrap();
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(4, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(
            vec![
                vec!["herd-no-such-program".into(), "x".into()],
                vec!["/nonexistent/nosuch".into()],
                vec![not_executable.to_str().unwrap().into()],
            ],
            // Start failures are never retried, whatever the budget.
            |spec| spec.policy.retry = RetryPolicy::attempts(3),
        )
        .await;
    h.finished(inserted.batch).await;
    let expected = [
        r#"cannot start "herd-no-such-program": No such file or directory (os error 2)"#
            .to_string(),
        r#"cannot start "/nonexistent/nosuch": No such file or directory (os error 2)"#.to_string(),
        format!(
            "cannot start {:?}: Permission denied (os error 13)",
            not_executable.to_str().unwrap()
        ),
    ];
    for (task, message) in inserted.tasks.iter().zip(expected) {
        let t = h.task(*task).await;
        assert_eq!(
            (t.state, t.reason, t.attempt.0),
            (TaskState::Failed, Some(Reason::StartFailed), 1)
        );
        assert_eq!(t.message.as_deref(), Some(message.as_str()));
        assert_eq!(rec.started(*task), 1);
        assert_eq!(rec.ended(*task)[0].exit, Exit::StartFailed);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn the_command_sees_its_identity_in_the_environment() {
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(2, |b| b.sink(rec.clone()).env("EXTRA", "extra value")).await;
    let script = r#"echo "$HERD_BATCH_ID $HERD_TASK_ID $HERD_ATTEMPT $HERD_JOB $EXTRA"; [ "$HERD_ATTEMPT" = "$1" ]"#;
    let inserted = h
        .submit(vec![sh(script, &["1"]), sh(script, &["2"])], |spec| {
            spec.policy.retry = RetryPolicy::attempts(2).with_backoff(Backoff::Fixed {
                delay: Duration::from_millis(1),
            });
        })
        .await;
    let info = h.finished(inserted.batch).await;
    assert_eq!(info.counts.succeeded, 2);
    let b = inserted.batch;
    let [first, second] = inserted.tasks[..] else {
        panic!()
    };
    assert_eq!(
        rec.text(first, Stream::Stdout),
        format!("{b} {first} 1 1 extra value\n")
    );
    // The second task fails its first attempt and succeeds its second.
    assert_eq!(
        rec.text(second, Stream::Stdout),
        format!("{b} {second} 1 2 extra value\n{b} {second} 2 2 extra value\n")
    );
    assert!(b.to_string().starts_with('b') && first.to_string().starts_with('t'));
    h.shutdown().await;
}

/// 20 MB on each stream: the totals are right, the tails hold the last
/// bytes only, no piece handed to the sink is longer than the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_only_the_tail() {
    const TOTAL: u64 = 20_000_000;
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(1, |b| b.sink(rec.clone()).capture(1000)).await;
    let inserted = h
        .submit(
            vec![sh(
                "head -c $1 /dev/zero | tr '\\0' x & yes 0123456789abcdef | head -c $1 >&2; wait",
                &[&TOTAL.to_string()],
            )],
            |_| {},
        )
        .await;
    h.finished(inserted.batch).await;
    let task = inserted.tasks[0];
    assert_eq!(h.task(task).await.state, TaskState::Succeeded);
    let log = &rec.ended(task)[0].log;
    assert_eq!((log.stdout_total, log.stderr_total), (TOTAL, TOTAL));
    assert_eq!(log.stdout, vec![b'x'; 1000]);
    let lines = "0123456789abcdef\n".repeat(TOTAL as usize / 17 + 1);
    let all = &lines.as_bytes()[..TOTAL as usize];
    assert_eq!(log.stderr, &all[all.len() - 1000..]);

    let out = rec.received(task, Stream::Stdout);
    assert_eq!(out.bytes, TOTAL);
    assert_eq!(out.longest, MAX_PIECE, "no newline: maximal pieces");
    assert_eq!(out.calls, TOTAL.div_ceil(MAX_PIECE as u64));
    let err = rec.received(task, Stream::Stderr);
    assert_eq!(err.bytes, TOTAL);
    assert_eq!(err.calls, TOTAL.div_ceil(17), "one call per line");
    assert_eq!(err.longest, 17);
    h.shutdown().await;
}

/// Two tasks flood both their streams with long lines at once: every line
/// the sink gets is one whole line of the right task and stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_stay_whole_under_concurrent_floods() {
    const LINES: u64 = 20_000;
    fn line(index: u64, stream: Stream) -> String {
        let c = match (index, stream) {
            (0, Stream::Stdout) => 'a',
            (0, Stream::Stderr) => 'b',
            (_, Stream::Stdout) => 'c',
            (_, Stream::Stderr) => 'd',
        };
        c.to_string().repeat(999)
    }
    let rec = Arc::new(Recorder::checking(|task, stream, got| {
        let mut want = line(task.index, stream).into_bytes();
        want.push(b'\n');
        got == want
    }));
    let h = Harness::new(2, |b| b.sink(rec.clone())).await;
    let script = "yes \"$1\" | head -n $3 & yes \"$2\" | head -n $3 >&2; wait";
    let n = LINES.to_string();
    let argvs = (0..2)
        .map(|i| {
            sh(
                script,
                &[&line(i, Stream::Stdout), &line(i, Stream::Stderr), &n],
            )
        })
        .collect();
    let inserted = h.submit(argvs, |_| {}).await;
    let info = h.finished(inserted.batch).await;
    assert_eq!(info.counts.succeeded, 2);
    for task in &inserted.tasks {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let r = rec.received(*task, stream);
            assert_eq!((r.calls, r.refused), (LINES, 0), "{task} {stream:?}");
            assert_eq!(r.bytes, LINES * 1000);
        }
    }
    h.shutdown().await;
}

/// Graceful cancellation of a command that obeys SIGTERM: it and its child
/// end at once, well within the grace.
#[tokio::test]
async fn graceful_cancel_sends_sigterm_to_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(1, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(
            vec![sh(
                "echo $$ > \"$1\"; sleep 1000 & echo $! >> \"$1\"; echo ready; wait",
                &[pidfile.to_str().unwrap()],
            )],
            |spec| spec.policy.grace = Duration::from_secs(20),
        )
        .await;
    let task = inserted.tasks[0];
    rec.until_line(task, "ready").await;
    let started = Instant::now();
    h.store
        .task_cancel(task, CancelMode::Graceful, h.clock.now())
        .await
        .unwrap();
    h.finished(inserted.batch).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait for the grace"
    );
    let t = h.task(task).await;
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Cancelled, Some(Reason::ByUser))
    );
    let end = &rec.ended(task)[0];
    assert_eq!(end.exit, Exit::Signal(15));
    assert!(end.cancelled);
    for pid in pids(&pidfile) {
        assert!(wait_gone(pid).await, "process {pid} survived the cancel");
    }
    h.shutdown().await;
}

/// A command (and its child) that ignore SIGTERM get SIGKILL once the grace is over.
#[tokio::test]
async fn graceful_cancel_kills_after_the_grace() {
    const GRACE: Duration = Duration::from_millis(200);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(1, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(
            vec![sh(
                // Ignored signals stay ignored across fork and exec: `sleep` ignores TERM too.
                "trap '' TERM; echo $$ > \"$1\"; sleep 1000 & echo $! >> \"$1\"; echo ready; wait; wait",
                &[pidfile.to_str().unwrap()],
            )],
            |spec| spec.policy.grace = GRACE,
        )
        .await;
    let task = inserted.tasks[0];
    rec.until_line(task, "ready").await;
    let started = Instant::now();
    h.store
        .task_cancel(task, CancelMode::Graceful, h.clock.now())
        .await
        .unwrap();
    h.finished(inserted.batch).await;
    assert!(
        started.elapsed() >= GRACE,
        "killed before the grace was over"
    );
    let t = h.task(task).await;
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Cancelled, Some(Reason::ByUser))
    );
    let end = &rec.ended(task)[0];
    assert_eq!(end.exit, Exit::Signal(9));
    for pid in pids(&pidfile) {
        assert!(wait_gone(pid).await, "process {pid} survived SIGKILL");
    }
    h.shutdown().await;
}

/// Forced cancellation drops the attempt: its guard kills the whole group.
#[tokio::test]
async fn a_dropped_attempt_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(1, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(
            vec![sh(
                "trap '' TERM; echo $$ > \"$1\"; sleep 1000 & echo $! >> \"$1\"; echo ready; wait; wait",
                &[pidfile.to_str().unwrap()],
            )],
            |spec| spec.policy.grace = Duration::from_secs(60),
        )
        .await;
    let task = inserted.tasks[0];
    rec.until_line(task, "ready").await;
    h.store
        .task_cancel(task, CancelMode::Forced, h.clock.now())
        .await
        .unwrap();
    h.finished(inserted.batch).await;
    assert_eq!(h.task(task).await.state, TaskState::Cancelled);
    let pids = pids(&pidfile);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the drop");
    }
    let end = &rec.ended(task)[0];
    assert_eq!(end.exit, Exit::Dropped);
    h.shutdown().await;
}

/// Runs `script` (which writes its pid and its child's to the file in `$1`)
/// under a 1.5 s timeout and `grace`; checks that the task failed with
/// `timeout` and that both processes are gone; returns how the runner saw it end.
async fn timed_out_group(script: &str, grace: Duration) -> Exit {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(1, |b| b.sink(rec.clone())).await;
    let inserted = h
        .submit(vec![sh(script, &[pidfile.to_str().unwrap()])], |spec| {
            // Long enough for `sh` to write both pids on a loaded machine.
            spec.policy.timeout = Some(Duration::from_millis(1500));
            spec.policy.grace = grace;
        })
        .await;
    let task = inserted.tasks[0];
    h.finished(inserted.batch).await;
    let t = h.task(task).await;
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Failed, Some(Reason::Timeout))
    );
    let pids = pids(&pidfile);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} outlived the timeout");
    }
    let exit = rec.ended(task)[0].exit;
    h.shutdown().await;
    exit
}

/// A timeout is a graceful stop: SIGTERM reaches the whole group, which
/// dies of it well within the (long) grace.
#[tokio::test]
async fn a_timeout_terminates_the_group() {
    let exit = timed_out_group(
        "echo $$ > \"$1\"; sleep 1000 & echo $! >> \"$1\"; wait",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(exit, Exit::Signal(15), "SIGTERM, not a kill");
}

/// A command that ignores SIGTERM at its timeout is killed with its whole
/// group once the grace has passed.
#[tokio::test]
async fn a_timeout_kills_what_ignores_sigterm_after_the_grace() {
    let exit = timed_out_group(
        "trap '' TERM; echo $$ > \"$1\"; sleep 1000 & echo $! >> \"$1\"; wait; wait",
        Duration::from_millis(300),
    )
    .await;
    assert!(
        matches!(exit, Exit::Signal(9) | Exit::Dropped),
        "killed after the grace: {exit:?}"
    );
}

/// A command that exits while a child it started still holds its output:
/// the attempt ends shortly after the exit, says its output may be cut, and
/// the child is left alone.
#[tokio::test]
async fn leftover_children_do_not_hold_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let h = Harness::new(2, |b| b.sink(rec.clone())).await;
    let pidfiles = [dir.path().join("ok"), dir.path().join("failed")];
    let script = "sleep 1000 & echo $! > \"$1\"; echo done; exit $2";
    let started = Instant::now();
    let inserted = h
        .submit(
            vec![
                sh(script, &[pidfiles[0].to_str().unwrap(), "0"]),
                sh(script, &[pidfiles[1].to_str().unwrap(), "4"]),
            ],
            |_| {},
        )
        .await;
    h.finished(inserted.batch).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let [ok, failed] = inserted.tasks[..] else {
        panic!()
    };
    assert_eq!(h.task(ok).await.state, TaskState::Succeeded);
    let message = h.task(failed).await.message.unwrap();
    assert!(
        message.starts_with("exit code 4; output may be cut"),
        "{message}"
    );
    for task in [ok, failed] {
        assert_eq!(rec.text(task, Stream::Stdout), "done\n");
        assert!(rec.ended(task)[0].output_cut);
    }
    for pidfile in &pidfiles {
        let pid = pids(pidfile)[0];
        assert!(!gone(pid), "a command's leftover child is not killed");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    h.shutdown().await;
}

/// A command that closes its output and runs on: the attempt ends with its
/// exit, not with its output (the exit is watched once the output ended).
#[tokio::test]
async fn a_command_that_closes_its_output_is_waited_for() {
    let h = Harness::new(1, |b| b).await;
    let script = "echo before; exec >/dev/null 2>&1; sleep 0.2; exit 3";
    let inserted = h.submit(vec![sh(script, &[])], |_| {}).await;
    h.finished(inserted.batch).await;
    let task = h.task(inserted.tasks[0]).await;
    assert_eq!(task.state, TaskState::Failed);
    let message = task.message.unwrap();
    assert!(message.starts_with("exit code 3"), "{message}");
    assert!(!message.contains("output may be cut"), "{message}");
    h.shutdown().await;
}
