use std::time::Duration;

use herd::{Error, Reason, SubmitError, Task, TaskContext, TaskError, TaskState};

use crate::common::{Log, executor, outcomes};

#[tokio::test(start_paused = true)]
async fn dependents_start_after_their_upstream_and_see_its_output() {
    let exec = executor(4);
    let log = Log::default();
    let l = log.clone();
    let tasks = vec![
        Task::new(3u64).key("sum").after(["a", "b"]),
        Task::new(1u64).key("a"),
        Task::new(2u64).key("b"),
        Task::new(10u64).key("report").after(["sum"]),
    ];
    let run = exec
        .batch()
        .submit(tasks, move |n: u64, ctx: TaskContext| {
            let l = l.clone();
            async move {
                l.push(ctx.key().unwrap().to_string());
                tokio::time::sleep(Duration::from_millis(n)).await;
                let upstream: u64 = ctx
                    .upstream::<u64>()
                    .iter()
                    .map(|u| u.output.unwrap())
                    .sum();
                Ok::<_, TaskError>(n + upstream)
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    let results: Vec<u64> = all.iter().map(|o| *o.result.as_ref().unwrap()).collect();
    // a = 1, b = 2, sum = 3 + 1 + 2 = 6, report = 10 + 6.
    assert_eq!(results, [6, 1, 2, 16]);
    let order = log.labels();
    assert_eq!(
        order[..2].iter().filter(|k| *k == "a" || *k == "b").count(),
        2
    );
    assert_eq!(order[2..], ["sum", "report"]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_skips_dependents_transitively() {
    let exec = executor(2);
    let tasks = vec![
        Task::new("fail").key("root"),
        Task::new("ok").key("child").after(["root"]),
        Task::new("ok").key("grandchild").after(["child"]),
        Task::new("ok").key("independent"),
    ];
    let run = exec
        .batch()
        .submit(tasks, |what: &'static str, _: TaskContext| async move {
            if what == "fail" {
                Err(TaskError::new("root failed"))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all[0].state(), TaskState::Failed);
    for o in &all[1..3] {
        let f = o.result.as_ref().unwrap_err();
        assert_eq!(
            (f.state, f.reason),
            (TaskState::Skipped, Some(Reason::UpstreamFailed))
        );
        assert_eq!(o.attempts, 0);
    }
    assert!(all[3].is_success());
}

#[tokio::test(start_paused = true)]
async fn a_done_rule_runs_after_failure_and_sees_how_upstream_ended() {
    let exec = executor(2);
    let tasks = vec![
        Task::new(true).key("work"),
        Task::new(false).key("cleanup").after(["work"]).when_done(),
    ];
    let run = exec
        .batch()
        .submit(tasks, |fail: bool, ctx: TaskContext| async move {
            if fail {
                return Err(TaskError::new("work failed"));
            }
            let up = ctx.upstream::<String>();
            Ok(format!(
                "cleaned up after {} ({})",
                up[0].key.as_deref().unwrap(),
                up[0].state
            ))
        })
        .await
        .unwrap();
    let all = outcomes(run).await;
    assert_eq!(all[0].state(), TaskState::Failed);
    assert_eq!(
        all[1].result.as_ref().unwrap(),
        "cleaned up after work (failed)"
    );
}

#[tokio::test(start_paused = true)]
async fn cycles_and_unknown_keys_are_rejected_before_anything_runs() {
    let exec = executor(2);
    let mut events = exec.subscribe();
    let handler = |_: (), _: TaskContext| async move {
        panic!("nothing may run");
        #[allow(unreachable_code)]
        Ok::<(), TaskError>(())
    };
    let cycle = vec![
        Task::new(()).key("a").after(["c"]),
        Task::new(()).key("b").after(["a"]),
        Task::new(()).key("c").after(["b"]),
    ];
    let err = exec.batch().submit(cycle, handler).await.err().unwrap();
    let Error::Invalid(SubmitError::Cycle { path }) = &err else {
        panic!("{err}")
    };
    assert_eq!(path.len(), 4);
    assert!(err.to_string().starts_with("dependency cycle"), "{err}");

    let unknown = vec![Task::new(()).key("a").after(["nope"])];
    let err = exec.batch().submit(unknown, handler).await.err().unwrap();
    assert!(
        matches!(err, Error::Invalid(SubmitError::UnknownDependency { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "task \"a\" depends on unknown task \"nope\": `after` must name keys of tasks in the same batch"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(events.try_recv().is_none(), "nothing was stored");
}
