//! A task of a submitted set: an item with a key, dependencies, priority and cost.

use herd_core::{DependencyRule, Priority, TaskSpec};

use crate::context::AnyValue;

/// One task for [`BatchBuilder::submit`](crate::BatchBuilder::submit).
///
/// ```
/// use herd::Task;
/// let fetch = Task::new("https://example.invalid/a").key("fetch");
/// let parse = Task::new("parse").key("parse").after(["fetch"]);
/// # let _ = (fetch, parse);
/// ```
#[derive(Clone, Debug)]
pub struct Task<T> {
    item: T,
    key: Option<String>,
    after: Vec<String>,
    rule: DependencyRule,
    priority: Option<Priority>,
    cost: u32,
}

impl<T> Task<T> {
    /// A task on `item`, of cost 1, with the batch's priority and no dependencies.
    pub fn new(item: T) -> Self {
        Task {
            item,
            key: None,
            after: Vec::new(),
            rule: DependencyRule::Success,
            priority: None,
            cost: 1,
        }
    }

    /// A key, unique in the batch, for other tasks' `after`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Runs only after these tasks (by key) have succeeded.
    pub fn after<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.after.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Runs once the `after` tasks have finished, however they ended
    /// (cleanup, aggregation), instead of only after they succeeded.
    pub fn when_done(mut self) -> Self {
        self.rule = DependencyRule::Done;
        self
    }

    /// Overrides the batch's priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Slots the task takes while running (default 1).
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }
}

impl<T: Send + Sync + 'static> Task<T> {
    pub(crate) fn into_spec(self) -> TaskSpec<AnyValue> {
        TaskSpec {
            key: self.key,
            payload: std::sync::Arc::new(self.item),
            priority: self.priority,
            cost: self.cost,
            after: self.after,
            rule: self.rule,
        }
    }
}
