use std::time::Duration;

use herd::{
    ChunkPolicy, Error, ErrorPolicy, Executor, RetryPolicy, SubmitError, Task, TaskContext,
    TaskError, Threshold,
};

fn field_of(err: &Error) -> (&'static str, String) {
    match err {
        Error::Invalid(SubmitError::Invalid(f)) => (f.field, f.value.clone()),
        other => panic!("expected an invalid field, got {other}"),
    }
}

async fn never(_: u32, _: TaskContext) -> Result<(), TaskError> {
    panic!("nothing may run after a rejected submission")
}

#[tokio::test(start_paused = true)]
async fn bad_executor_settings_name_the_field_and_value() {
    let err = Executor::builder().concurrency(0).build().unwrap_err();
    assert_eq!(field_of(&err), ("concurrency", "0".into()));
    assert_eq!(
        err.to_string(),
        "invalid concurrency = 0: must be between 1 and 4294967295"
    );

    let err = Executor::builder()
        .retry(RetryPolicy::attempts(0))
        .build()
        .unwrap_err();
    assert_eq!(field_of(&err), ("retry.max_attempts", "0".into()));

    let threshold = ErrorPolicy::stop().after(Threshold::Percent {
        percent: 150.0,
        min_finished: 1,
    });
    let err = Executor::builder()
        .error_policy(threshold)
        .build()
        .unwrap_err();
    assert_eq!(field_of(&err), ("max_failures", "150%".into()));

    let err = Executor::builder()
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(field_of(&err).0, "timeout");
}

#[test]
fn building_outside_a_runtime_says_what_to_do() {
    let err = Executor::builder().build().unwrap_err();
    assert!(matches!(err, Error::NoRuntime));
    assert!(err.to_string().contains("tokio runtime"));
}

#[tokio::test(start_paused = true)]
async fn bad_batch_settings_are_rejected_before_anything_is_stored() {
    let exec = Executor::builder().concurrency(4).build().unwrap();
    let mut events = exec.subscribe();

    let err = exec
        .batch()
        .concurrency(0)
        .run(0..3u32, never)
        .await
        .err()
        .unwrap();
    assert_eq!(field_of(&err), ("concurrency", "0".into()));

    let err = exec
        .batch()
        .retry(RetryPolicy::attempts(0))
        .run(0..3u32, never)
        .await
        .err()
        .unwrap();
    assert_eq!(field_of(&err).0, "retry.max_attempts");

    let err = exec
        .batch()
        .concurrency(2)
        .submit(vec![Task::new(1u32).cost(3)], never)
        .await
        .err()
        .unwrap();
    assert_eq!(field_of(&err), ("cost", "3".into()));

    let err = exec
        .batch()
        .concurrency(8)
        .submit(vec![Task::new(1u32).cost(5)], never)
        .await
        .err()
        .unwrap();
    assert_eq!(
        field_of(&err),
        ("cost", "5".into()),
        "more than the executor's 4 slots"
    );

    let err = exec
        .batch()
        .submit(vec![Task::new(1u32).key("x"), Task::new(2).key("x")], never)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Invalid(SubmitError::DuplicateKey(_))));

    let err = exec
        .batch()
        .run_chunks(
            0..3u32,
            ChunkPolicy::new(0),
            |_: Vec<u32>, _: TaskContext| async move { Vec::<Result<(), TaskError>>::new() },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(field_of(&err), ("chunk_size", "0".into()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(events.try_recv().is_none(), "no batch was stored");
}
