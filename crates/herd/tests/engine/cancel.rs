use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herd::{BatchState, CancelMode, Reason, TaskContext, TaskError, TaskState};

use crate::common::{DropFlag, executor, outcomes, waits_a_minute};

#[tokio::test(start_paused = true)]
async fn graceful_cancel_signals_running_tasks_and_cancels_the_rest() {
    let exec = executor(2);
    let run = exec
        .run(0..6u32, |i: u32, ctx: TaskContext| async move {
            tokio::select! {
                _ = ctx.cancelled() => Err(TaskError::new(format!("item {i} wound down"))),
                _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(i),
            }
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.cancel(CancelMode::Graceful).await.unwrap();
    let all = outcomes(run).await;
    assert_eq!(tokio::time::Instant::now().elapsed(), Duration::ZERO);
    for o in &all {
        let f = o.result.as_ref().unwrap_err();
        assert_eq!(
            (f.state, f.reason),
            (TaskState::Cancelled, Some(Reason::ByUser)),
            "item {}",
            o.index
        );
    }
    assert_eq!(all[0].attempts, 1);
    assert_eq!(
        all[0]
            .result
            .as_ref()
            .unwrap_err()
            .error
            .as_ref()
            .unwrap()
            .to_string(),
        "item 0 wound down",
        "the handler saw its token and returned"
    );
    assert_eq!(all[5].attempts, 0);
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_that_finishes_despite_graceful_cancel_succeeds() {
    let exec = executor(1);
    let run = exec
        .run([1u32], |i: u32, ctx: TaskContext| async move {
            ctx.cancelled().await;
            Ok::<_, TaskError>(i) // finished its work anyway
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    run.cancel(CancelMode::Graceful).await.unwrap();
    let all = outcomes(run).await;
    assert_eq!(*all[0].result.as_ref().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn forced_cancel_drops_running_futures() {
    let exec = executor(2);
    let dropped = Arc::new(AtomicUsize::new(0));
    let run = exec.run(0..4u32, waits_a_minute(&dropped)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.cancel(CancelMode::Forced).await.unwrap();
    let all = outcomes(run).await;
    assert!(all.iter().all(|o| o.state() == TaskState::Cancelled));
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelling_one_task_leaves_the_others() {
    let exec = executor(4);
    let ids = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let seen = ids.clone();
    let run = exec
        .run(0..3u32, move |i: u32, ctx: TaskContext| {
            seen.lock().unwrap().insert(i, ctx.task_id());
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, TaskError>(i)
            }
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let victim = ids.lock().unwrap()[&1];
    exec.cancel_task(victim, CancelMode::Forced).await.unwrap();
    let all = outcomes(run).await;
    let f = all[1].result.as_ref().unwrap_err();
    assert_eq!(
        (f.state, f.reason),
        (TaskState::Cancelled, Some(Reason::ByUser))
    );
    assert_eq!(all[1].task, victim);
    assert!(all[0].is_success() && all[2].is_success());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_cancels_its_batch() {
    let exec = executor(2);
    let dropped = Arc::new(AtomicUsize::new(0));
    let run = exec.run(0..10u32, waits_a_minute(&dropped)).await.unwrap();
    let batch = run.batch_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(run);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
    let info = exec.batch_info(batch).await.unwrap();
    assert_eq!(info.state, BatchState::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn spawned_attempts_are_cancelled_and_timed_out_like_inline_ones() {
    let exec = herd::Executor::builder()
        .concurrency(4)
        .spawn_tasks(true)
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let run = exec
        .batch()
        .timeout(Duration::from_secs(5))
        .run(0..4u32, move |i: u32, _: TaskContext| {
            let d = d.clone();
            async move {
                let _flag = DropFlag(d);
                if i == 0 {
                    return Ok(i);
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, TaskError>(i)
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert!(all[0].is_success());
    for o in &all[1..] {
        let f = o.result.as_ref().unwrap_err();
        assert_eq!(
            (f.state, f.reason),
            (TaskState::Failed, Some(Reason::Timeout))
        );
    }
    // The spawned tasks were aborted, not left running: every future was dropped.
    tokio::task::yield_now().await;
    assert_eq!(dropped.load(Ordering::SeqCst), 4);

    let run = exec.run(0..2u32, waits_a_minute(&dropped)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.cancel(CancelMode::Forced).await.unwrap();
    let all = outcomes(run).await;
    assert!(all.iter().all(|o| o.state() == TaskState::Cancelled));
    tokio::task::yield_now().await;
    assert_eq!(dropped.load(Ordering::SeqCst), 6);
}
