//! Creating a batch: the request's fields (JSON, or query parameters with an
//! NDJSON body of records), merged over its flow's defaults, checked field by
//! field and turned into a batch of command tasks. Nothing is stored unless
//! every field is good.

use std::time::Duration;

use herd_core::{
    BatchSpec, Clock, DependencyRule, OnFailure, Priority, SizeClass, SystemClock, TaskSpec,
    shuffle_seeded,
};
use herd_exec::{CommandTask, Item, Template};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ServerConfig;
use crate::error::ApiError;

/// The flow every batch a server creates runs under: the server's worker
/// runs only these (`herd run` batches have a flow of their own).
pub const FLOW: &str = "serve";

/// A command: its words, or one line split at whitespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CommandIn {
    /// `["convert", "{}", "{.}.png"]`.
    Words(Vec<String>),
    /// `"convert {} {.}.png"`.
    Line(String),
}

/// A number or its text: `3`, `"high"`, `"5%"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NumberOrText {
    /// A number.
    Number(i64),
    /// A text.
    Text(String),
}

impl std::fmt::Display for NumberOrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberOrText::Number(n) => write!(f, "{n}"),
            NumberOrText::Text(t) => f.write_str(t),
        }
    }
}

/// Retries: a count of attempts after the first, or with a backoff.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RetryIn {
    /// `2`: two more attempts, backoff 1s doubling to 60s.
    Count(u32),
    /// `{"retries": 2, "backoff": "1s,30s"}`.
    Policy {
        /// Attempts after the first.
        retries: u32,
        /// `BASE[,MAX]`, exponential.
        #[serde(default)]
        backoff: Option<String>,
    },
}

/// `true` (a random order) or a seed (the same order every time).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ShuffleIn {
    /// Shuffle, or not.
    Yes(bool),
    /// Shuffle with this seed.
    Seed(u64),
}

/// One task given explicitly, with dependencies.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// A name unique in the batch, for other tasks' `after`.
    pub key: Option<String>,
    /// The record its command runs on.
    #[schema(value_type = Option<Object>)]
    pub record: Option<Value>,
    /// Keys of the tasks it waits for.
    #[serde(default)]
    pub after: Vec<String>,
    /// `success` (run only if they all succeeded) or `done` (run anyway).
    #[schema(value_type = Option<String>)]
    pub rule: Option<DependencyRule>,
    /// Its priority, over the batch's.
    pub priority: Option<NumberOrText>,
    /// Slots it takes.
    pub cost: Option<u32>,
}

/// `POST /api/batches`, and the defaults of a flow in `herd.toml`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// A name for people.
    pub name: Option<String>,
    /// A flow of the server's `herd.toml`.
    pub flow: Option<String>,
    /// An inline command template (without a flow).
    pub command: Option<CommandIn>,
    /// Run the command through `sh -c` (records are quoted).
    pub shell: Option<bool>,
    /// The records: strings (`{}`) or objects (`{field}`); a task per chunk.
    #[schema(value_type = Option<Vec<Object>>)]
    pub records: Option<Vec<Value>>,
    /// Explicit tasks, with `after` (instead of records).
    pub tasks: Option<Vec<TaskRequest>>,
    /// Fields every record has (a record's own fields win).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Tasks at once.
    pub concurrency: Option<u32>,
    /// `low`, `normal`, `high`, `critical` or a number.
    pub priority: Option<NumberOrText>,
    /// Retries after a failure.
    pub retry: Option<RetryIn>,
    /// Per-attempt timeout, like `30s`.
    pub timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL, like `5s`.
    pub grace: Option<String>,
    /// The batch's deadline, from now, like `1h`.
    pub deadline: Option<String>,
    /// `continue`, `stop` or `abort`.
    pub error_policy: Option<String>,
    /// Failures that trip the error policy: a count or a share (`5%`).
    pub max_failures: Option<NumberOrText>,
    /// Run the records in random order (`true`) or a seeded one.
    pub shuffle: Option<ShuffleIn>,
    /// Run at most this many records (after shuffling).
    pub max_records: Option<u64>,
    /// Records per task.
    pub chunk_size: Option<u32>,
    /// `simple` (50 a chunk), `moderate` (20), `complex` (10), `very_complex` (5).
    pub size_class: Option<String>,
    /// Store it paused.
    pub paused: Option<bool>,
    /// Creating again with the same key returns the first batch.
    pub idempotency_key: Option<String>,
}

impl BatchRequest {
    /// This request over a flow's defaults: its own fields win, parameters merge.
    fn over(self, flow: &BatchRequest) -> BatchRequest {
        let flow = flow.clone();
        let parameters = match (flow.parameters, self.parameters) {
            (Some(mut base), Some(own)) => {
                base.extend(own);
                Some(base)
            }
            (base, own) => own.or(base),
        };
        BatchRequest {
            name: self.name.or(flow.name),
            flow: self.flow,
            command: flow.command,
            shell: flow.shell,
            records: self.records,
            tasks: self.tasks,
            parameters,
            concurrency: self.concurrency.or(flow.concurrency),
            priority: self.priority.or(flow.priority),
            retry: self.retry.or(flow.retry),
            timeout: self.timeout.or(flow.timeout),
            grace: self.grace.or(flow.grace),
            deadline: self.deadline.or(flow.deadline),
            error_policy: self.error_policy.or(flow.error_policy),
            max_failures: self.max_failures.or(flow.max_failures),
            shuffle: self.shuffle.or(flow.shuffle),
            max_records: self.max_records.or(flow.max_records),
            chunk_size: self.chunk_size.or(flow.chunk_size),
            size_class: self.size_class.or(flow.size_class),
            paused: self.paused.or(flow.paused),
            idempotency_key: self.idempotency_key,
        }
    }
}

/// A checked batch, ready to store.
#[derive(Debug)]
pub struct Plan {
    /// The batch.
    pub spec: BatchSpec<CommandTask>,
}

fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    herd_exec::parse_duration(text).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// Checks a flow of `herd.toml`: its command and every default.
pub fn plan_flow(name: &str, flow: &BatchRequest, config: &ServerConfig) -> Result<(), ApiError> {
    for (set, field) in [
        (flow.flow.is_some(), "flow"),
        (flow.records.is_some(), "records"),
        (flow.tasks.is_some(), "tasks"),
        (flow.idempotency_key.is_some(), "idempotency_key"),
    ] {
        if set {
            return Err(ApiError::invalid(
                field,
                format!("a flow cannot set {field}: each request gives its own"),
            ));
        }
    }
    if flow.command.is_none() {
        return Err(ApiError::invalid(
            "command",
            "a flow needs a command template, e.g. command = [\"convert\", \"{path}\", \"{out}\"]",
        ));
    }
    let mut probe = BatchRequest {
        flow: Some(name.to_string()),
        records: Some(Vec::new()),
        ..BatchRequest::default()
    };
    probe = probe.over(flow);
    plan_checked(probe, config, false).map(|_| ())
}

/// Checks a request and builds its batch. `config` has the flows and limits.
pub fn plan(request: BatchRequest, config: &ServerConfig) -> Result<Plan, ApiError> {
    let request = match &request.flow {
        Some(name) => {
            let Some(flow) = config.flows.get(name) else {
                let known: Vec<&str> = config.flows.keys().map(String::as_str).collect();
                return Err(ApiError {
                    code: "unknown_flow",
                    ..ApiError::invalid(
                        "flow",
                        format!(
                            "no flow {name:?} on this server: known flows are {known:?} (defined in herd.toml), or give a command instead"
                        ),
                    )
                });
            };
            if request.command.is_some() || request.shell.is_some() {
                return Err(ApiError::invalid(
                    if request.command.is_some() {
                        "command"
                    } else {
                        "shell"
                    },
                    "a batch runs a flow or a command, not both: the flow's command is fixed in herd.toml",
                ));
            }
            request.over(flow)
        }
        None => request,
    };
    plan_checked(request, config, true)
}

fn plan_checked(
    request: BatchRequest,
    config: &ServerConfig,
    need_work: bool,
) -> Result<Plan, ApiError> {
    let words = match &request.command {
        Some(CommandIn::Words(words)) => words.clone(),
        Some(CommandIn::Line(line)) => line.split_whitespace().map(String::from).collect(),
        None => {
            return Err(ApiError::invalid(
                "command",
                "no command: give a flow of this server, or a command such as [\"echo\", \"{}\"]",
            ));
        }
    };
    let shell = request.shell.unwrap_or(false);
    let template =
        Template::parse(&words, shell).map_err(|e| ApiError::invalid("command", e.to_string()))?;

    let concurrency = request.concurrency.unwrap_or(config.slots);
    if concurrency == 0 {
        return Err(ApiError::invalid("concurrency", "must be at least 1"));
    }
    let priority = match &request.priority {
        Some(p) => p
            .to_string()
            .parse::<Priority>()
            .map_err(|e| ApiError::invalid("priority", e.to_string()))?,
        None => Priority::NORMAL,
    };
    let retry = match &request.retry {
        None => herd_exec::retry_policy(0, "1s,60s"),
        Some(RetryIn::Count(n)) => herd_exec::retry_policy(*n, "1s,60s"),
        Some(RetryIn::Policy { retries, backoff }) => {
            herd_exec::retry_policy(*retries, backoff.as_deref().unwrap_or("1s,60s"))
        }
    }
    .map_err(|e| ApiError::invalid("retry", e.to_string()))?;
    let timeout = request
        .timeout
        .as_deref()
        .map(|t| duration("timeout", t))
        .transpose()?;
    if timeout == Some(Duration::ZERO) {
        return Err(ApiError::invalid("timeout", "must be longer than zero"));
    }
    let grace = request
        .grace
        .as_deref()
        .map(|t| duration("grace", t))
        .transpose()?
        .unwrap_or(Duration::from_secs(5));
    let deadline = request
        .deadline
        .as_deref()
        .map(|t| duration("deadline", t))
        .transpose()?;
    let on_failure = match request.error_policy.as_deref() {
        None | Some("continue") => OnFailure::Continue,
        Some("stop") => OnFailure::Stop,
        Some("abort") => OnFailure::Abort,
        Some(other) => {
            return Err(ApiError::invalid(
                "error_policy",
                format!("{other:?} is not an error policy: use continue, stop or abort"),
            ));
        }
    };
    let max_failures = request.max_failures.as_ref().map(ToString::to_string);
    let error_policy = herd_exec::error_policy(on_failure, max_failures.as_deref())
        .map_err(|e| ApiError::invalid("max_failures", e.to_string()))?;
    let chunk = match (request.chunk_size, request.size_class.as_deref()) {
        (Some(0), _) => return Err(ApiError::invalid("chunk_size", "must be at least 1")),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "size_class",
                "give chunk_size or size_class, not both",
            ));
        }
        (Some(n), None) => n as usize,
        (None, Some(class)) => class
            .parse::<SizeClass>()
            .map_err(|e| ApiError::invalid("size_class", e.to_string()))?
            .chunk_size(),
        (None, None) => 1,
    };
    let parameters = request.parameters.clone().unwrap_or_default();
    let seed = match request.shuffle {
        None | Some(ShuffleIn::Yes(false)) => None,
        Some(ShuffleIn::Yes(true)) => Some(fastrand::u64(..)),
        Some(ShuffleIn::Seed(seed)) => Some(seed),
    };
    let max_records = request
        .max_records
        .map(|m| usize::try_from(m).unwrap_or(usize::MAX));

    let tasks = match (&request.records, &request.tasks) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "tasks",
                "give records or tasks, not both: tasks carry their own records",
            ));
        }
        (None, None) if need_work => {
            return Err(ApiError::invalid(
                "records",
                "no records: give records (a JSON array, or an NDJSON body) or tasks",
            ));
        }
        (None, None) => Vec::new(),
        (Some(records), None) => {
            limit(records.len(), config, "records")?;
            let mut items = records
                .iter()
                .enumerate()
                .map(|(i, r)| item(r, &parameters, &template, || format!("records[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(seed) = seed {
                shuffle_seeded(&mut items, seed);
            }
            if let Some(max) = max_records {
                items.truncate(max);
            }
            herd_exec::command_tasks(&template, &items, chunk)
        }
        (None, Some(tasks)) => {
            limit(tasks.len(), config, "tasks")?;
            if request.chunk_size.is_some() || request.size_class.is_some() {
                return Err(ApiError::invalid(
                    "chunk_size",
                    "explicit tasks run one record each: drop chunk_size and size_class",
                ));
            }
            tasks
                .iter()
                .enumerate()
                .map(|(i, t)| task(i, t, &parameters, &template))
                .collect::<Result<Vec<_>, _>>()?
        }
    };

    let now = SystemClock.now();
    let mut spec = BatchSpec::new(FLOW);
    spec.name = request.name.clone();
    spec.idempotency_key = request.idempotency_key.clone();
    spec.priority = priority;
    spec.concurrency = concurrency;
    spec.policy.retry = retry;
    spec.policy.timeout = timeout;
    spec.policy.grace = grace;
    spec.policy.deadline = deadline.map(|d| now.plus(d));
    spec.policy.meta = Some(serde_json::json!({ "serve": {
        "flow": request.flow,
        "command": words,
        "shell": shell,
        "chunk_size": chunk,
        "parameters": parameters,
    }}));
    spec.error_policy = error_policy;
    spec.paused = request.paused.unwrap_or(false);
    spec.tasks = tasks;
    if request.tasks.is_some() {
        // Explicit tasks: the selection applies to them, before their
        // dependencies are checked.
        spec.select(seed, max_records);
    }
    spec.validate(Some(config.slots))?;
    Ok(Plan { spec })
}

fn limit(n: usize, config: &ServerConfig, field: &str) -> Result<(), ApiError> {
    if n > config.max_records {
        return Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_many_records",
            message: format!(
                "{n} {field} in one batch, more than this server takes ({}): split them into several batches, or raise max_records",
                config.max_records
            ),
            field: Some(field.to_string()),
        });
    }
    Ok(())
}

/// The item a record makes, with the parameters as fields under its own;
/// every field the template uses must be there.
fn item(
    record: &Value,
    parameters: &Map<String, Value>,
    template: &Template,
    field: impl Fn() -> String,
) -> Result<Item, ApiError> {
    let item = match record {
        Value::String(s) if parameters.is_empty() => Item::new(s.clone()),
        Value::String(s) => Item::with_fields(s.clone(), parameters.clone()),
        Value::Object(fields) => {
            let mut all = parameters.clone();
            all.extend(fields.clone());
            Item::with_fields(record.to_string(), all)
        }
        Value::Number(_) | Value::Bool(_) if parameters.is_empty() => Item::new(record.to_string()),
        Value::Number(_) | Value::Bool(_) => {
            Item::with_fields(record.to_string(), parameters.clone())
        }
        Value::Null | Value::Array(_) => {
            return Err(ApiError::invalid(
                field(),
                "a record is a string, a number or an object of fields",
            ));
        }
    };
    let has = |name: &str| item.fields.as_deref().is_some_and(|f| f.contains_key(name));
    if let Some(missing) = template.fields().find(|f| !has(f)) {
        return Err(ApiError::invalid(
            field(),
            format!(
                "the command uses {{{missing}}} but this record has no field {missing:?} (nor do the parameters)"
            ),
        ));
    }
    Ok(item)
}

fn task(
    i: usize,
    t: &TaskRequest,
    parameters: &Map<String, Value>,
    template: &Template,
) -> Result<TaskSpec<CommandTask>, ApiError> {
    let record = t.record.clone().unwrap_or(Value::String(String::new()));
    let item = item(&record, parameters, template, || {
        format!("tasks[{i}].record")
    })?;
    let priority = t
        .priority
        .as_ref()
        .map(|p| p.to_string().parse::<Priority>())
        .transpose()
        .map_err(|e| ApiError::invalid(format!("tasks[{i}].priority"), e.to_string()))?;
    let argv = template.expand(i as u64 + 1, std::slice::from_ref(&item));
    Ok(TaskSpec {
        key: t.key.clone(),
        payload: CommandTask {
            argv,
            items: vec![item.text],
        },
        priority,
        cost: t.cost.unwrap_or(1),
        after: t.after.clone(),
        rule: t.rule.unwrap_or_default(),
    })
}
