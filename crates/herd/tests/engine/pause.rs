use std::time::Duration;

use herd::{BatchState, TaskContext, TaskError};

use crate::common::{Log, executor, outcomes};

#[tokio::test(start_paused = true)]
async fn a_paused_batch_starts_nothing_until_resumed() {
    let exec = executor(2);
    let log = Log::default();
    let l = log.clone();
    let run = exec
        .batch()
        .paused()
        .run(0..4u32, move |i: u32, _: TaskContext| {
            let l = l.clone();
            async move {
                l.push(i);
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(log.labels().is_empty());
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Paused
    );
    run.resume().await.unwrap();
    assert_eq!(outcomes(run).await.len(), 4);
    assert_eq!(log.labels().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn pausing_lets_running_tasks_finish_and_holds_the_rest() {
    let exec = executor(2);
    let log = Log::default();
    let l = log.clone();
    let run = exec
        .run(0..6u32, move |i: u32, _: TaskContext| {
            let l = l.clone();
            async move {
                l.push(i);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.pause().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        log.labels(),
        [0, 1],
        "only the two running when paused ever started"
    );
    let info = exec.batch_info(batch).await.unwrap();
    assert_eq!((info.state, info.counts.succeeded), (BatchState::Paused, 2));
    run.resume().await.unwrap();
    assert_eq!(outcomes(run).await.len(), 6);
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Succeeded
    );
}
