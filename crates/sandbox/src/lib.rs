//! Runs untrusted Python in a WebAssembly sandbox: RustPython compiled to `wasm32-wasip1`
//! (the guest in `wasm-guests/python-runner`), executed by wasmtime.
//!
//! - **Contained**: the guest sees no files (no preopened directories), no environment, no
//!   arguments beyond its name, no sockets. Memory is capped by a resource limiter, time by
//!   epoch interruption plus a wall-clock timeout that also ends blocking calls such as
//!   `time.sleep`, output by a capped pipe, the stack by wasmtime's stack limit.
//! - **Unforgeable**: the guest reports through a host function that Python code cannot call;
//!   what the program prints is only captured text, and exiting early is never a pass.
//! - **Fast**: the interpreter is pre-initialized once with wasmtime-wizer (standard modules
//!   imported), compiled once with Cranelift and cached on disk; each run instantiates the
//!   snapshot copy-on-write, so it starts in well under a millisecond.
//!
//! [`Sandbox`] implements [`coe_exec::Executor`] and is safe to share between threads.
//!
//! ```no_run
//! use coe_exec::{ExecRequest, Executor, Limits, Status};
//! use coe_sandbox::Sandbox;
//!
//! let sandbox = Sandbox::new(&Default::default())?;
//! let tests = vec!["assert add(1, 2) == 3".to_owned()];
//! let outcome = sandbox.execute(&ExecRequest {
//!     program: "def add(a, b):\n    return a + b\n",
//!     setup: "",
//!     tests: &tests,
//!     limits: Limits::default(),
//! })?;
//! assert_eq!(outcome.status, Status::Passed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod module;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coe_exec::{ExecRequest, Executor, ExecutorError, Outcome};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, InstancePre, OptLevel};

pub use module::cache_dir_default;
use run::RunState;
pub use run::{RunReport, Timings};

/// How often the epoch advances; the time limit is enforced at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Native stack the guest may use. RustPython recurses on the Rust stack for every Python call,
/// so this bounds Python recursion; 1000 frames (Python's default limit) need well under this.
const MAX_WASM_STACK: usize = 32 << 20;

/// Bytes of a finished run's memory the pooling allocator keeps mapped and resets in place
/// (only the dirty pages, where Linux offers `PAGEMAP_SCAN`), so the next run in that slot
/// takes no page faults there.
const KEEP_RESIDENT: usize = 128 << 20;

/// Concurrent runs the pooling allocator has slots for.
const POOL_SLOTS: u32 = 128;

/// Settings of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the compiled guest is cached; `None` uses [`cache_dir_default`].
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling instance allocator (pre-reserved slots for memories, tables and
    /// stacks, at most 128 runs at once) instead of allocating per run. On by default: it
    /// halves instantiation time and raised 2-core throughput by about 16% in
    /// `cargo xtask bench sandbox`.
    pub pooling: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pooling: true,
        }
    }
}

/// Why a sandbox could not be set up or could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Compiling, snapshotting or caching the guest failed.
    #[error("preparing the Python guest failed: {0}")]
    Prepare(String),
    /// The run failed for a reason that is not the program's doing.
    #[error("the sandbox failed: {0}")]
    Run(String),
    /// The guest answered something that is not a valid response.
    #[error("the Python guest sent an invalid response: {0}")]
    InvalidResponse(String),
}

impl From<SandboxError> for ExecutorError {
    fn from(error: SandboxError) -> Self {
        ExecutorError::with_source("the Python sandbox failed", error)
    }
}

struct Shared {
    engine: Engine,
    instance_pre: InstancePre<RunState>,
    ticker_stop: Arc<AtomicBool>,
    prepare_time: Duration,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A Python sandbox: one wasmtime engine and the pre-initialized guest, ready to instantiate.
/// Cheap to clone; every clone shares the engine.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Creates the engine and loads the guest: from the on-disk cache when it holds a module
    /// compiled for this guest and engine, otherwise by snapshotting and compiling it (once,
    /// tens of seconds) and caching the result.
    pub fn new(config: &SandboxConfig) -> Result<Self, SandboxError> {
        let started = std::time::Instant::now();
        let engine = Engine::new(&engine_config(config))
            .map_err(|e| SandboxError::Prepare(format!("creating the wasmtime engine: {e}")))?;
        let cache_dir = config.cache_dir.clone().unwrap_or_else(cache_dir_default);
        let module = module::load_or_build(&engine, &cache_dir)?;
        let linker = run::linker(&engine)?;
        let instance_pre = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::Prepare(format!("linking the guest: {e}")))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        start_epoch_ticker(engine.clone(), Arc::clone(&ticker_stop))?;
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                instance_pre,
                ticker_stop,
                prepare_time: started.elapsed(),
            }),
        })
    }

    /// How long [`Sandbox::new`] took (loading from cache, or snapshotting and compiling).
    pub fn prepare_time(&self) -> Duration {
        self.shared.prepare_time
    }

    /// Runs a program and its tests, with timings of the phases.
    ///
    /// Blocking: it drives the run on a small runtime of the calling thread, so call it from
    /// plain threads (from async code, use a blocking task such as tokio's `spawn_blocking`).
    pub fn run(&self, request: &ExecRequest<'_>) -> Result<RunReport, SandboxError> {
        run::execute(&self.shared.engine, &self.shared.instance_pre, request)
    }
}

impl Executor for Sandbox {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        Ok(self.run(request)?.outcome)
    }
}

fn engine_config(settings: &SandboxConfig) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // Runs execute on fibers with this stack, so the caller's thread stack size never
        // matters: any thread may run the sandbox.
        .async_stack_size(MAX_WASM_STACK + (2 << 20))
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true);
    if settings.pooling {
        // Slots for 128 runs at once; memories reserve address space up to 4 GiB (virtual
        // only).
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS)
            .total_stacks(POOL_SLOTS)
            .max_memory_size(4 << 30)
            .max_core_instance_size(16 << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .table_keep_resident(1 << 20)
            .async_stack_keep_resident(1 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until `stop` is set.
fn start_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> Result<(), SandboxError> {
    std::thread::Builder::new()
        .name("coe-sandbox-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|e| SandboxError::Prepare(format!("starting the epoch thread: {e}")))
}
