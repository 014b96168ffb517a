//! What a submitter hands to a store: a batch, its policies and its tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::error_policy::ErrorPolicy;
use super::ids::Timestamp;
use super::invalid::InvalidField;
use super::priority::Priority;
use super::retry::RetryPolicy;

/// When a dependent task may run, given how its upstream tasks ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyRule {
    /// Only if every upstream task succeeded; otherwise it is skipped.
    #[default]
    Success,
    /// Once every upstream task has finished, whatever happened (cleanup, aggregation).
    Done,
}

/// One task of a batch, as submitted.
#[derive(Clone, Debug)]
pub struct TaskSpec<P> {
    /// A name unique within the batch, used by `after` of other tasks.
    pub key: Option<String>,
    /// What the task works on.
    pub payload: P,
    /// Overrides the batch priority for this task.
    pub priority: Option<Priority>,
    /// Slots the task occupies while running; at least 1.
    pub cost: u32,
    /// Keys of the tasks this one waits for.
    pub after: Vec<String>,
    /// How the upstream tasks must have ended.
    pub rule: DependencyRule,
}

impl<P> TaskSpec<P> {
    /// A task of cost 1 with no key and no dependencies.
    pub fn new(payload: P) -> Self {
        TaskSpec {
            key: None,
            payload,
            priority: None,
            cost: 1,
            after: Vec::new(),
            rule: DependencyRule::Success,
        }
    }
}

/// The policies of a batch, shared by all its tasks and carried with every claim.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchPolicy {
    /// The flow (registered handler) that runs the batch's tasks.
    pub flow: Arc<str>,
    /// Retry policy for every task.
    pub retry: RetryPolicy,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// After this instant, remaining tasks are cancelled with reason `deadline`.
    pub deadline: Option<Timestamp>,
    /// Grace given to a cancelled or timed-out process before it is killed.
    pub grace: Duration,
    /// What the face that submitted the batch needs to run it again (`herd
    /// run`'s command line, a flow's parameters), stored with the batch. The
    /// scheduler never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// A batch as submitted: all of it is stored, or none of it.
#[derive(Clone, Debug)]
pub struct BatchSpec<P> {
    /// A name for people.
    pub name: Option<String>,
    /// Submitting twice with the same key returns the first batch.
    pub idempotency_key: Option<String>,
    /// Default priority of its tasks; also ranks the batch against others.
    pub priority: Priority,
    /// Cost units of this batch that may run at once; at least 1.
    pub concurrency: u32,
    /// What every task does on failure, timeout and deadline.
    pub policy: BatchPolicy,
    /// What the batch does when tasks fail.
    pub error_policy: ErrorPolicy,
    /// Stored paused: nothing starts until it is resumed.
    pub paused: bool,
    /// More tasks will be appended (`task_append`) until the batch is sealed.
    pub open: bool,
    /// The tasks, in submission order.
    pub tasks: Vec<TaskSpec<P>>,
}

impl<P> BatchSpec<P> {
    /// An empty, closed batch running `flow` with default policies.
    pub fn new(flow: impl Into<Arc<str>>) -> Self {
        BatchSpec {
            name: None,
            idempotency_key: None,
            priority: Priority::NORMAL,
            concurrency: 1,
            policy: BatchPolicy {
                flow: flow.into(),
                retry: RetryPolicy::none(),
                timeout: None,
                deadline: None,
                grace: Duration::from_secs(5),
                meta: None,
            },
            error_policy: ErrorPolicy::CONTINUE,
            paused: false,
            open: false,
            tasks: Vec::new(),
        }
    }

    /// Shuffles the tasks (reproducibly for a given seed) and keeps at most
    /// `max_records` of them. Applied by submitters before validation, so a
    /// dependency cut away by `max_records` is reported as unknown.
    pub fn select(&mut self, shuffle_seed: Option<u64>, max_records: Option<usize>) {
        if let Some(seed) = shuffle_seed {
            shuffle_seeded(&mut self.tasks, seed);
        }
        if let Some(max) = max_records {
            self.tasks.truncate(max);
        }
    }

    /// Checks every field and resolves dependencies to task positions.
    ///
    /// `slots` is the capacity of the worker that will run the batch, if known:
    /// a task costing more than it could never start.
    pub fn validate(&self, slots: Option<u32>) -> Result<Vec<Vec<u32>>, SubmitError> {
        if self.concurrency == 0 {
            return Err(InvalidField::new("concurrency", 0, "must be at least 1").into());
        }
        self.policy.retry.validate()?;
        self.error_policy.validate()?;
        if self.policy.timeout == Some(Duration::ZERO) {
            return Err(InvalidField::new("timeout", "0s", "must be longer than zero").into());
        }
        let limit = slots.map_or(self.concurrency, |s| s.min(self.concurrency));
        for task in &self.tasks {
            if task.cost == 0 || task.cost > limit {
                return Err(InvalidField::new(
                    "cost",
                    task.cost,
                    format!(
                        "must be between 1 and the concurrency ({limit}) of task {}",
                        task.key.as_deref().unwrap_or("without key")
                    ),
                )
                .into());
            }
            if self.open && !task.after.is_empty() {
                return Err(SubmitError::AfterInOpenBatch);
            }
        }
        resolve_dependencies(&self.tasks)
    }
}

/// Shuffles `items` in an order that depends only on `seed` (and the length):
/// the same seed gives the same order on every run and machine.
pub fn shuffle_seeded<T>(items: &mut [T], seed: u64) {
    fastrand::Rng::with_seed(seed).shuffle(items);
}

/// A batch that cannot be accepted. Nothing of it was stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// A field has a value that cannot work.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Two tasks share a key.
    #[error("duplicate task key {0:?}: keys must be unique within a batch")]
    DuplicateKey(String),
    /// `after` names a task that is not in the batch.
    #[error(
        "task {task:?} depends on unknown task {after:?}: `after` must name keys of tasks in the same batch"
    )]
    UnknownDependency {
        /// The dependent task.
        task: String,
        /// The missing key.
        after: String,
    },
    /// The dependencies loop.
    #[error("dependency cycle {}: remove one of these `after` links", path.join(" -> "))]
    Cycle {
        /// The tasks of the cycle, the first repeated at the end.
        path: Vec<String>,
    },
    /// Tasks appended to an open batch cannot have dependencies.
    #[error(
        "tasks of an open (streamed) batch cannot have `after`: submit the whole batch at once"
    )]
    AfterInOpenBatch,
}

fn task_name<P>(tasks: &[TaskSpec<P>], index: usize) -> String {
    tasks[index]
        .key
        .clone()
        .unwrap_or_else(|| format!("#{}", index + 1))
}

/// Resolves `after` keys to positions and rejects unknown keys and cycles.
fn resolve_dependencies<P>(tasks: &[TaskSpec<P>]) -> Result<Vec<Vec<u32>>, SubmitError> {
    let mut by_key = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        if let Some(key) = &task.key
            && by_key.insert(key.as_str(), i as u32).is_some()
        {
            return Err(SubmitError::DuplicateKey(key.clone()));
        }
    }
    let mut upstream = Vec::with_capacity(tasks.len());
    let mut any = false;
    for (i, task) in tasks.iter().enumerate() {
        let mut ups = Vec::with_capacity(task.after.len());
        for key in &task.after {
            let Some(&u) = by_key.get(key.as_str()) else {
                return Err(SubmitError::UnknownDependency {
                    task: task_name(tasks, i),
                    after: key.clone(),
                });
            };
            if !ups.contains(&u) {
                ups.push(u);
            }
        }
        any |= !ups.is_empty();
        upstream.push(ups);
    }
    if any && let Some(cycle) = find_cycle(&upstream) {
        return Err(SubmitError::Cycle {
            path: cycle.into_iter().map(|i| task_name(tasks, i)).collect(),
        });
    }
    Ok(upstream)
}

/// A cycle in the graph given by upstream lists, as positions with the first
/// repeated at the end; `None` if the graph is acyclic.
pub fn find_cycle(upstream: &[Vec<u32>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; upstream.len()];
    let mut path: Vec<usize> = Vec::new();
    for start in 0..upstream.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next edge to follow).
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        path.push(start);
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = upstream[node].get(*edge) {
                *edge += 1;
                let next = next as usize;
                match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::Open;
                        path.push(next);
                        stack.push((next, 0));
                    }
                    Mark::Open => {
                        let from = path.iter().position(|&n| n == next).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].to_vec();
                        cycle.reverse(); // edges point upstream; print in run order
                        cycle.push(cycle[0]);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: &str, after: &[&str]) -> TaskSpec<()> {
        TaskSpec {
            key: Some(key.into()),
            after: after.iter().map(|s| s.to_string()).collect(),
            ..TaskSpec::new(())
        }
    }

    fn batch(tasks: Vec<TaskSpec<()>>) -> BatchSpec<()> {
        BatchSpec {
            concurrency: 4,
            tasks,
            ..BatchSpec::new("test")
        }
    }

    #[test]
    fn resolves_dependencies_to_positions() {
        let b = batch(vec![
            task("a", &[]),
            task("b", &["a"]),
            task("c", &["a", "b", "a"]),
        ]);
        assert_eq!(b.validate(None).unwrap(), vec![vec![], vec![0], vec![0, 1]]);
    }

    #[test]
    fn rejects_unknown_dependency() {
        let b = batch(vec![task("a", &[]), task("b", &["nope"])]);
        assert_eq!(
            b.validate(None),
            Err(SubmitError::UnknownDependency {
                task: "b".into(),
                after: "nope".into()
            })
        );
    }

    #[test]
    fn rejects_cycles_and_names_them() {
        let b = batch(vec![
            task("a", &["c"]),
            task("b", &["a"]),
            task("c", &["b"]),
            task("d", &[]),
        ]);
        let Err(SubmitError::Cycle { path }) = b.validate(None) else {
            panic!("cycle not found");
        };
        assert_eq!(path.len(), 4);
        assert_eq!(path.first(), path.last());
        let err = SubmitError::Cycle { path }.to_string();
        assert!(err.contains("dependency cycle"), "{err}");
        let selfloop = batch(vec![task("a", &["a"])]);
        assert!(matches!(
            selfloop.validate(None),
            Err(SubmitError::Cycle { .. })
        ));
    }

    #[test]
    fn rejects_duplicate_keys() {
        let b = batch(vec![task("a", &[]), task("a", &[])]);
        assert_eq!(b.validate(None), Err(SubmitError::DuplicateKey("a".into())));
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let mut b = batch(vec![task("a", &[])]);
        b.concurrency = 0;
        let Err(SubmitError::Invalid(e)) = b.validate(None) else {
            panic!()
        };
        assert_eq!(e.field, "concurrency");

        let mut b = batch(vec![TaskSpec {
            cost: 5,
            ..task("heavy", &[])
        }]);
        let Err(SubmitError::Invalid(e)) = b.validate(None) else {
            panic!()
        };
        assert_eq!((e.field, e.value.as_str()), ("cost", "5"));
        b.concurrency = 8;
        assert!(b.validate(None).is_ok());
        assert!(b.validate(Some(4)).is_err(), "worker has only 4 slots");

        let mut b = batch(vec![]);
        b.policy.retry.max_attempts = 0;
        assert!(b.validate(None).is_err());
    }

    #[test]
    fn select_shuffles_reproducibly_and_truncates() {
        let make = || BatchSpec {
            tasks: (0..20).map(TaskSpec::new).collect(),
            ..BatchSpec::new("f")
        };
        let (mut a, mut b, mut c) = (make(), make(), make());
        a.select(Some(7), None);
        b.select(Some(7), None);
        c.select(Some(8), Some(5));
        let order = |s: &BatchSpec<i32>| s.tasks.iter().map(|t| t.payload).collect::<Vec<_>>();
        assert_eq!(order(&a), order(&b));
        assert_ne!(order(&a), (0..20).collect::<Vec<_>>());
        assert_eq!(c.tasks.len(), 5);
    }
}
