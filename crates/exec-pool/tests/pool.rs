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

/// Programs containing this make the fake worker sleep, or exit, before answering.
const SLEEP: &str = "# sleep";
const EXIT: &str = "# exit";

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
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["err"].as_str().unwrap().contains("not a request"));
    assert_eq!(lines[1]["ok"]["status"], "passed");
}

fn main() {
    if std::env::var_os(WORKER).is_some() {
        let executor = Misbehaving(FakeExecutor::passing_when("return 1"));
        let stdin = std::io::stdin().lock();
        serve(&executor, stdin, std::io::stdout().lock()).unwrap();
        return;
    }
    let tests: [(&str, fn()); 6] = [
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
    ];
    for (name, test) in tests {
        print!("test {name} ... ");
        std::io::stdout().flush().unwrap();
        test();
        println!("ok");
    }
    println!("test result: ok. {} passed", tests.len());
}
