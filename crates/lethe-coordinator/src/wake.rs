//! In-process wake-ups, never a source of truth: a long-poll that misses one still re-reads
//! the database every poll interval, which is also how changes made through other replicas
//! are seen.

use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

pub(crate) struct Wakeups {
    tasks: Notify,
    jobs: broadcast::Sender<Uuid>,
}

impl Wakeups {
    pub(crate) fn new() -> Self {
        Self {
            tasks: Notify::new(),
            jobs: broadcast::channel(1024).0,
        }
    }

    /// `n` tasks may have become claimable: wake up to `n` waiting long-polls, one each, rather
    /// than all of them.
    pub(crate) fn tasks_available(&self, n: usize) {
        for _ in 0..n.min(256) {
            self.tasks.notify_one();
        }
    }

    pub(crate) async fn task_wait(&self) {
        self.tasks.notified().await
    }

    pub(crate) fn job_changed(&self, job: Uuid) {
        // No receiver is fine: nobody is watching.
        let _ = self.jobs.send(job);
    }

    pub(crate) fn watch_jobs(&self) -> broadcast::Receiver<Uuid> {
        self.jobs.subscribe()
    }
}
