use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herd::{Backoff, Executor, Jitter, Reason, RetryPolicy, TaskContext, TaskError, TaskState};
use tokio::time::Instant;

use crate::common::{DropFlag, outcomes};

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_attempt_and_fails_with_reason_timeout() {
    let exec = Executor::builder()
        .concurrency(2)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (d, f) = (dropped.clone(), finished.clone());
    let start = Instant::now();
    let run = exec
        .run([()], move |(), _: TaskContext| {
            let (d, f) = (d.clone(), f.clone());
            async move {
                let _flag = DropFlag(d);
                tokio::time::sleep(Duration::from_secs(10)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let failure = all[0].result.as_ref().unwrap_err();
    assert_eq!(
        (failure.state, failure.reason),
        (TaskState::Failed, Some(Reason::Timeout))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the handler never got past its sleep"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried_by_the_policy() {
    let exec = Executor::builder().concurrency(1).build().unwrap();
    let run = exec
        .batch()
        .timeout(Duration::from_millis(500))
        .retry(
            RetryPolicy::attempts(3)
                .with_backoff(Backoff::Fixed {
                    delay: Duration::ZERO,
                })
                .with_jitter(Jitter::None),
        )
        .run([()], |(), ctx: TaskContext| async move {
            if ctx.attempt().0 < 3 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, TaskError>(ctx.attempt().0)
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(*all[0].result.as_ref().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn timeouts_can_be_excluded_from_retries() {
    let exec = Executor::builder().concurrency(1).build().unwrap();
    let mut policy = RetryPolicy::attempts(3);
    policy.retry_timeouts = false;
    let run = exec
        .batch()
        .timeout(Duration::from_millis(500))
        .retry(policy)
        .run([()], |(), _: TaskContext| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, TaskError>(())
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all[0].attempts, 1);
}
