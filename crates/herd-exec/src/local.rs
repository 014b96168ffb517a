//! Workers of this host: the housekeeping a process that embeds a worker
//! (`herd run`, `herd serve`) does around it. Workers register with the
//! host name and pid of their process; one whose process is gone (`kill -9`,
//! a crash) holds leases it will never renew, and ending them at once runs
//! its tasks again now rather than when the leases expire.

use std::collections::BTreeSet;
use std::time::Duration;

use herd_core::scheduler::WorkerConfig;
use herd_core::store::{Store, StoreError, TaskQuery};
use herd_core::{BatchId, Clock, SystemClock, TaskState};

/// Cost units the worker of a local command batch may hold claimed beyond
/// its slots, per job, at most ([`WorkerConfig::ahead`]; fewer when the
/// commands take longer, [`HOLD_FOR`]). The hand is refilled once half of
/// it has started, with the reports of the commands that ended: the
/// larger the hand, the fewer store calls (docs/design/cli.md, "Claiming
/// ahead").
pub const AHEAD_PER_JOB: u32 = 64;

/// How long the last task of a full hand waits, about
/// ([`WorkerConfig::hold_for`]). Longer than a shared worker's default: the
/// worker of `herd run` is alone on its batch, so a held task keeps no
/// other worker waiting, and commands of a millisecond then share a store
/// call by some fifty rather than by sixteen.
pub const HOLD_FOR: Duration = Duration::from_millis(100);

/// The concurrency a batch run by such a worker with `jobs` slots is
/// stored with: the store counts a held task as running, so the batch lets
/// the worker hold its hand beside its slots.
pub fn batch_concurrency(jobs: u32) -> u32 {
    jobs.max(1).saturating_mul(AHEAD_PER_JOB + 1)
}

/// The configuration of the worker that runs `batch`'s commands in this
/// process, `jobs` at once, holding tasks ahead as above.
pub fn command_worker(jobs: u32, batch: BatchId) -> WorkerConfig {
    WorkerConfig {
        slots: jobs.max(1),
        ahead: jobs.max(1).saturating_mul(AHEAD_PER_JOB),
        hold_for: HOLD_FOR,
        host: hostname(),
        batch: Some(batch),
        ..WorkerConfig::default()
    }
}

/// This host's name, as workers register it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a process with this pid exists on this host.
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Ends now the leases that workers of dead processes on this host hold on
/// `batch`'s running tasks (every batch's, with `None`): those attempts run
/// again at once, as `lost`. With a batch, only the workers running its
/// tasks are looked at, however many the store has seen.
pub async fn release_dead_workers<S: Store>(
    store: &S,
    batch: Option<BatchId>,
) -> Result<(), StoreError> {
    let holders = match batch {
        Some(batch) => {
            let holders = running_holders(store, batch).await?;
            if holders.is_empty() {
                return Ok(());
            }
            Some(holders)
        }
        None => None,
    };
    let (host, me) = (hostname(), std::process::id());
    for worker in store.worker_list().await? {
        if holders.as_ref().is_none_or(|h| h.contains(&worker.id))
            && worker.host == host
            && worker.pid != me
            && !alive(worker.pid)
        {
            store.worker_expire(worker.id, SystemClock.now()).await?;
        }
    }
    Ok(())
}

/// The workers running `batch`'s tasks.
async fn running_holders<S: Store>(
    store: &S,
    batch: BatchId,
) -> Result<BTreeSet<herd_core::WorkerId>, StoreError> {
    let mut holders = BTreeSet::new();
    let mut after = None;
    loop {
        let page = store
            .task_list(
                batch,
                TaskQuery {
                    states: vec![TaskState::Running],
                    after,
                    limit: 1000,
                    logs: false,
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.info.index);
        holders.extend(page.iter().filter_map(|t| t.info.worker));
    }
    Ok(holders)
}

/// Requeues what this process's workers were running when they were
/// stopped, so that the next process runs it at once.
pub async fn release_own_workers<S: Store>(store: &S) -> Result<(), StoreError> {
    let (host, me) = (hostname(), std::process::id());
    for worker in store.worker_list().await? {
        if worker.host == host && worker.pid == me {
            store.worker_expire(worker.id, SystemClock.now()).await?;
        }
    }
    Ok(())
}
