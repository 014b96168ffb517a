use std::time::Duration;

use herd::{BatchState, Reason, TaskContext, TaskError, TaskState};
use tokio::time::Instant;

use crate::common::{executor, outcomes};

#[tokio::test(start_paused = true)]
async fn a_deadline_cancels_what_remains_and_fails_the_batch() {
    let exec = executor(1);
    let start = Instant::now();
    let run = exec
        .batch()
        .deadline(Duration::from_secs(5))
        .run(0..10u32, |_: u32, _: TaskContext| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, TaskError>(())
        })
        .await
        .unwrap();
    let batch = run.batch_id();
    let all = outcomes(run).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let states: Vec<_> = all.iter().map(|o| o.state()).collect();
    assert_eq!(states[..2], [TaskState::Succeeded, TaskState::Succeeded]);
    for o in &all[2..] {
        let failure = o.result.as_ref().unwrap_err();
        assert_eq!(
            (failure.state, failure.reason),
            (TaskState::Cancelled, Some(Reason::Deadline)),
            "item {}",
            o.index
        );
    }
    assert_eq!(all[2].attempts, 1, "the running one was cut off");
    assert_eq!(all[3].attempts, 0, "the rest never started");
    assert_eq!(
        exec.batch_info(batch).await.unwrap().state,
        BatchState::Failed
    );
}
