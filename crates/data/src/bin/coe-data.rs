//! `coe-data`: generates the Chain-of-Edits data from scratch, deterministically, verifying
//! every item in the real sandbox; `cargo xtask data` runs it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use coe_data::corrupt::Corpus;
use coe_data::demo::{EditRange, draw_corruption, make_demo};
use coe_data::formats::{
    Demo, DirectPrompt, EvalTask, Transcript, read_json_lines, write_json_lines,
};
use coe_data::prompt::direct_prompt;
use coe_data::sources::read_tasks;
use coe_data::split::Split;
use coe_data::stats::{FailureKind, Item, SetStats, edit_distance};
use coe_data::{GENERATOR_VERSION, Task};
use coe_exec::{Executor, Limits, Status};
use coe_sandbox::Sandbox;
use coe_tool_state::{Episode, EpisodeConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Parser)]
#[command(name = "coe-data", about = "Generate and describe Chain-of-Edits data")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Generate evaluation sets (small, committed) and demonstrations (large, cached).
    Generate {
        /// The data set's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Demonstrations per train and validation task (the paper: about 100).
        #[arg(long, default_value_t = 100)]
        demos_per_task: usize,
        /// Where demonstrations and statistics go (default: $COE_CACHE_DIR/data).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the evaluation sets go.
        #[arg(long, default_value = "fixtures/eval")]
        eval_dir: PathBuf,
        /// Parallel sandbox workers (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Only the evaluation sets (minutes less); the demonstrations are left as they are.
        #[arg(long)]
        eval_only: bool,
    },
    /// Internal: serve sandbox runs on standard input and output (a worker process of
    /// `generate`, see `coe_exec_pool`).
    #[command(hide = true)]
    ExecWorker,
    /// Print the statistics of generated data.
    Stats {
        /// Where the demonstrations are (default: $COE_CACHE_DIR/data).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the evaluation sets are.
        #[arg(long, default_value = "fixtures/eval")]
        eval_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Generate {
            seed,
            demos_per_task,
            out,
            eval_dir,
            jobs,
            eval_only,
        } => generate(
            seed,
            if eval_only { 0 } else { demos_per_task },
            &out.unwrap_or_else(default_out),
            &eval_dir,
            jobs,
        ),
        Commands::ExecWorker => {
            let sandbox = Sandbox::new(&Default::default())?;
            Ok(coe_exec_pool::serve_stdio(&sandbox)?)
        }
        Commands::Stats { out, eval_dir } => {
            let sandbox = Sandbox::new(&Default::default())?;
            let (_, text) = stats(&sandbox, &out.unwrap_or_else(default_out), &eval_dir)?;
            print!("{text}");
            Ok(())
        }
    }
}

/// What runs the programs: the sandbox, behind `dyn` so one code path serves both kinds.
type Exec = dyn Executor + Send + Sync;

/// `workers` sandbox processes (this binary's `exec-worker`) when runs overlap, or the sandbox
/// in this process for one at a time: threads sharing one address space slow each other down
/// (coe-exec-pool's README).
fn executor(workers: usize) -> Result<Box<Exec>> {
    // Compiles (and caches) the guest once, before any worker loads it.
    let sandbox = Sandbox::new(&Default::default())?;
    if workers <= 1 {
        return Ok(Box::new(sandbox));
    }
    drop(sandbox);
    Ok(Box::new(coe_exec_pool::ProcessPool::of_current_exe(
        workers,
        &["exec-worker"],
    )?))
}

/// Writes a whole file atomically; the error names it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    coe_cache::write_atomically(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn default_out() -> PathBuf {
    coe_sandbox::cache_dir_default().join("data")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Runs `work` over `items` on the worker pool, keeping input order.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    bar: &ProgressBar,
    work: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    items
        .par_iter()
        .map(|item| {
            let result = work(item);
            bar.inc(1);
            result
        })
        .collect()
}

fn generate(
    seed: u64,
    demos_per_task: usize,
    out: &Path,
    eval_dir: &Path,
    jobs: Option<usize>,
) -> Result<()> {
    let started = Instant::now();
    if let Some(jobs) = jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build_global()?;
    }
    let sandbox = executor(rayon::current_num_threads())?;
    let sandbox = &*sandbox;
    let config = EpisodeConfig::default();

    let mbpp = read_tasks(&fixtures().join("mbpp/mbpp.jsonl"))?.strict()?;
    let humanevalfix = read_tasks(&fixtures().join("humanevalfix/humanevalfix.jsonl"))?.strict()?;

    // Only references that pass in the sandbox can be corrupted and repaired.
    let bar = progress(mbpp.len(), "references");
    let passing = parallel(&mbpp, &bar, |task| passes(sandbox, task))
        .into_iter()
        .collect::<Result<Vec<bool>>>()?;
    bar.finish();
    let before = mbpp.len();
    // Corpora (lines of other solutions) come from every task of a split, passing or not, so
    // they do not depend on the sandbox.
    let all_tasks = mbpp.clone();
    let corpus_of = |split: Split| {
        Corpus::from_programs(
            all_tasks
                .iter()
                .filter(|t| Split::of_task_id(&t.task_id) == Some(split))
                .map(|t| t.code.as_str()),
        )
    };
    let mut keep = passing.into_iter();
    let mut mbpp = mbpp;
    mbpp.retain(|_| keep.next().unwrap_or(false));
    eprintln!(
        "{} of {before} MBPP references pass in the sandbox and are used",
        mbpp.len()
    );

    let of_split = |split: Split| -> Vec<Task> {
        mbpp.iter()
            .filter(|t| Split::of_task_id(&t.task_id) == Some(split))
            .cloned()
            .collect()
    };
    // Evaluation sets: failing corruptions of held-out tasks. The test split gives one per
    // task (the final report's sets); the validation split two per task, for choosing
    // checkpoints and settings without looking at the test sets.
    for (name, split, range, per_task) in [
        ("mbpp-synthetic-test", Split::Test, EditRange::DEFAULT, 1),
        ("mbpp-synthetic-test-hard", Split::Test, EditRange::HARD, 1),
        (
            "mbpp-synthetic-validation",
            Split::Validation,
            EditRange::DEFAULT,
            2,
        ),
    ] {
        let tasks = of_split(split);
        let corpus = corpus_of(split);
        let bar = progress(tasks.len(), name);
        let items = parallel(&tasks, &bar, |task| {
            eval_items(sandbox, task, &corpus, range, seed, per_task)
        });
        bar.finish();
        let mut items: Vec<EvalTask> = items
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        if per_task > 1 {
            // Several items of one task: `<task>#<sample>`, so every line has its own id (the
            // direct-answer prompts are matched by it).
            for item in &mut items {
                item.task.task_id = format!("{}#{}", item.task.task_id, item.sample);
            }
        }
        write_eval(sandbox, eval_dir, name, &items, config)?;
    }
    let hef: Vec<EvalTask> = humanevalfix
        .iter()
        .map(|task| EvalTask {
            task: task.clone(),
            seed: 0,
            sample: 0,
            generator: GENERATOR_VERSION,
            edits: Vec::new(),
        })
        .collect();
    write_eval(sandbox, eval_dir, "humanevalfix", &hef, config)?;

    // Demonstrations for train (SFT) and validation (held-out loss); none with --eval-only.
    let demo_splits = if demos_per_task == 0 {
        &[][..]
    } else {
        &[Split::Train, Split::Validation][..]
    };
    for &split in demo_splits {
        let tasks = of_split(split);
        let corpus = corpus_of(split);
        let bar = progress(tasks.len(), split.as_str());
        let per_task = parallel(&tasks, &bar, |task| {
            let mut demos = Vec::new();
            let mut sample = 0u32;
            while demos.len() < demos_per_task && (sample as usize) < demos_per_task * 3 {
                if let Some(demo) = make_demo(
                    task,
                    &corpus,
                    EditRange::DEFAULT,
                    seed,
                    sample,
                    sandbox,
                    config,
                )? {
                    demos.push(demo);
                }
                sample += 1;
            }
            Ok::<_, coe_data::demo::DemoError>(demos)
        });
        bar.finish();
        let per_task = per_task.into_iter().collect::<Result<Vec<_>, _>>()?;
        let demos: Vec<&Demo> = per_task.iter().flatten().collect();
        write_json_lines(&out.join(format!("demos-{}.jsonl", split.as_str())), &demos)?;
        let by_id: std::collections::HashMap<&str, &Task> =
            tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
        write_json_lines(
            &out.join(format!("sft-{}.jsonl", split.as_str())),
            demos.iter().filter_map(|demo| {
                by_id.get(demo.task_id.as_str()).map(|task| Transcript {
                    task_id: demo.task_id.clone(),
                    sample: demo.sample,
                    messages: demo.transcript(task),
                })
            }),
        )?;
        eprintln!(
            "{}: {} demonstrations from {} tasks",
            split.as_str(),
            demos.len(),
            tasks.len()
        );
    }
    let (all, text) = stats(sandbox, out, eval_dir)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomically(&out.join("stats.md"), text.as_bytes())?;
    write_atomically(
        &out.join("stats.json"),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )?;
    print!("{text}");
    eprintln!(
        "wrote demonstrations to {} and evaluation sets to {} in {:.1} s",
        out.display(),
        eval_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether `task`'s program passes its tests. A failure of the sandbox itself (a worker that
/// died) is an error, not "fails": it would change the generated sets unnoticed.
fn passes(sandbox: &Exec, task: &Task) -> Result<bool> {
    let outcome = sandbox
        .execute(&task.request(&task.code, Limits::default()))
        .with_context(|| format!("running {}", task.task_id))?;
    Ok(outcome.status == Status::Passed)
}

/// The first `count` samples of `task` whose corruption fails a test (up to 20 draws each).
fn eval_items(
    sandbox: &Exec,
    task: &Task,
    corpus: &Corpus,
    range: EditRange,
    seed: u64,
    count: usize,
) -> Result<Vec<EvalTask>> {
    let mut items = Vec::with_capacity(count);
    for sample in 0..20 * count as u32 {
        if items.len() == count {
            break;
        }
        let Some(corruption) = draw_corruption(task, corpus, range, seed, sample) else {
            continue;
        };
        let broken = Task {
            code: corruption.broken.clone(),
            ..task.clone()
        };
        if !passes(sandbox, &broken)? {
            items.push(EvalTask {
                task: broken,
                seed,
                sample,
                generator: GENERATOR_VERSION,
                edits: corruption.edits.iter().map(|e| e.kind).collect(),
            });
        }
    }
    Ok(items)
}

fn write_eval(
    sandbox: &Exec,
    dir: &Path,
    name: &str,
    items: &[EvalTask],
    config: EpisodeConfig,
) -> Result<()> {
    write_json_lines(&dir.join(format!("{name}.jsonl")), items)?;
    let mut direct = Vec::with_capacity(items.len());
    for item in items {
        let episode = Episode::start(item.task.clone(), sandbox, config)?;
        direct.push((item, direct_prompt(&item.task, episode.observation())));
    }
    write_json_lines(
        &dir.join(format!("{name}.direct.jsonl")),
        direct.into_iter().map(|(item, messages)| DirectPrompt {
            task_id: item.task.task_id.clone(),
            messages,
            answer: item.task.reference.clone().unwrap_or_default(),
        }),
    )?;
    eprintln!("{name}: {} tasks", items.len());
    Ok(())
}

fn stats(sandbox: &Exec, out: &Path, eval_dir: &Path) -> Result<(Vec<SetStats>, String)> {
    let mut sets = Vec::new();
    for split in ["train", "validation"] {
        let path = out.join(format!("demos-{split}.jsonl"));
        if !path.is_file() {
            continue;
        }
        let demos: Vec<Demo> = read_json_lines(&path)?.strict()?;
        let sft_chars: Vec<usize> = std::fs::read_to_string(out.join(format!("sft-{split}.jsonl")))
            .map(|text| text.lines().map(str::len).collect())
            .unwrap_or_default();
        let items: Vec<Item> = demos
            .iter()
            .enumerate()
            .map(|(i, demo)| Item {
                task_id: demo.task_id.clone(),
                turns: Some(demo.trace.turns.len()),
                chars: sft_chars.get(i).copied().unwrap_or(0),
                edit_distance: edit_distance(&demo.corruption.broken, &demo.trace.final_program),
                failure: FailureKind::of(
                    demo.trace.initial_status,
                    demo.trace.initial_error.as_ref(),
                ),
                fails_tests: demo.trace.initial_status == Status::Failed,
            })
            .collect();
        sets.push(SetStats::new(&format!("demos-{split}"), &items));
    }
    for name in [
        "mbpp-synthetic-test",
        "mbpp-synthetic-test-hard",
        "mbpp-synthetic-validation",
        "humanevalfix",
    ] {
        let path = eval_dir.join(format!("{name}.jsonl"));
        if !path.is_file() {
            continue;
        }
        let tasks: Vec<EvalTask> = read_json_lines(&path)?.strict()?;
        let items: Vec<Item> = tasks
            .iter()
            .map(|t| {
                let failure = failure_of(sandbox, &t.task)?;
                Ok(Item {
                    task_id: t.task.task_id.clone(),
                    turns: None,
                    chars: t.task.code.len(),
                    edit_distance: edit_distance(
                        &t.task.code,
                        t.task.reference.as_deref().unwrap_or(""),
                    ),
                    failure: failure.0,
                    fails_tests: failure.1,
                })
            })
            .collect::<Result<_>>()?;
        sets.push(SetStats::new(name, &items));
    }
    let text = SetStats::table(&sets);
    Ok((sets, text))
}

/// How a broken program fails in the sandbox, and whether it runs and fails a test.
fn failure_of(sandbox: &Exec, task: &Task) -> Result<(FailureKind, bool)> {
    let outcome = sandbox
        .execute(&task.request(&task.code, Limits::default()))
        .with_context(|| format!("running {}", task.task_id))?;
    Ok((
        FailureKind::of(outcome.status, outcome.error.as_ref()),
        outcome.status == Status::Failed,
    ))
}
