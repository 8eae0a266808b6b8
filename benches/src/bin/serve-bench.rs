//! `coe serve` under load against `coe check` on the same programs with the same workers, in one
//! run: N concurrent clients post MBPP programs with their tests to `/v1/run` on loopback for a
//! bounded time and number of requests; then `coe check` runs the same programs. Prints
//! throughput, p50/p99 latency, errors and the server's memory before and after, as Markdown.
//! `cargo xtask bench serve` builds and runs it.
//!
//! Usage: `serve-bench --coe PATH [--workers N] [--clients N] [--seconds S] [--max-requests N]
//! [--repeats N]`

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use coe_benches::{at_least_one, mbpp, percentile, process_resident_kib};

/// `coe serve` under concurrent clients against `coe check`, with the server's memory.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The `coe` binary (cargo xtask bench serve passes it).
    #[arg(long)]
    coe: PathBuf,
    /// The server's sandbox workers.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    workers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    clients: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Requests per round at most.
    #[arg(long, default_value_t = 100_000)]
    max_requests: usize,
    /// Rounds.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    repeats: usize,
}

/// The service's side of one round.
struct Load {
    requests: usize,
    errors: usize,
    wall_s: f64,
    latencies_ms: Vec<f64>,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    fn start(coe: &PathBuf, workers: usize) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        drop(listener);
        let child = Command::new(coe)
            .args(["serve", "--listen", &address.to_string(), "--workers"])
            .arg(workers.to_string())
            .args(["--max-queue", "4096"])
            .stderr(Stdio::null())
            .spawn()
            .context("starting coe serve")?;
        let server = Self {
            child,
            url: format!("http://{address}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while ureq::get(&format!("{}/health", server.url)).call().is_err() {
            if Instant::now() > deadline {
                bail!("coe serve did not answer /health within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn rss_mib(&self) -> f64 {
        process_resident_kib(self.child.id()).map_or(f64::NAN, |kib| kib as f64 / 1024.0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM: the server's graceful path.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn load(args: &Args, bodies: &Arc<Vec<String>>) -> Result<Load> {
    let server = ServerProcess::start(&args.coe, args.workers)?;
    // One warm-up request per worker, so the first runs' set-up is not in the figures.
    for body in bodies.iter().take(args.workers) {
        post(&server.url, body)?;
    }
    let rss_before_mib = server.rss_mib();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let (bodies, next, url) = (bodies.clone(), next.clone(), server.url.clone());
            let max = args.max_requests;
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max {
                        break;
                    }
                    let sent = Instant::now();
                    match post(&url, &bodies[i % bodies.len()]) {
                        Ok(()) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    let mut errors = 0;
    for thread in threads {
        let (l, e) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))?;
        latencies_ms.extend(l);
        errors += e;
    }
    let wall_s = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Load {
        requests: latencies_ms.len() + errors,
        errors,
        wall_s,
        latencies_ms,
        rss_before_mib,
        rss_after_mib: server.rss_mib(),
    })
}

/// One `/v1/run`; an error unless the reply is 200 with an outcome.
fn post(url: &str, body: &str) -> Result<()> {
    let reply: serde_json::Value = ureq::post(&format!("{url}/v1/run"))
        .set("Content-Type", "application/json")
        .send_string(body)?
        .into_json()?;
    if reply["status"].as_str().is_none() {
        bail!("no status in {reply}");
    }
    Ok(())
}

/// `coe check` over `tasks_file` (`copies` times each task) with `workers` jobs: runs/s.
fn check(args: &Args, tasks_file: &PathBuf, runs: usize) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(&args.coe)
        .arg("check")
        .arg(tasks_file)
        .args(["--jobs", &args.workers.to_string()])
        .stderr(Stdio::null())
        .output()
        .context("running coe check")?;
    let wall = started.elapsed().as_secs_f64();
    let lines = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    if lines != runs {
        bail!("coe check printed {lines} outcomes for {runs} tasks");
    }
    Ok(runs as f64 / wall)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tasks = mbpp()?;
    let bodies: Arc<Vec<String>> = Arc::new(
        tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task_id": t.task_id, "program": t.code, "setup": t.setup(), "tests": t.tests,
                })
                .to_string()
            })
            .collect(),
    );
    let mut medians = Vec::new();
    println!(
        "coe serve (/v1/run, {} clients, {} workers, up to {} s) against coe check (--jobs {}), MBPP programs with their tests, loopback:",
        args.clients, args.workers, args.seconds, args.workers
    );
    println!();
    println!(
        "| round | serve runs/s | p50 ms | p99 ms | errors | server RSS MiB before -> after | coe check runs/s | serve / check |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for round in 1..=args.repeats {
        let served = load(&args, &bodies)?;
        // coe check on as many runs as the service answered (whole copies of the task list).
        let copies = served.requests.div_ceil(tasks.len()).max(1);
        let tasks_file =
            std::env::temp_dir().join(format!("coe-serve-bench-{}.jsonl", std::process::id()));
        let mut file = std::fs::File::create(&tasks_file)?;
        for _ in 0..copies {
            for task in &tasks {
                writeln!(file, "{}", serde_json::to_string(task)?)?;
            }
        }
        drop(file);
        let checked = check(&args, &tasks_file, copies * tasks.len())?;
        std::fs::remove_file(&tasks_file).ok();
        let serve_rate = (served.requests - served.errors) as f64 / served.wall_s;
        println!(
            "| {round} | {serve_rate:.1} | {:.1} | {:.1} | {} | {:.0} -> {:.0} | {checked:.1} | {:.2} |",
            percentile(&served.latencies_ms, 50.0),
            percentile(&served.latencies_ms, 99.0),
            served.errors,
            served.rss_before_mib,
            served.rss_after_mib,
            serve_rate / checked
        );
        medians.push(serve_rate / checked);
    }
    medians.sort_by(f64::total_cmp);
    println!();
    println!("median serve / check: {:.2}", percentile(&medians, 50.0));
    Ok(())
}
