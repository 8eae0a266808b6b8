//! One execution: a fresh instance of the snapshot, the request on stdin, limits enforced, the
//! response read from the host function and turned into an [`Outcome`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{Duration, Instant};

use coe_exec::{ExecRequest, Outcome};
use coe_sandbox_protocol::{
    Ending, GuestReport, HOST_MODULE, MAX_RESPONSE_BYTES, PHASE_DONE, PHASE_FUNCTION, PHASE_TESTS,
    Request, RunEnd, SUBMIT_FUNCTION, VerdictError, verdict,
};
use wasmtime::{Caller, Engine, Extern, InstancePre, Linker, ResourceLimiter, Store, Trap};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use crate::{EPOCH_TICK, SandboxError};

/// An outcome with the time spent in each phase.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The outcome of the run.
    pub outcome: Outcome,
    /// Where the time went.
    pub timings: Timings,
}

/// Wall time of the phases of one run. A phase the run did not reach is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timings {
    /// Creating the instance from the snapshot.
    pub instantiate: Duration,
    /// Decoding the request, setup and the program.
    pub program: Duration,
    /// All tests.
    pub tests: Duration,
    /// The whole run, as the caller sees it.
    pub total: Duration,
}

/// The state of one run, owned by its wasmtime `Store`.
pub(crate) struct RunState {
    pub(crate) wasi: wasmtime_wasi::p1::WasiP1Ctx,
    limiter: MemoryLimiter,
    response: GuestReport,
    phases: PhaseClock,
}

/// Caps the guest's memory and remembers whether the cap was hit.
pub(crate) struct MemoryLimiter {
    limit_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; RustPython never needs more than a few thousand.
        Ok(desired <= 1 << 20)
    }
}

/// Instants at which the run reached each phase.
#[derive(Debug, Default)]
pub(crate) struct PhaseClock {
    instantiated: Option<Instant>,
    tests_started: Option<Instant>,
    tests_done: Option<Instant>,
}

/// The linker shared by every run: WASI preview 1 plus coe's two host functions.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<RunState>, SandboxError> {
    let fail = |e: wasmtime::Error| SandboxError::Prepare(format!("building the linker: {e}"));
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut RunState| &mut state.wasi)
        .map_err(fail)?;
    linker
        .func_wrap(HOST_MODULE, SUBMIT_FUNCTION, submit_response)
        .map_err(fail)?;
    linker
        .func_wrap(
            HOST_MODULE,
            PHASE_FUNCTION,
            |mut caller: Caller<'_, RunState>, phase: i32| {
                let clock = &mut caller.data_mut().phases;
                let now = Some(Instant::now());
                match phase {
                    PHASE_TESTS => clock.tests_started = now,
                    PHASE_DONE => clock.tests_done = now,
                    _ => {}
                }
            },
        )
        .map_err(fail)?;
    Ok(linker)
}

/// `coe.submit_response(ptr, len)`: copies the response out of guest memory. Never traps: a
/// bad call is recorded and reported as an invalid response.
fn submit_response(mut caller: Caller<'_, RunState>, ptr: i32, len: i32) {
    let slot = match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => {
            // i32 -> u32 reinterprets the wasm32 address; it is never negative there.
            let (start, len) = (ptr as u32 as usize, len as u32 as usize);
            if len > MAX_RESPONSE_BYTES {
                GuestReport::Invalid(format!("{len} bytes is over the limit"))
            } else {
                match memory.data(&caller).get(start..start.saturating_add(len)) {
                    Some(bytes) => GuestReport::Received(bytes.to_vec()),
                    None => GuestReport::Invalid("the response lies outside memory".into()),
                }
            }
        }
        _ => GuestReport::Invalid("the guest exports no memory".into()),
    };
    let current = &mut caller.data_mut().response;
    *current = match current {
        GuestReport::Missing => slot,
        _ => GuestReport::Invalid("the response was submitted twice".into()),
    };
}

/// A store for the one-off initialization before the snapshot: no limits.
pub(crate) fn init_store(engine: &Engine) -> Store<RunState> {
    let mut store = Store::new(
        engine,
        RunState {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: MemoryLimiter {
                limit_bytes: usize::MAX,
                hit: false,
            },
            response: GuestReport::Missing,
            phases: PhaseClock::default(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    store.epoch_deadline_trap();
    store
}

thread_local! {
    /// A single-threaded tokio runtime per calling thread: it drives the wall-clock timeout and
    /// WASI's timers, and costs nothing between runs.
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs a future to completion on this thread's runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|cell| {
        let mut runtime = cell.borrow_mut();
        let runtime = runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                // Building a current-thread runtime only fails if the OS refuses a timer fd.
                .unwrap_or_else(|e| panic!("coe-sandbox cannot create its tokio runtime: {e}"))
        });
        runtime.block_on(future)
    })
}

pub(crate) fn execute(
    engine: &Engine,
    instance_pre: &InstancePre<RunState>,
    request: &ExecRequest<'_>,
) -> Result<RunReport, SandboxError> {
    let started = Instant::now();
    let limits = request.limits;
    let encoded = postcard::to_allocvec(&Request {
        setup: Cow::Borrowed(request.setup),
        program: Cow::Borrowed(request.program),
        tests: request
            .tests
            .iter()
            .map(|t| Cow::Borrowed(t.as_str()))
            .collect(),
    })
    .map_err(|e| SandboxError::Run(format!("encoding the request: {e}")))?;
    let output_limit = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
    // One byte more than allowed, so that going over the limit is visible.
    let stdout = MemoryOutputPipe::new(output_limit.saturating_add(1));
    let stderr = MemoryOutputPipe::new(output_limit.saturating_add(1));
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(encoded))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(&["python-runner"])
        .build_p1();
    let memory_limit =
        usize::try_from(limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let mut store = Store::new(
        engine,
        RunState {
            wasi,
            limiter: MemoryLimiter {
                limit_bytes: memory_limit,
                hit: false,
            },
            response: GuestReport::Missing,
            phases: PhaseClock::default(),
        },
    );
    store.limiter(|state| &mut state.limiter);
    let ticks = limits.timeout().as_micros() / EPOCH_TICK.as_micros().max(1) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX / 2));
    store.epoch_deadline_trap();

    let ending = block_on(async {
        let run = async {
            let instance = match instance_pre.instantiate_async(&mut store).await {
                Ok(instance) => instance,
                Err(error) => return Ending::NotStarted(error.to_string()),
            };
            store.data_mut().phases.instantiated = Some(Instant::now());
            let start = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Ok(start) => start,
                Err(error) => return Ending::NotStarted(error.to_string()),
            };
            match start.call_async(&mut store, ()).await {
                Ok(()) => Ending::Returned,
                Err(error) => ending_of(&error),
            }
        };
        // The epoch deadline stops running code; this also stops code blocked in a host call.
        tokio::time::timeout(limits.timeout(), run)
            .await
            .unwrap_or(Ending::TimedOut)
    });

    let total = started.elapsed();
    let state = store.into_data();
    let timings = timings(&state.phases, started, total);
    let captured = stdout.contents();
    let captured_err = stderr.contents();
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(output_limit)]).into_owned()
    };
    let mut outcome = verdict(RunEnd {
        ending,
        report: state.response,
        memory_limit_hit: state.limiter.hit,
        // Either stream over the limit stops the program: a flood on stderr costs as much.
        output_exceeded: captured.len() > output_limit || captured_err.len() > output_limit,
        stdout: text(&captured),
        tests_requested: request.tests.len(),
        elapsed: total,
    })
    .map_err(|e| match e {
        VerdictError::InvalidResponse(reason) => SandboxError::InvalidResponse(reason),
        not_started @ VerdictError::NotStarted(_) => SandboxError::Run(not_started.to_string()),
    })?;
    outcome.stderr = text(&captured_err);
    Ok(RunReport { outcome, timings })
}

/// What a wasmtime error from `_start` says about how the run ended.
fn ending_of(error: &wasmtime::Error) -> Ending {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Ending::Exited(exit.0);
    }
    match error.downcast_ref::<Trap>() {
        // The epoch deadline: the time limit.
        Some(Trap::Interrupt) => Ending::TimedOut,
        Some(Trap::StackOverflow) => Ending::StackOverflow,
        _ => Ending::Trapped(error.to_string()),
    }
}

fn timings(phases: &PhaseClock, started: Instant, total: Duration) -> Timings {
    let since = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(from), Some(to)) => to.saturating_duration_since(from),
        _ => Duration::ZERO,
    };
    Timings {
        instantiate: since(Some(started), phases.instantiated),
        program: since(phases.instantiated, phases.tests_started),
        tests: since(phases.tests_started, phases.tests_done),
        total,
    }
}
