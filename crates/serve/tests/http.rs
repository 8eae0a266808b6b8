//! The HTTP layer with a fake executor: statuses, limits, authentication, the queue, metrics.

mod common;

use std::sync::{Arc, Condvar, Mutex};

use coe_exec::testing::FakeExecutor;
use coe_exec::{ExecRequest, Executor, ExecutorError, Outcome};
use coe_serve::ServeConfig;
use common::Server;

fn config() -> ServeConfig {
    ServeConfig {
        workers: 2,
        max_queue: 8,
        max_body_bytes: 4096,
        ..ServeConfig::default()
    }
}

fn fake() -> FakeExecutor {
    FakeExecutor::passing_when("fixed")
}

#[test]
fn health_ping_and_metrics_answer() {
    let server = Server::start(Arc::new(fake()), config());
    let (status, body) = server.get("/health", None);
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["workers"].as_u64()),
        (Some("ok"), Some(2))
    );
    assert_eq!(server.get("/v1/ping", None), (200, "pong".to_string()));
    server.post("/v1/run", r#"{"program": "fixed", "tests": ["assert 1"]}"#);
    let (status, text) = server.get("/metrics", None);
    assert_eq!(status, 200);
    for line in [
        r#"coe_runs_total{endpoint="v1_run",status="passed"} 1"#,
        "coe_queue_depth 0",
        "coe_workers_busy 0",
        "coe_workers 2",
        "coe_request_duration_seconds_count{endpoint=\"v1_run\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

#[test]
fn v1_run_replies_as_coe_run_json() {
    let server = Server::start(Arc::new(fake()), config());
    let (status, _, reply) = server.post(
        "/v1/run",
        r#"{"program": "broken", "tests": ["assert f(1) == 2", "assert True"], "limits": {"timeout_ms": 500}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(reply["status"], "failed");
    assert_eq!(
        (
            reply["tests_passed"].as_u64(),
            reply["tests_total"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(reply["error"]["type"], "AssertionError");
    // coe's task files say `code`; that works too.
    let (_, _, reply) = server.post("/v1/run", r#"{"code": "fixed", "tests": ["assert 1"]}"#);
    assert_eq!(reply["status"], "passed");
}

#[test]
fn v1_check_answers_every_task_in_order() {
    let server = Server::start(Arc::new(fake()), config());
    let tasks: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            serde_json::json!({
                "task_id": format!("t{i}"),
                "program": if i % 2 == 0 { "fixed" } else { "broken" },
                "tests": ["assert f()"],
            })
        })
        .collect();
    let body = serde_json::json!({ "tasks": tasks, "limits": { "timeout_ms": 1000 } });
    let (status, _, reply) = server.post("/v1/check", &body.to_string());
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["task_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, &str)> = (0..6)
        .map(|i| {
            (
                format!("t{i}"),
                if i % 2 == 0 { "passed" } else { "failed" },
            )
        })
        .collect();
    let expected: Vec<(&str, &str)> = expected.iter().map(|(t, s)| (t.as_str(), *s)).collect();
    assert_eq!(seen, expected);
    // A batch larger than the queue can never run: 413, not a 503 to retry forever.
    let big = serde_json::json!({ "tasks": vec![serde_json::json!({"program": "x"}); 9] });
    assert_eq!(server.post("/v1/check", &big.to_string()).0, 413);
}

#[test]
fn bad_requests_get_a_status_and_a_message() {
    let server = Server::start(Arc::new(fake()), config());
    for (path, body) in [
        ("/v1/run", "{not json"),
        ("/v1/run", r#"{"tests": []}"#),
        ("/v1/run", r#"{"program": "x", "surprise": 1}"#),
        ("/run_code", r#"{"language": "python"}"#),
        ("/v1/check", r#"{"tasks": "no"}"#),
    ] {
        let (status, _, reply) = server.post(path, body);
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid request"),
            "{reply}"
        );
    }
    let huge = format!(r#"{{"program": "{}"}}"#, "x".repeat(5000));
    let (status, _, reply) = server.post("/v1/run", &huge);
    assert_eq!(status, 413, "{reply}");
    assert!(reply["error"].is_string());
    // Nothing of it reached the executor, and the server still answers.
    assert_eq!(server.post("/v1/run", r#"{"program": "fixed"}"#).0, 200);
}

#[test]
fn run_code_refuses_what_it_cannot_run_with_a_sandbox_error() {
    let executor = fake();
    let server = Server::start(Arc::new(executor.clone()), config());
    for body in [
        r#"{"code": "int main() {}", "language": "cpp"}"#,
        r#"{"code": "print(1)", "language": "python", "files": {"data.txt": "aGk="}}"#,
        r#"{"code": "print(1)", "language": "python", "fetch_files": ["out.txt"]}"#,
    ] {
        let (status, _, reply) = server.post("/run_code", body);
        assert_eq!(status, 200);
        assert_eq!(reply["status"], "SandboxError", "{reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
        assert!(reply["compile_result"].is_null());
    }
    assert_eq!(executor.runs(), 0);
    // A broken executor is a SandboxError for /run_code and a 500 for /v1/run.
    executor.set_broken(true);
    let (status, _, reply) = server.post("/run_code", r#"{"code": "x", "language": "python"}"#);
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("SandboxError"))
    );
    assert_eq!(server.post("/v1/run", r#"{"program": "x"}"#).0, 500);
    // In a batch, the failed task says so and the batch still answers.
    let (status, _, reply) = server.post(
        "/v1/check",
        r#"{"tasks": [{"task_id": "a", "program": "x"}]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(reply["results"][0]["status"], "sandbox_error", "{reply}");
}

#[test]
fn a_token_guards_everything_but_health() {
    let server = Server::start(
        Arc::new(fake()),
        ServeConfig {
            token: Some("s3cret".into()),
            ..config()
        },
    );
    let body = r#"{"program": "fixed"}"#;
    assert_eq!(server.post("/v1/run", body).0, 401);
    assert_eq!(server.post_with("/v1/run", body, Some("wrong")).0, 401);
    assert_eq!(server.post_with("/v1/run", body, Some("s3cret")).0, 200);
    // The scheme is case-insensitive (RFC 7235).
    let lower = ureq::post(&server.url("/v1/run"))
        .set("Authorization", "bearer s3cret")
        .send_string(body)
        .map(|r| r.status());
    assert_eq!(lower.ok(), Some(200));
    assert_eq!(server.get("/metrics", None).0, 401);
    assert_eq!(server.get("/metrics", Some("s3cret")).0, 200);
    assert_eq!(server.get("/health", None).0, 200);
}

/// Holds every run until opened, so the test controls how many are in flight.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<(bool, usize)>, Condvar)>,
}

impl Gate {
    fn open(&self) {
        self.state.0.lock().unwrap().0 = true;
        self.state.1.notify_all();
    }

    fn wait_for_runs(&self, n: usize) {
        let guard = self.state.0.lock().unwrap();
        let _unused = self
            .state
            .1
            .wait_while(guard, |(_, started)| *started < n)
            .unwrap();
    }
}

impl Executor for Gate {
    fn execute(&self, request: &ExecRequest<'_>) -> Result<Outcome, ExecutorError> {
        let (lock, condvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        state.1 += 1;
        condvar.notify_all();
        let _open = condvar.wait_while(state, |(open, _)| !*open).unwrap();
        FakeExecutor::passing_when("fixed").execute(request)
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_loses_nothing() {
    let gate = Gate::default();
    let server = Arc::new(Server::start(
        Arc::new(gate.clone()),
        ServeConfig {
            workers: 1,
            max_queue: 1,
            retry_after_s: 3,
            ..config()
        },
    ));
    let send = |server: &Arc<Server>| {
        let server = server.clone();
        std::thread::spawn(move || server.post("/v1/run", r#"{"program": "fixed"}"#).0)
    };
    // One runs, one waits for the worker.
    let running = send(&server);
    gate.wait_for_runs(1);
    let waiting = send(&server);
    // Wait until the second is queued: /health says so.
    while {
        let health: serde_json::Value =
            serde_json::from_str(&server.get("/health", None).1).unwrap();
        health["queue_depth"].as_u64() != Some(1)
    } {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The queue holds 1: a third request is refused at once, with when to come back.
    let (status, retry_after, reply) = server.post("/v1/run", r#"{"program": "fixed"}"#);
    assert_eq!(status, 503, "{reply}");
    assert_eq!(retry_after.as_deref(), Some("3"));
    assert!(
        reply["error"].as_str().unwrap().contains("retry later"),
        "{reply}"
    );
    gate.open();
    assert_eq!(running.join().unwrap(), 200);
    assert_eq!(waiting.join().unwrap(), 200);
    let metrics = server.get("/metrics", None).1;
    assert!(
        metrics.contains(r#"coe_refused_requests_total{reason="queue_full"}"#),
        "{metrics}"
    );
}

#[test]
fn a_shutdown_answers_the_requests_in_flight_first() {
    let gate = Gate::default();
    let mut server = Server::start(Arc::new(gate.clone()), config());
    let url = server.url("/v1/run");
    let in_flight = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"program": "fixed", "tests": ["assert 1"]}"#)
            .map(|response| response.status())
            .map_err(|e| e.to_string())
    });
    gate.wait_for_runs(1);
    server.stop();
    // The server stops accepting; the run in flight still gets its answer.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        ureq::get(&server.url("/health")).call().is_err(),
        "still accepting after the stop"
    );
    gate.open();
    assert_eq!(in_flight.join().unwrap(), Ok(200));
}

#[test]
fn a_run_that_waits_too_long_for_a_worker_gets_504() {
    let gate = Gate::default();
    let server = Arc::new(Server::start(
        Arc::new(gate.clone()),
        ServeConfig {
            workers: 1,
            max_queue_wait: std::time::Duration::from_millis(100),
            ..config()
        },
    ));
    let running = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/v1/run", r#"{"program": "fixed"}"#).0)
    };
    gate.wait_for_runs(1);
    // 504 is what verl's client retries.
    let (status, _, reply) = server.post("/run_code", r#"{"code": "x", "language": "python"}"#);
    assert_eq!(status, 504, "{reply}");
    let body = r#"{"tasks": [{"task_id": "late", "program": "fixed"}]}"#;
    let (status, _, reply) = server.post("/v1/check", body);
    assert_eq!(
        (status, reply["results"][0]["status"].as_str()),
        (200, Some("queue_timeout"))
    );
    gate.open();
    assert_eq!(running.join().unwrap(), 200);
    // The waits left nothing behind: the worker takes the next run at once.
    assert_eq!(server.post("/v1/run", r#"{"program": "fixed"}"#).0, 200);
}
