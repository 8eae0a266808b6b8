//! A bounded pool of sandbox workers with a bounded queue in front of it.
//!
//! At most `workers` runs execute at once, each on a blocking thread; at most `max_queue` more
//! wait for one. A request that would overflow the queue is refused at once (the server answers
//! 503 with `Retry-After`), so a burst costs memory for `max_queue` requests at most. Runs are
//! spawned tasks: a client that hangs up does not cancel a run midway, and the counts stay right.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::time::Duration;

use coe_exec::{ExecRequest, Executor, Limits, Outcome};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// The executor the server runs programs with.
pub type SharedExecutor = Arc<dyn Executor + Send + Sync>;

/// One run, owned, so that it can move to a worker thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The program.
    pub program: String,
    /// Code run before it.
    pub setup: String,
    /// Test snippets.
    pub tests: Vec<String>,
    /// Its limits (already clamped to the server's).
    pub limits: Limits,
}

/// Set to `true` when dropped.
#[derive(Default)]
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Why a job has no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotRun {
    /// The sandbox (or the pool around it) failed; the message says how.
    Failed(String),
    /// No worker was free within the queue's longest wait.
    WaitedTooLong(Duration),
}

/// The queue is full: come back later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

pub(crate) struct Pool {
    executor: SharedExecutor,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    max_wait: Duration,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub(crate) fn new(
        executor: SharedExecutor,
        workers: usize,
        max_queue: usize,
        max_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            executor,
            permits: Arc::new(Semaphore::new(workers.clamp(1, Semaphore::MAX_PERMITS))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_queue,
            max_wait,
            metrics,
        }
    }

    /// Runs `jobs` (in parallel as workers allow) and returns their results in order, or
    /// [`QueueFull`] without running any when they do not all fit in the queue. A job that
    /// waits longer than the pool's longest wait for a worker does not run.
    pub(crate) async fn run(
        &self,
        jobs: Vec<Job>,
    ) -> Result<Vec<Result<Outcome, NotRun>>, QueueFull> {
        let n = jobs.len();
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                waiting
                    .checked_add(n)
                    .filter(|&total| total <= self.max_queue)
            });
        if admitted.is_err() {
            return Err(QueueFull);
        }
        // Set when this future is dropped (the client hung up): runs still waiting are skipped.
        let abandoned = Abandoned::default();
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let (permits, waiting) = (self.permits.clone(), self.waiting.clone());
                let (executor, metrics) = (self.executor.clone(), self.metrics.clone());
                let abandoned = abandoned.0.clone();
                let max_wait = self.max_wait;
                tokio::spawn(async move {
                    let permit = tokio::time::timeout(max_wait, permits.acquire_owned()).await;
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    let _permit = match permit {
                        Ok(Ok(permit)) => permit,
                        Ok(Err(_)) => {
                            return Err(NotRun::Failed("the worker pool is closed".into()));
                        }
                        Err(_) => return Err(NotRun::WaitedTooLong(max_wait)),
                    };
                    if abandoned.load(Ordering::Acquire) {
                        return Err(NotRun::Failed("the client went away before the run".into()));
                    }
                    metrics.workers_busy.inc();
                    let result = tokio::task::spawn_blocking(move || {
                        executor.execute(&ExecRequest {
                            program: &job.program,
                            setup: &job.setup,
                            tests: &job.tests,
                            limits: job.limits,
                        })
                    })
                    .await;
                    metrics.workers_busy.dec();
                    match result {
                        Ok(Ok(outcome)) => Ok(outcome),
                        Ok(Err(e)) => Err(NotRun::Failed(e.to_string())),
                        Err(e) => Err(NotRun::Failed(format!("a sandbox worker failed: {e}"))),
                    }
                })
            })
            .collect();
        let mut results = Vec::with_capacity(n);
        for handle in handles {
            results.push(
                handle.await.unwrap_or_else(|e| {
                    Err(NotRun::Failed(format!("a sandbox run was lost: {e}")))
                }),
            );
        }
        drop(abandoned);
        Ok(results)
    }

    /// Runs waiting for a worker now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}
