use herd::{Priority, Task, TaskContext, TaskError};

use crate::common::{Log, executor, ms, outcomes};

#[tokio::test(start_paused = true)]
async fn saturated_runs_in_priority_order_fifo_within_a_priority() {
    let exec = executor(1);
    let log = Log::default();
    let l = log.clone();
    let tasks = vec![
        Task::new("low-1").priority(Priority::LOW),
        Task::new("normal-1"),
        Task::new("critical-1").priority(Priority::CRITICAL),
        Task::new("high-1").priority(Priority::HIGH),
        Task::new("normal-2"),
        Task::new("critical-2").priority(Priority::CRITICAL),
        Task::new("low-2").priority(Priority::LOW),
    ];
    let run = exec
        .batch()
        .paused()
        .submit(tasks, move |name: &'static str, _: TaskContext| {
            let l = l.clone();
            async move {
                l.push(name);
                tokio::time::sleep(ms(1)).await;
                Ok::<_, TaskError>(())
            }
        })
        .await
        .unwrap();
    run.resume().await.unwrap();
    assert_eq!(outcomes(run).await.len(), 7);
    assert_eq!(
        log.labels(),
        [
            "critical-1",
            "critical-2",
            "high-1",
            "normal-1",
            "normal-2",
            "low-1",
            "low-2"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batches_of_equal_priority_share_slots_fairly() {
    let exec = executor(1);
    let log = Log::default();
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let l = log.clone();
        let run = exec
            .batch()
            .paused()
            .submit(
                (0..4).map(|i| Task::new(format!("{name}{i}"))).collect(),
                move |item: String, _: TaskContext| {
                    let l = l.clone();
                    async move {
                        l.push(item);
                        tokio::time::sleep(ms(1)).await;
                        Ok::<_, TaskError>(())
                    }
                },
            )
            .await
            .unwrap();
        runs.push(run);
    }
    for run in &runs {
        run.resume().await.unwrap();
    }
    for run in runs {
        outcomes(run).await;
    }
    assert_eq!(
        log.labels(),
        ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_higher_priority_batch_goes_first() {
    let exec = executor(1);
    let log = Log::default();
    let mut runs = Vec::new();
    for (name, priority) in [("low", Priority::LOW), ("high", Priority::HIGH)] {
        let l = log.clone();
        runs.push(
            exec.batch()
                .paused()
                .priority(priority)
                .submit(
                    vec![Task::new(name), Task::new(name)],
                    move |item: &'static str, _: TaskContext| {
                        let l = l.clone();
                        async move {
                            l.push(item);
                            Ok::<_, TaskError>(())
                        }
                    },
                )
                .await
                .unwrap(),
        );
    }
    for run in &runs {
        run.resume().await.unwrap();
    }
    for run in runs {
        outcomes(run).await;
    }
    assert_eq!(log.labels(), ["high", "high", "low", "low"]);
}
