//! coe-serve: coe's sandbox as an HTTP service (`coe serve`).
//!
//! - `POST /run_code`: SandboxFusion's API for `language: "python"` ([`fusion`]), so Python RL
//!   stacks that speak it (verl's code reward) can point at coe with no code change.
//! - `POST /v1/run`: coe's own request (program, setup, tests, limits); the reply is the JSON of
//!   `coe run --json`. `POST /v1/check`: a batch of tasks, the JSON of `coe check`'s lines.
//! - `GET /health`, `GET /v1/ping` (SandboxFusion's), `GET /metrics` (Prometheus text).
//!
//! Runs go to a bounded pool of blocking workers behind a bounded queue; a full queue answers
//! 503 with `Retry-After`. Limits a request asks for are clamped to the server's maxima; bodies
//! over the size limit get 413, bad JSON 400 with a message, a missing or wrong bearer token 401
//! (when the server has one). The server keeps no state between requests, so it scales as plain
//! replicas behind any load balancer.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod fusion;
mod metrics;
mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coe_exec::{Limits, Outcome, OutcomeJson};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use pool::{Job, QueueFull, SharedExecutor};

use crate::metrics::Metrics;
use crate::pool::{NotRun, Pool};

/// The server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Programs running at once.
    pub workers: usize,
    /// Runs that may wait for a worker; more are refused with 503.
    pub max_queue: usize,
    /// Largest request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// When set, every endpoint but `/health` and `/v1/ping` wants `Authorization: Bearer
    /// <token>`.
    pub token: Option<String>,
    /// The most a request may ask for; also what a request that asks nothing gets, except the
    /// time limit of `/v1/run` and `/v1/check`, which defaults to coe's usual limit.
    pub max_limits: Limits,
    /// Seconds a client told "queue full" should wait (`Retry-After`).
    pub retry_after_s: u32,
    /// The longest a run waits for a worker; past it the request gets 504, which verl's
    /// client retries (its own timeout is 30 s by default).
    pub max_queue_wait: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            // verl sends up to 64 requests at once by default and does not retry a 503.
            max_queue: 256,
            max_body_bytes: 1 << 20,
            token: None,
            max_limits: Limits {
                timeout_ms: 30_000,
                memory_mib: 1024,
                output_bytes: 1 << 20,
            },
            retry_after_s: 1,
            max_queue_wait: Duration::from_secs(20),
        }
    }
}

/// What every request handler shares.
struct App {
    config: ServeConfig,
    pool: Pool,
    metrics: Arc<Metrics>,
}

/// The service's routes, running programs with `executor`.
pub fn router(executor: SharedExecutor, config: ServeConfig) -> Router {
    let metrics = Arc::new(Metrics::new(config.workers));
    let app = Arc::new(App {
        pool: Pool::new(
            executor,
            config.workers,
            config.max_queue,
            config.max_queue_wait,
            metrics.clone(),
        ),
        metrics,
        config,
    });
    let guarded = Router::new()
        .route("/run_code", post(run_code))
        .route("/v1/run", post(run))
        .route("/v1/check", post(check))
        .route("/metrics", get(metrics_text))
        .route_layer(from_fn_with_state(app.clone(), authorize))
        .route_layer(from_fn_with_state(app.clone(), timed));
    Router::new()
        .route("/health", get(health))
        .route("/v1/ping", get(|| async { "pong" }))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` resolves; requests in flight then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let interrupt = async {
        // Without a handler (it could not be installed) only SIGTERM stops the server.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Where `coe serve` listens by default: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

fn not_run_status(not_run: &NotRun) -> &'static str {
    match not_run {
        NotRun::Failed(_) => "sandbox_error",
        NotRun::WaitedTooLong(_) => "queue_timeout",
    }
}

fn queue_full(app: &App) -> Response {
    app.metrics.refused("queue_full");
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "all {} workers are busy and {} runs are waiting: retry later",
            app.config.workers,
            app.pool.waiting()
        ),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(app.config.retry_after_s),
    );
    response
}

/// A request refused before it ran: its status and why.
struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// The request body as `T`, or why not.
fn parse<T: DeserializeOwned>(
    app: &App,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Refused> {
    let bytes = body.map_err(|rejection| {
        app.metrics.refused("bad_body");
        Refused {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        app.metrics.refused("bad_json");
        Refused {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid request: {e}"),
        }
    })
}

/// Records every answer's latency under its route, refusals included.
async fn timed(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let endpoint = match request.uri().path() {
        "/run_code" => "run_code",
        "/v1/run" => "v1_run",
        "/v1/check" => "v1_check",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics
        .latency(endpoint, started.elapsed().as_secs_f64());
    response
}

async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.config.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    app.metrics.refused("unauthorized");
    let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "workers": app.config.workers,
        "workers_busy": app.metrics.workers_busy.get(),
        "queue_depth": app.pool.waiting(),
        "max_queue": app.config.max_queue,
    }))
    .into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    app.metrics.queue_depth.set(app.pool.waiting() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.text(),
    )
        .into_response()
}

async fn run_code(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: fusion::RunCodeRequest = match parse(&app, body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let reply = if let Some(why) = fusion::unsupported(&request) {
        app.metrics.run("run_code", "unsupported");
        fusion::RunCodeResponse::sandbox_error(why)
    } else {
        let limits = fusion::limits(&request, app.config.max_limits);
        let job = Job {
            program: fusion::program(&request.code, request.stdin.as_deref()),
            setup: String::new(),
            tests: Vec::new(),
            limits,
        };
        match one(&app, "run_code", job).await {
            Ok(Ok(outcome)) => fusion::response(&outcome, limits),
            Ok(Err(NotRun::Failed(message))) => fusion::RunCodeResponse::sandbox_error(message),
            Ok(Err(NotRun::WaitedTooLong(wait))) => return waited_too_long(wait),
            Err(response) => return response,
        }
    };
    axum::Json(reply).into_response()
}

/// 504: no worker was free in time (a status verl's client retries).
fn waited_too_long(wait: Duration) -> Response {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "no sandbox worker was free within {} s: retry",
            wait.as_secs_f64()
        ),
    )
}

/// Runs one job; `Err` is the reply for a full queue, `Ok(Err)` why it did not run.
async fn one(app: &App, endpoint: &str, job: Job) -> Result<Result<Outcome, NotRun>, Response> {
    let mut results = app
        .pool
        .run(vec![job])
        .await
        .map_err(|QueueFull| queue_full(app))?;
    let result = results
        .pop()
        .unwrap_or_else(|| Err(NotRun::Failed("no result".into())));
    Ok(match result {
        Ok(outcome) => {
            app.metrics.run(endpoint, outcome.status.as_str());
            Ok(outcome)
        }
        Err(not_run) => {
            app.metrics.run(endpoint, not_run_status(&not_run));
            Err(not_run)
        }
    })
}

/// Limits a request may ask for, each clamped to the server's maximum; one it leaves out gets
/// the default time limit or the maximum memory and output.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsRequest {
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) memory_mib: Option<u64>,
    pub(crate) output_bytes: Option<u64>,
}

impl LimitsRequest {
    pub(crate) fn clamped(self, default_timeout_ms: u64, max: Limits) -> Limits {
        let pick =
            |asked: Option<u64>, default: u64, max: u64| asked.unwrap_or(default).min(max).max(1);
        Limits {
            timeout_ms: pick(self.timeout_ms, default_timeout_ms, max.timeout_ms),
            memory_mib: pick(self.memory_mib, max.memory_mib, max.memory_mib),
            output_bytes: pick(self.output_bytes, max.output_bytes, max.output_bytes),
        }
    }
}

/// A program with its tests, as `/v1/run` takes it and each task of `/v1/check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    task_id: Option<String>,
    /// `code` too, as coe's task files name it.
    #[serde(alias = "code")]
    program: String,
    #[serde(default)]
    setup: String,
    #[serde(default)]
    tests: Vec<String>,
    #[serde(default)]
    limits: LimitsRequest,
}

impl RunRequest {
    fn job(&self, limits: Limits) -> Job {
        Job {
            program: self.program.clone(),
            setup: self.setup.clone(),
            tests: self.tests.clone(),
            limits,
        }
    }
}

async fn run(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: RunRequest = match parse(&app, body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let job = request.job(
        request
            .limits
            .clamped(Limits::default().timeout_ms, app.config.max_limits),
    );
    match one(&app, "v1_run", job).await {
        Ok(Ok(outcome)) => axum::Json(OutcomeJson::new(
            &outcome,
            request.tests.len(),
            request.task_id.as_deref(),
        ))
        .into_response(),
        Ok(Err(NotRun::Failed(message))) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Ok(Err(NotRun::WaitedTooLong(wait))) => waited_too_long(wait),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    tasks: Vec<RunRequest>,
    /// Limits of every task, for each limit the task does not set itself.
    #[serde(default)]
    limits: Option<LimitsRequest>,
}

async fn check(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: CheckRequest = match parse(&app, body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    if request.tasks.len() > app.config.max_queue {
        app.metrics.refused("batch_too_large");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch holds at most {} tasks (the server's queue)",
                app.config.max_queue
            ),
        );
    }
    let jobs: Vec<Job> = request
        .tasks
        .iter()
        .map(|task| {
            let batch = request.limits.unwrap_or_default();
            let asked = LimitsRequest {
                timeout_ms: task.limits.timeout_ms.or(batch.timeout_ms),
                memory_mib: task.limits.memory_mib.or(batch.memory_mib),
                output_bytes: task.limits.output_bytes.or(batch.output_bytes),
            };
            task.job(asked.clamped(Limits::default().timeout_ms, app.config.max_limits))
        })
        .collect();
    let results = match app.pool.run(jobs).await {
        Ok(results) => results,
        Err(QueueFull) => return queue_full(&app),
    };
    let mut lines = Vec::with_capacity(results.len());
    for (task, result) in request.tasks.iter().zip(&results) {
        match result {
            Ok(outcome) => {
                app.metrics.run("v1_check", outcome.status.as_str());
                lines.push(
                    serde_json::to_value(OutcomeJson::new(
                        outcome,
                        task.tests.len(),
                        task.task_id.as_deref(),
                    ))
                    .unwrap_or_default(),
                );
            }
            // The others' results stand; this task says what failed.
            Err(not_run) => {
                let status = not_run_status(not_run);
                app.metrics.run("v1_check", status);
                let message = match not_run {
                    NotRun::Failed(message) => message.clone(),
                    NotRun::WaitedTooLong(wait) => {
                        format!("no sandbox worker was free within {} s", wait.as_secs_f64())
                    }
                };
                lines.push(serde_json::json!({
                    "task_id": task.task_id, "status": status, "message": message,
                }));
            }
        }
    }
    axum::Json(serde_json::json!({ "results": lines })).into_response()
}
