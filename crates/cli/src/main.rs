//! `coe`: Chain-of-Edits from the command line.
//!
//! Exit codes: 0 on success (whatever the Python program itself did), 1 when coe itself failed
//! (for instance the sandbox could not start), 2 for a usage error or bad input (unreadable
//! file, a command that does not parse or apply, a malformed task).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cmd;
mod html;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coe_exec::Limits;

const ABOUT: &str = "\
Chain-of-Edits: a small language model repairs a broken Python program by driving an edit tool,
one command per turn, while the program and its unit tests run in a WebAssembly sandbox.

The edit language (line numbers are 1-based, text after >>> is verbatim):
  ADDL <n> >>><text>          insert <text> so that it becomes line n
  REPL <n> >>><text>          replace line n with <text>
  REPW <n> >>><old> >>><new>  in line n, replace every <old> by <new>
  DELL <n>                    delete line n
  EXIT                        end the episode";

const AFTER_HELP: &str = "\
Exit codes: 0 success (whatever the Python program did); 1 coe itself failed; 2 usage error or
bad input.";

#[derive(Debug, Parser)]
#[command(name = "coe", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Apply edit commands (one per line) to a program and print the result.
    ///
    /// Blank lines in EDITS are skipped and EXIT stops reading. The program keeps its line
    /// ending style. A command that does not parse or apply stops with exit code 2 and
    /// `edits line N: message` on stderr; nothing is printed to stdout then.
    Apply {
        /// The Python program to edit.
        program: PathBuf,
        /// The commands, one per line.
        edits: PathBuf,
    },
    /// Run a program, then each test, in the sandbox and print the outcome.
    ///
    /// Exit code 0 whatever the program did: the outcome says it.
    Run {
        /// The Python program.
        program: PathBuf,
        /// A test snippet (usually one assert), run after the program; repeatable.
        #[arg(long = "test", value_name = "SNIPPET")]
        tests: Vec<String>,
        /// A file of code to run before the program.
        #[arg(long, value_name = "FILE")]
        setup: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run every task of a JSON Lines file in the sandbox; print one JSON outcome per line.
    ///
    /// Each line is a task (`task_id`, `code`, `reference`, `setup`, `tests`; MBPP rows with
    /// `test_list` too). Outcomes come in input order with `task_id` added. A malformed line is
    /// reported on stderr with its line number and the rest still runs; the exit code is then 2.
    Check {
        /// The tasks, one JSON object per line.
        tasks: PathBuf,
        /// Which program of each task to run.
        #[arg(long, value_enum, default_value_t = Field::Code)]
        field: Field,
        /// Tasks run at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Run the jobs as worker processes (scales with cores) or as threads of this process.
        #[arg(long, value_enum, default_value_t = cmd::Parallelism::Processes)]
        parallel: cmd::Parallelism,
        /// Internal: run as worker I of N, taking every N-th task from I.
        #[arg(long, value_name = "I/N", hide = true)]
        worker: Option<cmd::check::Shard>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Serve the sandbox over HTTP (SandboxFusion's /run_code, /v1/run, /v1/check, /metrics)
    ///
    /// POST /run_code follows SandboxFusion's API for Python; POST /v1/run and POST /v1/check
    /// take coe's own requests and reply as `coe run --json`; GET /health, GET /metrics
    /// (Prometheus). Stops on SIGTERM or Ctrl-C after the requests in flight are answered.
    Serve(cmd::serve::ServeArgs),
    /// Internal: serve sandbox runs on standard input and output, one JSON line each way (a
    /// worker process of the commands that run the sandbox in parallel).
    #[command(hide = true)]
    ExecWorker,
    /// Prepare the sandbox: snapshot and compile the Python guest into the cache.
    ///
    /// Done automatically on first use; this does it ahead of time and says how long it took.
    Prepare,
    /// Play an episode with scripted commands (one model output per line of EDITS).
    ///
    /// Prints each turn (command, reward, solved, observation), then a summary (solved, turns,
    /// return). With --json: one JSON object per turn, then one for the summary.
    Replay {
        /// The task, one JSON object.
        task: PathBuf,
        /// The model outputs, one per line; blank lines are skipped.
        edits: PathBuf,
        /// Turns before the episode ends without EXIT.
        #[arg(long, default_value_t = 10, value_name = "N")]
        max_turns: usize,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print JSON Lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate text with the language model, for checking a model.
    ///
    /// The prompt file's text becomes one user message in the model's chat template, unless
    /// --raw tokenizes it as it is (special tokens written in it count). Without --model, the
    /// default base model (fetched by `cargo xtask model`).
    Generate(cmd::generate::GenerateArgs),
    /// Train LoRA adapters: `sft` on the demonstrations, `rl` (GRPO) over sandbox episodes.
    ///
    /// Settings come from a TOML file (see fixtures/configs); outputs (metrics.jsonl,
    /// checkpoint/, adapter.safetensors, config.toml) go to its out_dir.
    Train(cmd::train::TrainArgs),
    /// Draw a training run's curves (DIR/metrics.jsonl to DIR/plots/*.svg).
    ///
    /// One SVG per metric the run logged: loss, reward, solve rate, KL, malformed rate,
    /// throughput. Training draws them at each checkpoint and at the end. Then prints a table
    /// of the run's metrics (solve rate, turns, context cuts, KL, skipped groups, ...) over
    /// windows of --window steps: each one's mean, smallest and largest value a step.
    Plot {
        /// The run's output folder.
        dir: PathBuf,
        /// Steps per row of the printed table.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        window: u64,
    },
    /// Repair a program with the policy: play episodes, print each turn and the diff.
    ///
    /// Uses the default policy (fixtures/policy/adapter.safetensors, built into the binary) on
    /// the default base model; --model and --adapter choose others. The tests are a verifier:
    /// a greedy episode, then sampled ones until one passes, --samples K (default 5) are played
    /// or --time-budget-s is spent; the first solved one (or the best) is shown. Exit code 0
    /// whether or not it was solved (the output says); 2 when the tests already pass or an
    /// input is missing.
    Repair(cmd::repair::RepairArgs),
    /// Evaluate a policy on a task file: pass@1, pass@k (unbiased), mean turns, malformed rate.
    Eval(cmd::eval::EvalArgs),
    /// Gather evaluation summaries (DIR/<policy>/<set>/summary.json, from `coe eval --json`)
    /// into DIR/report.md, a table next to the paper's numbers and every two policies compared
    /// task by task, and DIR/pass_at_k.svg.
    Report {
        /// The evaluation folder (`cargo xtask eval` writes runs/eval).
        dir: PathBuf,
        /// A folder of evaluation sets (`fixtures/eval`): where `<TASKS>/<set>.jsonl` lists
        /// each task's corrupting edits, the report adds each policy's solved episodes by the
        /// number of edits.
        #[arg(long, value_name = "TASKS")]
        tasks: Option<PathBuf>,
    },
}

/// The program a task run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Field {
    /// The program to repair.
    Code,
    /// The reference solution.
    Reference,
}

/// Resource limits, shared by the commands that run Python.
#[derive(Debug, Clone, Copy, Args)]
struct LimitArgs {
    /// Wall-clock limit for the whole run, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = Limits::default().timeout_ms)]
    timeout_ms: u64,
    /// Memory limit, in MiB.
    #[arg(long, value_name = "N", default_value_t = Limits::default().memory_mib)]
    memory_mib: u64,
}

impl LimitArgs {
    fn limits(self) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms,
            memory_mib: self.memory_mib,
            ..Limits::default()
        }
    }
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
    /// coe itself failed: exit 1.
    Internal(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Input(_) => ExitCode::from(2),
            Failure::Internal(_) => ExitCode::from(1),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Input(message) | Failure::Internal(message) => message,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let result = match cli.command {
        Commands::Apply { program, edits } => cmd::apply::apply(&program, &edits),
        Commands::Run {
            program,
            tests,
            setup,
            limits,
            json,
        } => cmd::run::run(&program, &tests, setup.as_deref(), limits.limits(), json),
        Commands::Check {
            tasks,
            field,
            jobs,
            parallel,
            worker,
            limits,
        } => cmd::check::check(&tasks, field, jobs, parallel, worker, limits.limits()),
        Commands::Prepare => cmd::prepare::prepare(),
        Commands::Serve(args) => cmd::serve::serve(args),
        Commands::ExecWorker => cmd::exec_worker::exec_worker(),
        Commands::Replay {
            task,
            edits,
            max_turns,
            limits,
            json,
        } => cmd::replay::replay(&task, &edits, max_turns, limits.limits(), json),
        Commands::Generate(args) => cmd::generate::generate(args),
        Commands::Train(args) => cmd::train::train(args),
        Commands::Plot { dir, window } => {
            cmd::plot::plot(&dir, usize::try_from(window).unwrap_or(usize::MAX))
        }
        Commands::Repair(args) => cmd::repair::repair(args),
        Commands::Eval(args) => cmd::eval::eval(args),
        Commands::Report { dir, tasks } => cmd::report::report(&dir, tasks.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message());
            failure.exit_code()
        }
    }
}
