//! A team of helper threads that wait for work by spinning: the decode step's products, split
//! in parts, on every core.
//!
//! Why not rayon: its idle workers sleep, and waking one on these virtual machines takes about
//! 50 us, as long as half a decode product (a 576 x 1536 matrix-vector product takes 170 us on
//! one core). Measured on 90 such products in turn: one core 170 us each, halves on rayon
//! 145 us, halves on a spinning helper 97 us. llama.cpp's thread pool spins for the same reason.
//! No maintained crate offers a spin-then-park pool for short fork-join calls, so this one is
//! written here; it is small, and a caller never depends on a helper (below), so it cannot hang.
//!
//! How a call runs: the caller publishes the task and its number of parts in one atomic word
//! (an epoch, the next unclaimed part, the part count); the caller and every helper claim parts
//! from that word until none is left, and the caller returns once every part has finished.
//! Helpers spin for [`SPIN`] after their last part, then park until the next call unparks them.
//! Only one call uses the team at a time; a concurrent or nested call runs its parts inline.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock, PoisonError, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks: longer than the gaps between a decode step's
/// products (norms, attention: tens of microseconds), short enough that a helper stops taking a
/// core soon after decoding stops.
const SPIN: Duration = Duration::from_micros(300);

/// The most parts one call may have (they are counted in 16 bits of the claim word).
pub(crate) const MAX_PARTS: usize = u16::MAX as usize;

/// A call's work: part `i` for `i` in `0..parts`.
type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The claim word: `epoch << 32 | next part << 16 | parts`.
fn epoch(word: u64) -> u64 {
    word >> 32
}
fn next_part(word: u64) -> usize {
    ((word >> 16) & 0xffff) as usize
}
fn parts(word: u64) -> usize {
    (word & 0xffff) as usize
}

/// What the caller and the helpers share.
struct Shared {
    /// See [`epoch`], [`next_part`] and [`parts`].
    claim: AtomicU64,
    /// The current call's [`Task`] (a pointer to the caller's reference to it): read only by
    /// a thread that has claimed a part of the current epoch, while the caller waits for it.
    task: AtomicPtr<()>,
    /// Parts of the current call finished (run, or panicked).
    finished: AtomicUsize,
    /// The first panic of a part of the current call.
    panic: FirstPanic,
    /// Per helper: parked (or about to park), so a new call must unpark it.
    parked: Vec<AtomicBool>,
}

impl Shared {
    /// Claims and runs parts of the call of `epoch` until none is left.
    fn work(&self, call_epoch: u64) {
        loop {
            let word = self.claim.load(SeqCst);
            if epoch(word) != call_epoch || next_part(word) >= parts(word) {
                return;
            }
            if self
                .claim
                .compare_exchange(word, word + (1 << 16), SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // SAFETY: the part was claimed in the epoch the pointer was published for (it is
            // stored before the claim word), and the caller that owns the task waits until
            // `finished` counts this part, so the task outlives this use.
            #[allow(unsafe_code)]
            let task: Task = unsafe { *(self.task.load(SeqCst) as *const Task) };
            self.panic.run(task, next_part(word));
            self.finished.fetch_add(1, SeqCst);
        }
    }
}

/// Where the first panic of a call's parts is kept, to be raised by the caller once every part
/// has finished (a part that panics must not end the call early: others may still be running).
#[derive(Default)]
struct FirstPanic(Mutex<Option<Box<dyn Any + Send>>>);

impl FirstPanic {
    /// Runs `task(part)`, keeping its panic if it is the first.
    fn run(&self, task: Task, part: usize) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(part))) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(payload);
        }
    }

    /// Raises the kept panic, if any, and forgets it.
    fn raise(&self) {
        let payload = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(payload) = payload {
            resume_unwind(payload);
        }
    }
}

/// A team of helpers; the process's ([`team`]) lives as long as the process.
struct Team {
    shared: &'static Shared,
    /// Each started helper with its index in `shared.parked`.
    helpers: Vec<(usize, Thread)>,
    /// Held by the call using the team.
    caller: Mutex<()>,
}

impl Team {
    fn start(helpers: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            claim: AtomicU64::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            finished: AtomicUsize::new(0),
            panic: FirstPanic::default(),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
        }));
        let helpers = (0..helpers)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("coe-team-{i}"))
                    .spawn(move || help(shared, i))
                    .ok()
                    .map(|handle| (i, handle.thread().clone()))
            })
            .collect();
        Self {
            shared,
            helpers,
            caller: Mutex::new(()),
        }
    }
}

/// A helper's life: wait for a call (spin, then park), work on it, again.
fn help(shared: &Shared, index: usize) {
    // The epoch the team started with, not the current one: a call made before this thread
    // first ran is still joined.
    let mut seen = 0;
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        while epoch(shared.claim.load(SeqCst)) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Announce the park before the last look, so that a call published after that
            // look finds the flag and unparks (a wake-up before `park` is kept, not lost).
            shared.parked[index].store(true, SeqCst);
            if epoch(shared.claim.load(SeqCst)) == seen {
                std::thread::park();
            }
            shared.parked[index].store(false, SeqCst);
            since = Instant::now();
        }
        seen = epoch(shared.claim.load(SeqCst));
        shared.work(seen);
    }
}

/// The process's team, started on first use with one helper fewer than the threads rayon's
/// global pool is given (`RAYON_NUM_THREADS`, else one per core; `RAYON_NUM_THREADS=1`: no
/// helper). Callers choose their part counts from the rayon pool they run in, which may differ:
/// any count is correct, a count matching the threads is fastest.
fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|&threads| threads > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1);
        Team::start(threads - 1)
    })
}

/// Runs `task(i)` for every `i` in `0..parts` on the calling thread and the process's team
/// (see [`Team::for_each_part`]).
pub(crate) fn for_each_part(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    team().for_each_part(parts, task);
}

impl Team {
    /// Runs `task(i)` for every `i` in `0..parts` on the calling thread and the helpers,
    /// returning when all have run. Parts beyond [`MAX_PARTS`], a team without helpers and a
    /// call made while another uses the team all run inline. On every path, a panic in a part
    /// is raised here after every part has finished (the first one, if several panic).
    fn for_each_part(&self, parts: usize, task: Task) {
        let inline = || {
            let panic = FirstPanic::default();
            (0..parts).for_each(|part| panic.run(task, part));
            panic.raise();
        };
        if !(2..=MAX_PARTS).contains(&parts) || self.helpers.is_empty() {
            return inline();
        }
        let _guard = match self.caller.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return inline(),
        };
        let shared = self.shared;
        shared.finished.store(0, SeqCst);
        let task_ref: Task = task;
        shared
            .task
            .store(&task_ref as *const Task as *mut (), SeqCst);
        let call_epoch = (epoch(shared.claim.load(SeqCst)) + 1) & 0xffff_ffff;
        shared.claim.store(call_epoch << 32 | parts as u64, SeqCst);
        for (index, helper) in &self.helpers {
            if shared.parked[*index].load(SeqCst) {
                helper.unpark();
            }
        }
        shared.work(call_epoch);
        // The caller claimed until none was left: what remains are parts a helper is running.
        let mut spins = 0u32;
        while shared.finished.load(SeqCst) < parts {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A helper descheduled by a busy machine: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        shared.panic.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_exactly_once_across_many_calls() {
        for parts in [0, 1, 2, 3, 7, 64, 1000] {
            for _ in 0..50 {
                let counts: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
                for_each_part(parts, &|i| {
                    counts[i].fetch_add(1, SeqCst);
                });
                assert!(counts.iter().all(|c| c.load(SeqCst) == 1), "{parts} parts");
            }
        }
    }

    #[test]
    fn calls_from_several_threads_and_nested_calls_all_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        for_each_part(4, &|_| {
                            for_each_part(3, &|_| {
                                total.fetch_add(1, SeqCst);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 100 * 4 * 3);
    }

    /// Runs `parts` parts of about 500 us each on `team` and returns how many ran on a thread
    /// other than the caller's.
    fn parts_run_by_helpers(team: &Team, parts: usize) -> usize {
        let caller = std::thread::current().id();
        let by_helpers = AtomicUsize::new(0);
        team.for_each_part(parts, &|_| {
            let started = Instant::now();
            while started.elapsed() < Duration::from_micros(500) {
                std::hint::spin_loop();
            }
            if std::thread::current().id() != caller {
                by_helpers.fetch_add(1, SeqCst);
            }
        });
        by_helpers.load(SeqCst)
    }

    #[test]
    fn helpers_take_parts_and_a_parked_team_wakes_for_the_next_call() {
        // A team of its own: the process's may be busy with other tests' calls (then inline).
        let team = Team::start(1);
        for _ in 0..3 {
            assert!(parts_run_by_helpers(&team, 32) > 0, "a helper ran no part");
            // Longer than SPIN: the helper parks, and the next call must unpark it.
            std::thread::sleep(SPIN * 4);
        }
        // Without helpers everything runs on the caller.
        assert_eq!(parts_run_by_helpers(&Team::start(0), 8), 0);
    }

    #[test]
    fn the_first_panic_of_a_part_is_raised_after_every_other_part_ran_on_every_path() {
        let with_helper = Team::start(1);
        let without = Team::start(0);
        for (team, parts) in [(&with_helper, 16), (&without, 16), (&with_helper, 1)] {
            let finished = AtomicUsize::new(0);
            let result = catch_unwind(AssertUnwindSafe(|| {
                team.for_each_part(parts, &|i| {
                    if i == parts / 3 {
                        panic!("part {i}");
                    }
                    finished.fetch_add(1, SeqCst);
                })
            }));
            let payload = result.expect_err("the panic reaches the caller");
            let message = payload
                .downcast_ref::<String>()
                .expect("the part's own payload");
            assert_eq!(message, &format!("part {}", parts / 3));
            assert_eq!(finished.load(SeqCst), parts - 1);
            // And the team still works.
            let count = AtomicUsize::new(0);
            team.for_each_part(8, &|_| {
                count.fetch_add(1, SeqCst);
            });
            assert_eq!(count.load(SeqCst), 8);
        }
    }
}
