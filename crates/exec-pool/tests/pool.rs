//! The pool against real worker processes: this test binary is its own worker (it serves the
//! fake executor when `COE_POOL_TEST_WORKER` is set), so the tests need no sandbox.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coe_exec::testing::FakeExecutor;
use coe_exec::{ExecRequest, Executor, Limits, Status};
use coe_exec_pool::{ProcessPool, serve};

const WORKER: &str = "COE_POOL_TEST_WORKER";

/// Programs containing these make the fake worker sleep or exit before answering, fail as an
/// executor, or exit a moment after answering (so it dies while idle).
const SLEEP: &str = "# sleep";
const EXIT: &str = "# exit";
const BROKEN: &str = "# broken";
const EXIT_LATER: &str = "# die-while-idle";

/// The fake worker: the fake executor behind [`serve`], plus the two misbehaviours above.
struct Misbehaving(FakeExecutor);

impl Executor for Misbehaving {
    fn execute(
        &self,
        request: &ExecRequest<'_>,
    ) -> Result<coe_exec::Outcome, coe_exec::ExecutorError> {
        if request.program.contains(SLEEP) {
            std::thread::sleep(Duration::from_secs(60));
        }
        if request.program.contains(EXIT) {
            std::process::exit(3);
        }
        if request.program.contains(BROKEN) {
            return Err(coe_exec::ExecutorError::new("the fake is broken"));
        }
        if request.program.contains(EXIT_LATER) {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                std::process::exit(4);
            });
        }
        self.0.execute(request)
    }
}

fn worker_command(mode: &'static str) -> impl Fn() -> Command + Send + Sync + 'static {
    move || {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.env(WORKER, mode);
        command
    }
}

fn request<'a>(program: &'a str, tests: &'a [String], timeout_ms: u64) -> ExecRequest<'a> {
    ExecRequest {
        program,
        setup: "",
        tests,
        limits: Limits {
            timeout_ms,
            ..Limits::default()
        },
    }
}

fn outcomes_equal_the_executors_own() {
    let fake = FakeExecutor::passing_when("return 1");
    let pool = ProcessPool::new(2, worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned(), "assert f() != 2".to_owned()];
    for program in [
        "def f():\n    return 1\n",
        "def f():\n    return 2\n",
        "",
        "\u{e9}\n\"\\",
    ] {
        let request = request(program, &tests, 1_000);
        assert_eq!(
            pool.execute(&request).unwrap(),
            fake.execute(&request).unwrap()
        );
    }
}

fn calls_from_many_threads_all_get_their_own_outcome() {
    let pool = Arc::new(ProcessPool::new(2, worker_command("serve")).unwrap());
    let tests = vec!["assert f() == 1".to_owned()];
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let pool = Arc::clone(&pool);
            let tests = &tests;
            scope.spawn(move || {
                for i in 0..25 {
                    let passes = (thread + i) % 2 == 0;
                    let program = if passes { "return 1" } else { "return 2" };
                    let outcome = pool.execute(&request(program, tests, 1_000)).unwrap();
                    assert_eq!(outcome.is_passed(), passes, "thread {thread} call {i}");
                }
            });
        }
    });
}

fn a_worker_that_dies_costs_one_request() {
    let pool = ProcessPool::new(1, worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned()];
    let error = pool.execute(&request(EXIT, &tests, 1_000)).unwrap_err();
    assert!(error.to_string().contains("worker"), "{error}");
    // The slot starts a fresh worker for the next request.
    let outcome = pool.execute(&request("return 1", &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Passed);
}

fn a_silent_worker_is_killed_after_its_deadline() {
    let pool =
        ProcessPool::with_grace(1, Duration::from_millis(200), worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned()];
    let started = Instant::now();
    let error = pool.execute(&request(SLEEP, &tests, 100)).unwrap_err();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(error.to_string().contains("worker"), "{error}");
    let outcome = pool.execute(&request("return 1", &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Passed);
}

fn a_worker_that_cannot_start_is_an_error_not_a_panic() {
    let error = ProcessPool::new(1, || Command::new("/nonexistent/coe-worker")).unwrap_err();
    assert!(
        error.to_string().contains("cannot start a worker"),
        "{error}"
    );
}

fn a_bad_request_line_gets_an_error_reply_and_the_worker_goes_on() {
    let fake = FakeExecutor::passing_when("return 1");
    let input =
        "not json\n{\"program\":\"return 1\",\"setup\":\"\",\"tests\":[\"t\"],\"limits\":{}}\n";
    let mut output = Vec::new();
    serve(&fake, input.as_bytes(), &mut output).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["ready"], coe_exec_pool::PROTOCOL);
    assert!(lines[1]["err"].as_str().unwrap().contains("not a request"));
    assert_eq!(lines[2]["ok"]["status"], "passed");
}

fn a_line_that_is_not_utf8_gets_an_error_reply() {
    let fake = FakeExecutor::passing_when("return 1");
    let mut output = Vec::new();
    serve(&fake, &b"\xff\xfe\n"[..], &mut output).unwrap();
    let text = String::from_utf8(output).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains("not a request"),
        "{text}"
    );
}

fn an_executor_error_is_an_error_and_the_worker_stays() {
    let pool = ProcessPool::new(1, worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned()];
    let error = pool.execute(&request(BROKEN, &tests, 1_000)).unwrap_err();
    assert!(error.to_string().contains("the fake is broken"), "{error}");
    let outcome = pool.execute(&request("return 1", &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Passed);
}

fn a_worker_that_dies_while_idle_costs_no_request() {
    let pool = ProcessPool::new(1, worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned()];
    let outcome = pool.execute(&request(EXIT_LATER, &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Failed);
    std::thread::sleep(Duration::from_millis(500));
    let outcome = pool.execute(&request("return 1", &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Passed);
}

fn a_request_larger_than_a_pipe_buffer_goes_through() {
    let pool = ProcessPool::new(1, worker_command("serve")).unwrap();
    let tests = vec!["assert f() == 1".to_owned(); 100];
    let program = format!("{}\nreturn 1\n", "x = 1\n".repeat(100_000));
    let outcome = pool.execute(&request(&program, &tests, 1_000)).unwrap();
    assert_eq!(outcome.status, Status::Passed);
    assert_eq!(outcome.tests.len(), 100);
}

fn a_worker_that_dies_before_it_is_ready_fails_the_pool() {
    let error = ProcessPool::new(2, worker_command("die")).unwrap_err();
    assert!(error.to_string().contains("did not start"), "{error}");
}

/// This process's children, zombies included (they stay children until reaped).
#[cfg(target_os = "linux")]
fn children() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| {
            let path = task.unwrap().path().join("children");
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

fn dropping_the_pool_reaps_its_workers() {
    #[cfg(target_os = "linux")]
    {
        let before = children();
        let pool = ProcessPool::new(2, worker_command("serve")).unwrap();
        assert_eq!(children(), before + 2);
        // One worker replaced after it died: the dead one must be reaped as well.
        let tests = vec!["assert f() == 1".to_owned()];
        let _ = pool.execute(&request(EXIT, &tests, 1_000));
        drop(pool);
        assert_eq!(children(), before);
    }
}

fn main() {
    if std::env::var_os(WORKER).is_some_and(|mode| mode == "die") {
        std::process::exit(5);
    }
    if std::env::var_os(WORKER).is_some() {
        let executor = Misbehaving(FakeExecutor::passing_when("return 1"));
        let stdin = std::io::stdin().lock();
        serve(&executor, stdin, std::io::stdout().lock()).unwrap();
        return;
    }
    let tests: [(&str, fn()); 12] = [
        (
            "outcomes_equal_the_executors_own",
            outcomes_equal_the_executors_own,
        ),
        (
            "calls_from_many_threads_all_get_their_own_outcome",
            calls_from_many_threads_all_get_their_own_outcome,
        ),
        (
            "a_worker_that_dies_costs_one_request",
            a_worker_that_dies_costs_one_request,
        ),
        (
            "a_silent_worker_is_killed_after_its_deadline",
            a_silent_worker_is_killed_after_its_deadline,
        ),
        (
            "a_worker_that_cannot_start_is_an_error_not_a_panic",
            a_worker_that_cannot_start_is_an_error_not_a_panic,
        ),
        (
            "a_bad_request_line_gets_an_error_reply_and_the_worker_goes_on",
            a_bad_request_line_gets_an_error_reply_and_the_worker_goes_on,
        ),
        (
            "a_line_that_is_not_utf8_gets_an_error_reply",
            a_line_that_is_not_utf8_gets_an_error_reply,
        ),
        (
            "an_executor_error_is_an_error_and_the_worker_stays",
            an_executor_error_is_an_error_and_the_worker_stays,
        ),
        (
            "a_worker_that_dies_while_idle_costs_no_request",
            a_worker_that_dies_while_idle_costs_no_request,
        ),
        (
            "a_request_larger_than_a_pipe_buffer_goes_through",
            a_request_larger_than_a_pipe_buffer_goes_through,
        ),
        (
            "a_worker_that_dies_before_it_is_ready_fails_the_pool",
            a_worker_that_dies_before_it_is_ready_fails_the_pool,
        ),
        (
            "dropping_the_pool_reaps_its_workers",
            dropping_the_pool_reaps_its_workers,
        ),
    ];
    for (name, test) in tests {
        print!("test {name} ... ");
        std::io::stdout().flush().unwrap();
        test();
        println!("ok");
    }
    println!("test result: ok. {} passed", tests.len());
}
