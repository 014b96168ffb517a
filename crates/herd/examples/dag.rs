//! A small pipeline as a dependency graph: two downloads, a merge that reads
//! their outputs, a report after the merge, and a cleanup that runs whatever
//! happened. One download fails, so the merge and the report are skipped;
//! the cleanup still runs and sees how its upstream ended.
//!
//! cargo run --example dag

use futures::StreamExt;
use herd::{Executor, Task, TaskContext, TaskError};

#[tokio::main]
async fn main() -> Result<(), herd::Error> {
    let executor = Executor::builder().concurrency(4).build()?;
    let tasks = vec![
        Task::new("fetch a").key("a"),
        Task::new("fetch b (fails)").key("b"),
        Task::new("merge").key("merge").after(["a", "b"]),
        Task::new("report").key("report").after(["merge"]),
        Task::new("cleanup")
            .key("cleanup")
            .after(["merge"])
            .when_done(),
    ];
    let mut outcomes = executor
        .batch()
        .name("pipeline")
        .submit(tasks, |step: &'static str, ctx: TaskContext| async move {
            let upstream = ctx.upstream::<String>();
            match step {
                "fetch b (fails)" => Err(TaskError::permanent("b: 404 not found")),
                "cleanup" => Ok(format!(
                    "cleaned up after merge ({})",
                    upstream.first().map_or("?".into(), |u| u.state.to_string())
                )),
                _ => {
                    let inputs: Vec<String> =
                        upstream.into_iter().filter_map(|u| u.output).collect();
                    Ok(format!("{step} <- {inputs:?}"))
                }
            }
        })
        .await?;
    while let Some(outcome) = outcomes.next().await {
        match outcome.result {
            Ok(output) => println!("task {}: {output}", outcome.index),
            Err(failure) => println!("task {}: {failure}", outcome.index),
        }
    }
    Ok(())
}
