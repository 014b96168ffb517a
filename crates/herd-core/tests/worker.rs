//! The worker loop over the memory store, without the library on top.

use std::sync::Arc;
use std::time::Duration;

use herd_core::scheduler::{Router, WorkerConfig, spawn_worker};
use herd_core::store::{MemoryStore, Store};
use herd_core::{BatchSpec, BatchState, Clock, Reason, SystemClock, TaskSpec, TaskState};

/// A task whose flow no runner here knows fails to start at once (it is not
/// left to its lease), and the worker goes on without spinning.
#[tokio::test]
async fn tasks_of_an_unknown_flow_fail_to_start() {
    let store = Arc::new(MemoryStore::<String, String>::retaining());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = spawn_worker(
        store.clone(),
        Arc::new(Router::new()),
        clock.clone(),
        WorkerConfig {
            slots: 2,
            ..WorkerConfig::default()
        },
    );
    let mut spec = BatchSpec::new("nobody");
    spec.concurrency = 2;
    spec.tasks = vec![
        TaskSpec::new("a".to_string()),
        TaskSpec::new("b".to_string()),
    ];
    let inserted = store.batch_insert(spec, clock.now()).await.unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = store.batch_get(inserted.batch).await.unwrap();
            if info.state.is_terminal() {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the batch ends within seconds, not at lease expiry");
    assert_eq!(ended.state, BatchState::Partial);
    assert_eq!(ended.counts.failed, 2);
    let task = store.task_get(inserted.tasks[0]).await.unwrap();
    assert_eq!(
        (task.state, task.reason),
        (TaskState::Failed, Some(Reason::StartFailed))
    );
    assert!(
        task.message
            .as_deref()
            .unwrap_or("")
            .contains("no runner for flow \"nobody\""),
        "{:?}",
        task.message
    );
    worker.shutdown().await.unwrap();
}
