use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herd::{BatchState, ErrorPolicy, Reason, TaskContext, TaskError, TaskState, Threshold};

use crate::common::{DropFlag, executor, outcomes};

/// Item 0 fails after 10 ms (while item 1 runs); the others take a second.
async fn handler(i: u32, _: TaskContext) -> Result<u32, TaskError> {
    if i == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Err(TaskError::new("first failure"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(i)
}

#[tokio::test(start_paused = true)]
async fn stop_starts_nothing_new_and_lets_running_tasks_finish() {
    let exec = executor(2);
    let run = exec
        .batch()
        .error_policy(ErrorPolicy::stop())
        .run(0..10u32, handler)
        .await
        .unwrap();
    let batch = run.batch_id();
    let all = outcomes(run).await;
    assert_eq!(all[0].state(), TaskState::Failed);
    assert_eq!(
        all[1].state(),
        TaskState::Succeeded,
        "item 1 was running: it finishes"
    );
    for o in &all[2..] {
        let f = o.result.as_ref().unwrap_err();
        assert_eq!(
            (f.state, f.reason),
            (TaskState::Cancelled, Some(Reason::BatchStopped))
        );
        assert_eq!(o.attempts, 0);
    }
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn abort_cancels_running_tasks_now() {
    let exec = executor(3);
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let run = exec
        .batch()
        .error_policy(ErrorPolicy::abort())
        .run(0..10u32, move |i: u32, _: TaskContext| {
            let d = d.clone();
            async move {
                if i == 2 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return Err(TaskError::new("fails while others run"));
                }
                let _flag = DropFlag(d);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, TaskError>(i)
            }
        })
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let all = outcomes(run).await;
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "running tasks were not waited for"
    );
    assert_eq!(all[2].state(), TaskState::Failed);
    for i in [0, 1] {
        let f = all[i].result.as_ref().unwrap_err();
        assert_eq!(
            (f.state, f.reason),
            (TaskState::Cancelled, Some(Reason::BatchStopped)),
            "item {i}"
        );
        assert_eq!(all[i].attempts, 1);
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "both running futures were dropped"
    );
    assert!(
        all[3..]
            .iter()
            .all(|o| o.attempts == 0 && o.state() == TaskState::Cancelled)
    );
}

#[tokio::test(start_paused = true)]
async fn a_count_threshold_trips_at_the_nth_failure() {
    let exec = executor(1);
    let run = exec
        .batch()
        .error_policy(ErrorPolicy::stop().after(Threshold::Count(3)))
        .run(0..10u32, |i: u32, _: TaskContext| async move {
            if i.is_multiple_of(2) {
                Err(TaskError::new("even"))
            } else {
                Ok(i)
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let states: Vec<_> = all.iter().map(|o| o.state()).collect();
    use TaskState::*;
    assert_eq!(
        states,
        [
            Failed, Succeeded, Failed, Succeeded, Failed, Cancelled, Cancelled, Cancelled,
            Cancelled, Cancelled
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_percent_threshold_waits_for_enough_finished_tasks() {
    let exec = executor(1);
    let run = exec
        .batch()
        .error_policy(ErrorPolicy::stop().after(Threshold::Percent {
            percent: 50.0,
            min_finished: 4,
        }))
        .run(0..10u32, |i: u32, _: TaskContext| async move {
            // Fails 0, 1, 2: 100% after the first, but judged only from 4 on.
            if i < 3 {
                Err(TaskError::new("early"))
            } else {
                Ok(i)
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let ran = all.iter().filter(|o| o.attempts > 0).count();
    assert_eq!(
        ran, 4,
        "3 of 4 failed = 75% >= 50%: trips at the 4th finished task"
    );
}

#[tokio::test(start_paused = true)]
async fn continue_runs_everything_and_ends_partial() {
    let exec = executor(2);
    let run = exec.batch().run(0..10u32, handler).await.unwrap();
    let batch = run.batch_id();
    let all = outcomes(run).await;
    assert_eq!(all.iter().filter(|o| o.is_success()).count(), 9);
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Partial
    );
}
