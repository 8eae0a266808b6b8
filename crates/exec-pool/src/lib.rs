//! An [`Executor`] backed by long-lived worker processes.
//!
//! Sandbox runs on threads of one process share one address space, and every run's
//! copy-on-write page faults flush the TLBs of the other CPUs running it: on the 2-core machine
//! two threads ran fewer programs per second than one (issue 17's `perf` profile), while two
//! processes ran about twice as many. [`ProcessPool`] keeps `size` worker processes, each
//! running [`serve`] over its standard input and output with its own sandbox, and hands each
//! [`Executor::execute`] call to an idle one. Callers keep using the `Executor` trait, so
//! `coe serve`'s pool, the trainer's rollout workers and the data generator switch by
//! construction, not by code.
//!
//! The protocol: a worker first writes one ready line (`{"ready": PROTOCOL}`, once its sandbox
//! exists), then answers each request line (the fields of [`ExecRequest`]) with one reply line
//! (`{"ok": outcome}` or `{"err": message}`). A worker that dies while it holds a request, or
//! stays silent past the request's time limit plus a grace, costs that request only: the caller
//! gets an [`ExecutorError`], the worker is killed and reaped, and a fresh one is started for the
//! next request. A worker found dead before a request is sent is replaced and the request goes
//! to the new one.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use coe_exec::{ExecRequest, Executor, ExecutorError, Limits, Outcome};
use serde::{Deserialize, Serialize};

/// How long past a request's own time limit a worker may take to answer before it is killed:
/// the sandbox enforces the limit itself, so only a broken worker gets near this.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// How long a new worker may take to write its ready line (it may compile the guest when the
/// compiled-module cache cannot be written).
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The protocol's name and version, in every worker's ready line; a worker of another version
/// is refused at start.
pub const PROTOCOL: &str = "coe-exec-pool/1";

/// A request as it travels to a worker (the owned form of [`ExecRequest`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct WireRequest {
    program: String,
    setup: String,
    tests: Vec<String>,
    limits: Limits,
}

/// A line a worker writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    /// Its first line: the sandbox is up.
    Ready(String),
    /// A request's outcome.
    Ok(Outcome),
    /// Why a request has no outcome.
    Err(String),
}

/// The worker side: writes the ready line, then answers every request line of `input` with
/// `executor`, one reply line on `output` each, until `input` ends. A line that is not a request
/// (not JSON, not UTF-8) gets an error reply, so one bad line costs one reply, not the worker.
/// Nothing else may write to `output`.
pub fn serve(
    executor: &impl Executor,
    mut input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<()> {
    write_line(&mut output, &Reply::Ready(PROTOCOL.to_owned()))?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let reply = match serde_json::from_slice::<WireRequest>(&line) {
            Ok(request) => {
                let request = ExecRequest {
                    program: &request.program,
                    setup: &request.setup,
                    tests: &request.tests,
                    limits: request.limits,
                };
                match executor.execute(&request) {
                    Ok(mut outcome) => {
                        // JSON has no NaN or infinity; a wall time is never either, but a
                        // reply that cannot be read back would cost the worker.
                        if !outcome.elapsed_ms.is_finite() {
                            outcome.elapsed_ms = 0.0;
                        }
                        Reply::Ok(outcome)
                    }
                    Err(error) => Reply::Err(error_chain(&error)),
                }
            }
            Err(error) => Reply::Err(format!("not a request: {error}")),
        };
        write_line(&mut output, &reply)?;
    }
}

/// [`serve`] on this process's standard input and output: the whole `main` of a worker.
pub fn serve_stdio(executor: &impl Executor) -> std::io::Result<()> {
    serve(
        executor,
        std::io::stdin().lock(),
        std::io::BufWriter::new(std::io::stdout().lock()),
    )
}

fn write_line(output: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    serde_json::to_writer(&mut *output, reply)?;
    output.write_all(b"\n")?;
    output.flush()
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (each critical
    // section is a push, a pop, a retain or a kill), so a poisoned lock is used as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A process the watchdog kills when its deadline passes.
struct Watched {
    child: Mutex<Child>,
    /// Set by the watchdog when it killed the process: whatever the process said last may
    /// have been cut, so it is not used again.
    killed: AtomicBool,
}

/// One running worker process; dropping it kills and reaps the process.
struct Worker {
    watched: Arc<Watched>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Whether the process has exited (or cannot be asked).
    fn has_exited(&self) -> bool {
        !matches!(lock(&self.watched.child).try_wait(), Ok(None))
    }

    /// Kills the process (it may be gone already) and reaps it, returning how it ended.
    fn end(self) -> String {
        let mut child = lock(&self.watched.child);
        let _ = child.kill();
        match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("not reaped: {e}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut child = lock(&self.watched.child);
        // After `end`, both are no-ops on a reaped child.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Makes the command that starts one worker process (for `coe`, `coe exec-worker`).
pub type WorkerCommand = dyn Fn() -> Command + Send + Sync;

/// Requests in flight: when each must be answered by, and the process to kill if it is not.
#[derive(Default)]
struct Deadlines {
    entries: Mutex<Vec<(u64, Instant, Arc<Watched>)>>,
    next_ticket: AtomicU64,
}

impl Deadlines {
    fn watch(&self, deadline: Instant, watched: &Arc<Watched>) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).push((ticket, deadline, Arc::clone(watched)));
        ticket
    }

    fn unwatch(&self, ticket: u64) {
        lock(&self.entries).retain(|(t, _, _)| *t != ticket);
    }

    /// Kills every process past its deadline and forgets it.
    fn kill_overdue(&self, now: Instant) {
        lock(&self.entries).retain(|(_, deadline, watched)| {
            if *deadline > now {
                return true;
            }
            watched.killed.store(true, Ordering::Release);
            let _ = lock(&watched.child).kill();
            false
        });
    }
}

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
}

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("size", &self.size)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl ProcessPool {
    /// Starts `size` (at least 1) workers, each from a fresh `command()`, and waits until each
    /// has written its ready line; their standard input and output are the protocol's pipes,
    /// their standard error is inherited. On Unix each worker gets its own process group, so a
    /// terminal's Ctrl-C reaches only the parent, which can still answer the requests it holds.
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
        let deadlines: Arc<Deadlines> = Arc::default();
        watchdog(Arc::downgrade(&deadlines));
        let mut pool = Self {
            command: Box::new(command),
            idle: Mutex::new(Vec::with_capacity(size)),
            freed: Condvar::new(),
            size,
            grace,
            deadlines,
        };
        // Started all at once, then each one's ready line awaited, so they start side by side.
        let started = (0..size)
            .map(|_| pool.launch())
            .collect::<Result<Vec<_>, _>>()?;
        let ready = started
            .into_iter()
            .map(|worker| pool.await_ready(worker))
            .collect::<Result<Vec<_>, _>>()?;
        *pool.idle.get_mut().unwrap_or_else(PoisonError::into_inner) =
            ready.into_iter().map(Some).collect();
        Ok(pool)
    }

    /// A pool of this very binary started with `args` (say, `["exec-worker"]`). On Linux the
    /// binary is `/proc/self/exe`, the file this process runs even if the path was rebuilt or
    /// deleted since, so a worker started hours later is still the same program.
    pub fn of_current_exe(size: usize, args: &[&str]) -> Result<Self, ExecutorError> {
        let exe = if cfg!(target_os = "linux") {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()
                .map_err(|e| ExecutorError::with_source("cannot find this binary", e))?
        };
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Self::new(size, move || {
            let mut command = Command::new(&exe);
            command.args(&args);
            command
        })
    }

    /// How many worker processes the pool keeps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Starts one worker process.
    fn launch(&self) -> Result<Worker, ExecutorError> {
        let mut command = (self.command)();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| {
            ExecutorError::with_source(
                format!("cannot start a worker ({:?})", command.get_program()),
                e,
            )
        })?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let watched = Arc::new(Watched {
            child: Mutex::new(child),
            killed: AtomicBool::new(false),
        });
        match (stdin, stdout) {
            (Some(stdin), Some(stdout)) => Ok(Worker {
                watched,
                stdin,
                stdout: BufReader::new(stdout),
            }),
            // Dropping `watched` alone would leave the child unreaped.
            _ => {
                let mut child = lock(&watched.child);
                let _ = child.kill();
                let _ = child.wait();
                Err(ExecutorError::new("a worker started without pipes"))
            }
        }
    }

    /// Reads a new worker's ready line (the watchdog kills one that takes too long).
    fn await_ready(&self, mut worker: Worker) -> Result<Worker, ExecutorError> {
        let ticket = self
            .deadlines
            .watch(Instant::now() + START_TIMEOUT, &worker.watched);
        let line = read_reply(&mut worker);
        self.deadlines.unwatch(ticket);
        match line {
            Ok(Reply::Ready(protocol)) if protocol == PROTOCOL => Ok(worker),
            Ok(Reply::Ready(protocol)) => Err(ExecutorError::new(format!(
                "a worker speaks {protocol}, not {PROTOCOL}"
            ))),
            Ok(_) => Err(ExecutorError::new("a worker answered before it was ready")),
            Err(error) => {
                let ended = worker.end();
                Err(ExecutorError::new(format!(
                    "a worker did not start: {} (worker: {ended})",
                    error_chain(&error)
                )))
            }
        }
    }

    /// A worker able to take a request: an idle live one, or a fresh one in its slot.
    fn take(&self) -> Result<Slot<'_>, ExecutorError> {
        let mut idle = lock(&self.idle);
        let taken = loop {
            if let Some(slot) = idle.pop() {
                break slot;
            }
            idle = self
                .freed
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(idle);
        let mut slot = Slot {
            pool: self,
            worker: None,
        };
        slot.worker = match taken {
            Some(worker) if !worker.has_exited() => Some(worker),
            // Died while idle (or never started): replaced, at no request's cost.
            _ => Some(self.launch().and_then(|worker| self.await_ready(worker))?),
        };
        Ok(slot)
    }

    /// Sends one request and reads its reply; any failure leaves the worker unusable.
    fn exchange(
        &self,
        worker: &mut Worker,
        line: &[u8],
        limits: Limits,
    ) -> Result<Reply, ExecutorError> {
        worker
            .stdin
            .write_all(line)
            .and_then(|()| worker.stdin.flush())
            .map_err(|e| ExecutorError::with_source("cannot write to the worker", e))?;
        let deadline = Instant::now() + limits.timeout() + self.grace;
        let ticket = self.deadlines.watch(deadline, &worker.watched);
        let reply = read_reply(worker);
        self.deadlines.unwatch(ticket);
        if worker.watched.killed.load(Ordering::Acquire) {
            return Err(ExecutorError::new(format!(
                "the worker gave no answer within {:?} past the time limit",
                self.grace
            )));
        }
        reply
    }
}

/// A taken slot: gives its worker back when done, or an empty slot if the caller unwinds, so
/// no panic loses the pool a worker.
struct Slot<'a> {
    pool: &'a ProcessPool,
    worker: Option<Worker>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.pool.idle).push(self.worker.take());
        self.pool.freed.notify_one();
    }
}

/// Reads one line of a worker.
fn read_reply(worker: &mut Worker) -> Result<Reply, ExecutorError> {
    let mut line = Vec::new();
    match worker.stdout.read_until(b'\n', &mut line) {
        Ok(0) => Err(ExecutorError::new("the worker closed its output")),
        Ok(_) => serde_json::from_slice(&line)
            .map_err(|e| ExecutorError::with_source("the worker answered garbage", e)),
        Err(e) => Err(ExecutorError::with_source("cannot read the worker", e)),
    }
}

impl Executor for ProcessPool {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ExecutorError::with_source("cannot encode the request", e))?;
        line.push(b'\n');
        let mut slot = self.take()?;
        let Some(mut worker) = slot.worker.take() else {
            return Err(ExecutorError::new("a pool slot without a worker"));
        };
        match self.exchange(&mut worker, &line, request.limits) {
            Ok(Reply::Ok(outcome)) => {
                slot.worker = Some(worker);
                Ok(outcome)
            }
            Ok(Reply::Err(message)) => {
                slot.worker = Some(worker);
                Err(ExecutorError::new(format!("worker: {message}")))
            }
            Ok(Reply::Ready(_)) => {
                let ended = worker.end();
                Err(ExecutorError::new(format!(
                    "the worker answered out of turn (worker: {ended})"
                )))
            }
            Err(error) => {
                let ended = worker.end();
                Err(ExecutorError::new(format!(
                    "{} (worker: {ended})",
                    error_chain(&error)
                )))
            }
        }
    }
}

/// Kills workers past their deadline, until the pool is gone. One thread per pool, waking
/// often enough that a stuck worker costs at most a tenth of a second past its deadline.
fn watchdog(deadlines: Weak<Deadlines>) {
    std::thread::Builder::new()
        .name("coe-exec-pool-watchdog".into())
        .spawn(move || {
            while let Some(deadlines) = deadlines.upgrade() {
                deadlines.kill_overdue(Instant::now());
                drop(deadlines);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        // Without a watchdog the pool still works; only a hung worker would hang its caller.
        .ok();
}
