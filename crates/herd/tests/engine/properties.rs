//! Invariants over random task sets, random failures and random timing,
//! checked against the event log of each run (one event per transition):
//!
//! - running tasks never exceed the limit (weighted by cost);
//! - every task ends in exactly one terminal state;
//! - attempts never exceed the retry policy;
//! - a dependent never starts before its dependencies satisfy its rule;
//! - a lower-priority task never starts while a higher-priority task of the
//!   same batch is queued;
//!
//! and each task ends as its script says it must.

use std::collections::HashMap;
use std::time::Duration;

use herd::{
    Backoff, EventKind, Executor, Priority, RetryPolicy, Task, TaskContext, TaskError, TaskState,
};
use proptest::prelude::*;

use crate::common::{Gauge, outcomes};

#[derive(Clone, Debug)]
struct Script {
    priority: Priority,
    cost: u32,
    /// Each attempt takes this long.
    millis: u64,
    /// Attempts 1..=fail_first fail.
    fail_first: u32,
    permanent: bool,
    after: Vec<usize>,
    when_done: bool,
}

#[derive(Clone, Debug)]
struct Case {
    workers: usize,
    slots: u32,
    concurrency: u32,
    max_attempts: u32,
    timeout: Option<u64>,
    tasks: Vec<Script>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1u32..=5,
        1u32..=5,
        1u32..=3,
        prop_oneof![Just(None), Just(Some(25u64)), Just(Some(45))],
        1usize..=24,
    )
        .prop_flat_map(|(workers, slots, concurrency, max_attempts, timeout, n)| {
            let limit = slots.min(concurrency);
            let task = (
                prop_oneof![
                    Just(Priority::LOW),
                    Just(Priority::NORMAL),
                    Just(Priority::HIGH),
                    Just(Priority::CRITICAL)
                ],
                1..=limit,
                (0u64..=5).prop_map(|t| t * 10),
                0u32..=3,
                proptest::bool::weighted(0.2),
                proptest::collection::vec(any::<u16>(), 0..=2),
                proptest::bool::weighted(0.3),
            );
            (
                Just((workers, slots, concurrency, max_attempts, timeout)),
                proptest::collection::vec(task, n),
            )
        })
        .prop_map(
            |((workers, slots, concurrency, max_attempts, timeout), raw)| Case {
                workers,
                slots,
                concurrency,
                max_attempts,
                timeout,
                tasks: raw
                    .into_iter()
                    .enumerate()
                    .map(
                        |(i, (priority, cost, millis, fail_first, permanent, deps, when_done))| {
                            let mut after: Vec<usize> = if i == 0 {
                                Vec::new()
                            } else {
                                deps.iter().map(|d| *d as usize % i).collect()
                            };
                            after.sort_unstable();
                            after.dedup();
                            Script {
                                priority,
                                cost,
                                millis,
                                fail_first,
                                permanent,
                                after,
                                when_done,
                            }
                        },
                    )
                    .collect(),
            },
        )
}

/// Whether a task's own script lets it succeed (its upstream permitting).
fn can_succeed(case: &Case, s: &Script) -> bool {
    let times_out = case.timeout.is_some_and(|t| s.millis >= t);
    let fails_out = s.fail_first >= case.max_attempts || (s.permanent && s.fail_first > 0);
    !times_out && !fails_out
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let exec = Executor::builder()
            .concurrency(case.slots as usize)
            .workers(case.workers)
            .build()
            .unwrap();
        let mut events = exec.subscribe();
        let gauge = Gauge::default();
        let tasks: Vec<Task<usize>> = case
            .tasks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut t = Task::new(i)
                    .key(format!("t{i}"))
                    .priority(s.priority)
                    .cost(s.cost);
                t = t.after(s.after.iter().map(|u| format!("t{u}")));
                if s.when_done { t.when_done() } else { t }
            })
            .collect();
        let scripts = case.tasks.clone();
        let g = gauge.clone();
        let mut batch = exec.batch().concurrency(case.concurrency as usize).retry(
            RetryPolicy::attempts(case.max_attempts).with_backoff(Backoff::Fixed {
                delay: Duration::from_millis(7),
            }),
        );
        if let Some(t) = case.timeout {
            batch = batch.timeout(Duration::from_millis(t));
        }
        let run = batch
            .submit(tasks, move |i: usize, ctx: TaskContext| {
                let s = scripts[i].clone();
                let g = g.clone();
                async move {
                    let _in = g.enter(s.cost as usize);
                    tokio::time::sleep(Duration::from_millis(s.millis)).await;
                    if ctx.attempt().0 <= s.fail_first {
                        return Err(if s.permanent {
                            TaskError::permanent("scripted")
                        } else {
                            TaskError::new("scripted")
                        });
                    }
                    Ok(i)
                }
            })
            .await
            .unwrap();
        let all = outcomes(run).await;

        let n = case.tasks.len();
        let limit = case.slots.min(case.concurrency);
        prop_assert_eq!(all.len(), n, "one outcome per task");
        prop_assert!(
            gauge.max() as u32 <= limit,
            "handlers ran {} > {}",
            gauge.max(),
            limit
        );

        let mut state: Vec<Option<TaskState>> = vec![None; n];
        let mut terminal = vec![0u32; n];
        let mut running_cost = 0u32;
        while let Some(event) = events.try_recv() {
            let event = event.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let EventKind::Task {
                index,
                to,
                attempt,
                from,
                ..
            } = event.kind
            else {
                continue;
            };
            let i = index as usize;
            let s = &case.tasks[i];
            prop_assert_eq!(state[i], from, "events of task {} follow each other", i);
            if from == Some(TaskState::Running) {
                running_cost -= s.cost;
            }
            if to == TaskState::Running {
                running_cost += s.cost;
                prop_assert!(
                    running_cost <= limit,
                    "running cost {} > {}",
                    running_cost,
                    limit
                );
                prop_assert!(
                    attempt.0 <= case.max_attempts,
                    "attempt {} > {}",
                    attempt.0,
                    case.max_attempts
                );
                for &u in &s.after {
                    let up = state[u];
                    prop_assert!(
                        up.is_some_and(|u| u.is_terminal()),
                        "t{} started before upstream t{} ended",
                        i,
                        u
                    );
                    if !s.when_done {
                        prop_assert_eq!(
                            up,
                            Some(TaskState::Succeeded),
                            "t{} started though t{} did not succeed",
                            i,
                            u
                        );
                    }
                }
                for (j, other) in case.tasks.iter().enumerate() {
                    prop_assert!(
                        !(state[j] == Some(TaskState::Queued) && other.priority > s.priority),
                        "t{} ({}) started while t{} ({}) was queued",
                        i,
                        s.priority,
                        j,
                        other.priority
                    );
                }
            }
            if to.is_terminal() {
                terminal[i] += 1;
            }
            state[i] = Some(to);
        }
        prop_assert!(
            terminal.iter().all(|&t| t == 1),
            "terminal events per task: {:?}",
            terminal
        );

        // Each task ends as its script and its upstream dictate.
        let mut expected: HashMap<usize, TaskState> = HashMap::new();
        for (i, s) in case.tasks.iter().enumerate() {
            let upstream_ok =
                s.when_done || s.after.iter().all(|u| expected[u] == TaskState::Succeeded);
            let end = if !upstream_ok {
                TaskState::Skipped
            } else if can_succeed(&case, s) {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            };
            expected.insert(i, end);
        }
        for o in &all {
            let i = o.index as usize;
            prop_assert_eq!(
                o.state(),
                expected[&i],
                "t{} ended {:?}",
                i,
                o.result.as_ref().err()
            );
            prop_assert_eq!(Some(o.state()), state[i]);
            prop_assert!(o.attempts <= case.max_attempts);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn scheduling_invariants_hold(case in case()) {
        check(case)?;
    }
}
