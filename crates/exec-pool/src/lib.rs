//! An [`Executor`] backed by long-lived worker processes.
//!
//! Sandbox runs on threads of one process share one address space, and every run's
//! copy-on-write page faults flush the TLBs of the other CPUs running it: on the 2-core machine
//! two threads ran fewer programs per second than one (issue 17's `perf` profile), while two
//! processes ran 1.9-2.1x as many. [`ProcessPool`] keeps `size` worker processes, each
//! running [`serve`] over its standard input and output with its own sandbox, and hands each
//! [`Executor::execute`] call to an idle one. Callers keep using the `Executor` trait, so
//! `coe serve`'s pool, the trainer's rollout workers and the data generator switch by
//! construction, not by code.
//!
//! The protocol is one JSON line per request (the fields of [`ExecRequest`]) and one per reply
//! (`{"ok": outcome}` or `{"err": message}`). A worker that dies or stops answering costs the
//! one request it held: the caller gets an [`ExecutorError`], the worker is killed and a fresh
//! one is started for the next request.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use coe_exec::{ExecRequest, Executor, ExecutorError, Limits, Outcome};
use serde::{Deserialize, Serialize};

/// How long past a request's own time limit a worker may take to answer before it is killed:
/// the sandbox enforces the limit itself, so only a broken worker gets near this.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A request as it travels to a worker (the owned form of [`ExecRequest`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct WireRequest {
    program: String,
    setup: String,
    tests: Vec<String>,
    limits: Limits,
}

/// A worker's answer to one request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(Outcome),
    Err(String),
}

/// The worker side: answers every request line of `input` with `executor`, one reply line on
/// `output` each, until `input` ends. A line that is not a request gets an error reply, so one
/// bad line costs one reply, not the worker. Nothing else may write to `output`.
pub fn serve(
    executor: &impl Executor,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let reply = match serde_json::from_str::<WireRequest>(&line) {
            Ok(request) => {
                let request = ExecRequest {
                    program: &request.program,
                    setup: &request.setup,
                    tests: &request.tests,
                    limits: request.limits,
                };
                match executor.execute(&request) {
                    Ok(outcome) => Reply::Ok(outcome),
                    Err(error) => Reply::Err(error_chain(&error)),
                }
            }
            Err(error) => Reply::Err(format!("not a request: {error}")),
        };
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

/// The error's message with its causes, since only text crosses the pipe.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One running worker process.
struct Worker {
    /// Shared with the watchdog, which kills a worker that overstays its deadline.
    child: Arc<Mutex<Child>>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Kills the process (it may be gone already) and reaps it, returning how it ended.
    fn end(self) -> String {
        drop(self.stdin);
        let mut child = lock(&self.child);
        let _ = child.kill();
        match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("not reaped: {e}"),
        }
    }
}

/// Makes the command that starts one worker process (for `coe`, `coe exec-worker`).
pub type WorkerCommand = dyn Fn() -> Command + Send + Sync;

/// Requests in flight: when each must be answered by, and the process to kill if it is not.
type Deadlines = Mutex<Vec<(u64, Instant, Arc<Mutex<Child>>)>>;

/// An [`Executor`] that runs each request in one of `size` worker processes (see the crate
/// docs). It is `Sync`: up to `size` calls run at once, further ones wait for a free worker.
pub struct ProcessPool {
    command: Box<WorkerCommand>,
    /// Idle slots; `None` is a slot whose worker died and is started again when next taken.
    idle: Mutex<Vec<Option<Worker>>>,
    freed: Condvar,
    size: usize,
    grace: Duration,
    deadlines: Arc<Deadlines>,
    next_ticket: Mutex<u64>,
}

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("size", &self.size)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (each critical
    // section is a push, a pop or a kill), so a poisoned lock is used as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProcessPool {
    /// Starts `size` (at least 1) workers, each from a fresh `command()`; their standard input
    /// and output are the protocol's pipes, their standard error is inherited.
    pub fn new(
        size: usize,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Result<Self, ExecutorError> {
        Self::with_grace(size, DEFAULT_GRACE, command)
    }

    /// As [`ProcessPool::new`], with the time past a request's limit after which a silent
    /// worker is killed.
    pub fn with_grace(
        size: usize,
        grace: Duration,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Result<Self, ExecutorError> {
        let size = size.max(1);
        let command: Box<WorkerCommand> = Box::new(command);
        let workers = (0..size)
            .map(|_| spawn(&command).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let deadlines: Arc<Deadlines> = Arc::default();
        watch(Arc::downgrade(&deadlines));
        Ok(Self {
            command,
            idle: Mutex::new(workers),
            freed: Condvar::new(),
            size,
            grace,
            deadlines,
            next_ticket: Mutex::new(0),
        })
    }

    /// How many worker processes the pool keeps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Waits for an idle slot and takes it.
    fn take(&self) -> Option<Worker> {
        let mut idle = lock(&self.idle);
        loop {
            if let Some(slot) = idle.pop() {
                return slot;
            }
            idle = self
                .freed
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn give_back(&self, slot: Option<Worker>) {
        lock(&self.idle).push(slot);
        self.freed.notify_one();
    }

    /// Sends one request and reads its reply; any failure leaves the worker unusable.
    fn exchange(
        &self,
        worker: &mut Worker,
        request: &ExecRequest<'_>,
    ) -> Result<Reply, ExecutorError> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ExecutorError::with_source("cannot encode the request", e))?;
        line.push(b'\n');
        worker
            .stdin
            .write_all(&line)
            .and_then(|()| worker.stdin.flush())
            .map_err(|e| ExecutorError::with_source("cannot write to the worker", e))?;
        let ticket = {
            let mut next = lock(&self.next_ticket);
            *next += 1;
            *next
        };
        let deadline = Instant::now() + request.limits.timeout() + self.grace;
        lock(&self.deadlines).push((ticket, deadline, Arc::clone(&worker.child)));
        let mut reply = String::new();
        let read = worker.stdout.read_line(&mut reply);
        lock(&self.deadlines).retain(|(t, _, _)| *t != ticket);
        match read {
            Ok(0) => Err(ExecutorError::new("the worker closed its output")),
            Ok(_) => serde_json::from_str(&reply)
                .map_err(|e| ExecutorError::with_source("the worker answered garbage", e)),
            Err(e) => Err(ExecutorError::with_source("cannot read the worker", e)),
        }
    }
}

impl Executor for ProcessPool {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        let mut worker = match self.take() {
            Some(worker) => worker,
            None => match spawn(&self.command) {
                Ok(worker) => worker,
                Err(error) => {
                    self.give_back(None);
                    return Err(error);
                }
            },
        };
        match self.exchange(&mut worker, request) {
            Ok(reply) => {
                self.give_back(Some(worker));
                match reply {
                    Reply::Ok(outcome) => Ok(outcome),
                    Reply::Err(message) => Err(ExecutorError::new(format!("worker: {message}"))),
                }
            }
            Err(error) => {
                let ended = worker.end();
                self.give_back(None);
                Err(ExecutorError::new(format!(
                    "{} (worker: {ended})",
                    error_chain(&error)
                )))
            }
        }
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        // Closing a worker's input ends its loop; killing covers one that is stuck.
        for worker in lock(&self.idle).drain(..).flatten() {
            worker.end();
        }
    }
}

fn spawn(command: &WorkerCommand) -> Result<Worker, ExecutorError> {
    let mut command = command();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            ExecutorError::with_source(
                format!("cannot start a worker ({:?})", command.get_program()),
                e,
            )
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ExecutorError::new("a worker started without pipes"));
    };
    Ok(Worker {
        child: Arc::new(Mutex::new(child)),
        stdin,
        stdout: BufReader::new(stdout),
    })
}

/// Kills workers past their deadline, until the pool is gone. One thread per pool, waking
/// often enough that a stuck worker costs at most a tenth of a second past its deadline.
fn watch(deadlines: Weak<Deadlines>) {
    std::thread::Builder::new()
        .name("coe-exec-pool-watchdog".into())
        .spawn(move || {
            while let Some(deadlines) = deadlines.upgrade() {
                let now = Instant::now();
                for (_, deadline, child) in lock(&deadlines).iter() {
                    if *deadline <= now {
                        let _ = lock(child).kill();
                    }
                }
                drop(deadlines);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        // Without a watchdog the pool still works; only a hung worker would hang its caller.
        .ok();
}
