//! `coe serve`: the sandbox as an HTTP service (`coe-serve`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use coe_exec::Limits;
use coe_serve::ServeConfig;

use super::{Parallelism, executor, read_text};
use crate::Failure;

/// Options of `coe serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. The default is loopback only; listening beyond it, set --token-file.
    #[arg(long, value_name = "ADDR", default_value_t = coe_serve::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Programs running at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Run programs in worker processes (scales with cores) or in threads of this process.
    #[arg(long, value_enum, default_value_t = Parallelism::Processes)]
    parallel: Parallelism,
    /// Runs that may wait for a worker; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_queue)]
    max_queue: usize,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// A file holding the bearer token every request but /health and /v1/ping must carry.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The longest time limit a request may ask for, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_limits.timeout_ms)]
    max_timeout_ms: u64,
    /// The longest a run waits for a worker, in milliseconds; past it the request gets 504.
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_queue_wait.as_millis() as u64)]
    max_queue_wait_ms: u64,
    /// The largest memory limit a request may ask for, in MiB (also what one that asks none gets).
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_limits.memory_mib)]
    max_memory_mib: u64,
}

pub(crate) fn serve(args: ServeArgs) -> Result<(), Failure> {
    let token = match &args.token_file {
        Some(path) => {
            let token = read_text(path)?.trim().to_string();
            if token.is_empty() {
                return Err(Failure::Input(format!("coe: {} is empty", path.display())));
            }
            Some(token)
        }
        None => None,
    };
    if args.max_queue == 0 || args.max_body_bytes == 0 {
        return Err(Failure::Input(
            "coe: --max-queue and --max-body-bytes must be at least 1".into(),
        ));
    }
    let defaults = ServeConfig::default();
    let config = ServeConfig {
        workers: args.workers.unwrap_or(defaults.workers).max(1),
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_bytes,
        token,
        max_limits: Limits {
            timeout_ms: args.max_timeout_ms.max(1),
            memory_mib: args.max_memory_mib.max(1),
            ..defaults.max_limits
        },
        max_queue_wait: std::time::Duration::from_millis(args.max_queue_wait_ms),
        ..defaults
    };
    let sandbox = executor(config.workers, args.parallel)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(format!("coe: cannot start the server's runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Failure::Input(format!("coe: cannot listen on {}: {e}", args.listen)))?;
        let address = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(
            "coe serve: listening on http://{address} ({} workers, queue {}{})",
            config.workers,
            config.max_queue,
            if config.token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
        if !address.ip().is_loopback() && config.token.is_none() {
            tracing::warn!("coe serve: listening beyond loopback without --token-file");
        }
        let router = coe_serve::router(sandbox, config);
        coe_serve::serve(listener, router, coe_serve::shutdown_signal())
            .await
            .map_err(|e| Failure::Internal(format!("coe: the server stopped: {e}")))?;
        tracing::info!("coe serve: stopped");
        Ok(())
    })
}
