//! `--results DIR` through a real worker.

use std::sync::Arc;
use std::time::Duration;

use herd_core::{Backoff, Reason, RetryPolicy, TaskState};
use herd_exec::{ResultsDir, Stream};

use crate::support::{Harness, Recorder, sh};

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn results_keep_full_output_and_the_exit_of_the_last_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let results = Arc::new(ResultsDir::new(dir.path().join("out"), rec.clone()).unwrap());
    let h = Harness::new(4, |b| b.sink(results.clone()).capture(16)).await;
    let inserted = h
        .submit(
            vec![
                sh("seq 1 10000; echo err >&2", &[]),
                sh(
                    "echo try $HERD_ATTEMPT; echo oops $HERD_ATTEMPT >&2; [ $HERD_ATTEMPT = 2 ]",
                    &[],
                ),
                sh("exit 3", &[]),
                vec!["/nonexistent/nosuch".into()],
                sh("kill -9 $$", &[]),
            ],
            |spec| {
                spec.policy.retry = RetryPolicy::attempts(2).with_backoff(Backoff::Fixed {
                    delay: Duration::from_millis(1),
                })
            },
        )
        .await;
    h.finished(inserted.batch).await;
    let job = |n: u64| results.job_dir(n);

    let seq: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        read(job(1).join("stdout")),
        seq,
        "all of it, not the 16-byte tail"
    );
    assert_eq!(read(job(1).join("stderr")), "err\n");
    assert_eq!(read(job(1).join("exit")), "0\n");
    // The inner sink heard everything too.
    assert_eq!(rec.received(inserted.tasks[0], Stream::Stdout).calls, 10000);

    // The second attempt started its files afresh.
    assert_eq!(read(job(2).join("stdout")), "try 2\n");
    assert_eq!(read(job(2).join("stderr")), "oops 2\n");
    assert_eq!(read(job(2).join("exit")), "0\n");

    assert_eq!(read(job(3).join("stdout")), "");
    assert_eq!(read(job(3).join("exit")), "3\n");
    assert_eq!(read(job(4).join("exit")), "start failed\n");
    assert_eq!(read(job(5).join("exit")), "signal 9\n");
    h.shutdown().await;
}

/// Results that cannot be written do not fail the task; a failed task's
/// message says what went wrong with them.
#[tokio::test]
async fn results_that_cannot_be_written_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let results = Arc::new(ResultsDir::new(dir.path(), Arc::new(herd_exec::Discard)).unwrap());
    // A file where job 1's and job 2's directories should go.
    std::fs::write(dir.path().join("1"), "in the way").unwrap();
    std::fs::write(dir.path().join("2"), "in the way").unwrap();
    let h = Harness::new(2, |b| b.sink(results.clone())).await;
    let inserted = h
        .submit(vec![sh("echo fine", &[]), sh("exit 3", &[])], |_| {})
        .await;
    h.finished(inserted.batch).await;
    let ok = h.task(inserted.tasks[0]).await;
    assert_eq!(ok.state, TaskState::Succeeded);
    let failed = h.task(inserted.tasks[1]).await;
    assert_eq!(failed.reason, Some(Reason::ExitCode(3)));
    let message = failed.message.unwrap();
    assert!(
        message.starts_with("exit code 3; results: cannot create "),
        "{message}"
    );
    h.shutdown().await;
}
