use std::time::Duration;

use herd::{Backoff, Jitter, Reason, RetryPolicy, TaskContext, TaskError, TaskState};

use crate::common::{Log, executor, outcomes};

fn exponential(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(max_attempts)
        .with_backoff(Backoff::Exponential {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(10),
        })
        .with_jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff_until_success() {
    let exec = executor(4);
    let log = Log::default();
    let l = log.clone();
    let run = exec
        .batch()
        .retry(exponential(4))
        .run([()], move |(), ctx: TaskContext| {
            let l = l.clone();
            async move {
                l.push(ctx.attempt().0);
                if ctx.attempt().0 < 4 {
                    return Err(TaskError::new("not yet"));
                }
                Ok(ctx.attempt().0)
            }
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    let all = outcomes(run).await;
    assert_eq!(all[0].attempts, 4);
    assert_eq!(*all[0].result.as_ref().unwrap(), 4);
    let at: Vec<_> = log.entries().into_iter().map(|(_, t)| t).collect();
    let gaps: Vec<_> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    assert_eq!(exec.stats(batch).await.unwrap().retries, 3);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_waits_at_most_the_backoff() {
    let exec = executor(1);
    let log = Log::default();
    let l = log.clone();
    let policy = RetryPolicy::attempts(6).with_backoff(Backoff::Fixed {
        delay: Duration::from_secs(1),
    });
    let run = exec
        .batch()
        .retry(policy)
        .run([()], move |(), ctx: TaskContext| {
            let l = l.clone();
            async move {
                l.push(ctx.attempt().0);
                Err::<(), _>(TaskError::new("always"))
            }
        })
        .await
        .unwrap();
    outcomes(run).await;
    let at: Vec<_> = log.entries().into_iter().map(|(_, t)| t).collect();
    assert_eq!(at.len(), 6);
    for w in at.windows(2) {
        assert!(w[1] - w[0] <= Duration::from_secs(1));
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let exec = executor(2);
    let run = exec
        .batch()
        .retry(exponential(3))
        .run([7u32], |n: u32, ctx: TaskContext| async move {
            Err::<(), _>(TaskError::new(format!(
                "item {n} failed on attempt {}",
                ctx.attempt().0
            )))
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let failure = all[0].result.as_ref().unwrap_err();
    assert_eq!(all[0].attempts, 3);
    assert_eq!(failure.state, TaskState::Failed);
    assert_eq!(failure.reason, Some(Reason::Error));
    assert_eq!(
        failure.error.as_ref().unwrap().to_string(),
        "item 7 failed on attempt 3"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let exec = executor(2);
    let run = exec
        .batch()
        .retry(exponential(5))
        .run([()], |(), _: TaskContext| async move {
            Err::<(), _>(TaskError::permanent("bad input"))
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all[0].attempts, 1);
    assert!(
        all[0]
            .result
            .as_ref()
            .unwrap_err()
            .error
            .as_ref()
            .unwrap()
            .is_permanent()
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_its_attempt_and_is_retried() {
    let exec = executor(2);
    let run = exec
        .batch()
        .retry(exponential(2))
        .run([()], |(), ctx: TaskContext| async move {
            if ctx.attempt().0 == 1 {
                panic!("boom");
            }
            Ok::<_, TaskError>("recovered")
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all[0].attempts, 2);
    assert_eq!(*all[0].result.as_ref().unwrap(), "recovered");
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_before_returning_its_future_fails_its_attempt() {
    let exec = executor(2);
    let run = exec
        .batch()
        .retry(exponential(2))
        .run([1u32, 2], |i: u32, ctx: TaskContext| {
            if i == 1 && ctx.attempt().0 == 1 {
                panic!("no future for you");
            }
            async move { Ok::<_, TaskError>(i) }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!((all[0].attempts, *all[0].result.as_ref().unwrap()), (2, 1));
    assert_eq!(*all[1].result.as_ref().unwrap(), 2, "the executor lives on");
}
