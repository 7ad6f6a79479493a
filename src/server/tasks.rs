//! The server's background tasks (the store's writer, the fan-out, the purge of expired
//! credentials) under supervision: a task that panics is logged, counted and restarted, and
//! `/healthz` reports each one, failing when one has stopped for good.

use futures_util::FutureExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The state of one task, as `/healthz` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskState {
    pub running: bool,
    /// Times it panicked and was restarted.
    pub restarts: u64,
    /// What its last panic said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_panic: Option<String>,
}

/// Every supervised task's state, behind one cheap handle.
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Mutex<BTreeMap<&'static str, TaskState>>>,
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, TaskState>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn started(&self, name: &'static str) {
        self.lock().entry(name).or_default().running = true;
    }

    /// Records a panic that the task survived (or is about to be restarted after).
    pub fn panicked(&self, name: &'static str, message: String) {
        tracing::error!(task = name, panic = %message, "background task panicked; restarting it");
        let mut tasks = self.lock();
        let t = tasks.entry(name).or_default();
        t.restarts += 1;
        t.last_panic = Some(message);
    }

    pub fn stopped(&self, name: &'static str) {
        self.lock().entry(name).or_default().running = false;
    }

    /// Each task's state, by name.
    pub fn report(&self) -> BTreeMap<&'static str, TaskState> {
        self.lock().clone()
    }

    /// Whether every task is running.
    pub fn healthy(&self) -> bool {
        self.lock().values().all(|t| t.running)
    }
}

/// Runs the task that `start` makes until it returns; each time it panics, records it and starts
/// a new one (after a short pause, longer each time up to 5 s, so a task that panics at once does
/// not spin). `start` gets the number of the run (0 for the first).
pub async fn supervise<F, Fut>(tasks: Tasks, name: &'static str, mut start: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut run = 0u64;
    loop {
        tasks.started(name);
        match AssertUnwindSafe(start(run)).catch_unwind().await {
            Ok(()) => {
                tasks.stopped(name);
                return;
            }
            Err(payload) => tasks.panicked(name, panic_message(&*payload)),
        }
        run += 1;
        let pause = Duration::from_millis(50u64.saturating_mul(1 << run.min(7)))
            .min(Duration::from_secs(5));
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let tasks = Tasks::default();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        supervise(tasks.clone(), "worker", move |run| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 2 {
                    panic!("boom {run}");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let state = &tasks.report()["worker"];
        assert_eq!(state.restarts, 2);
        assert_eq!(state.last_panic.as_deref(), Some("boom 1"));
        assert!(!state.running, "it returned, so it stopped");
        assert!(!tasks.healthy());
    }
}
