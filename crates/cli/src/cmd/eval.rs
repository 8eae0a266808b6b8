//! `coe eval`: a policy's pass@k on a task file, or the direct-answer baseline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use coe_policy::SamplingConfig;
use coe_trainer::eval::{EvalSettings, EvalSummary};

use burn::prelude::Backend;

use super::eval_resume::{Progress, RunKey, Sample};
use super::{
    CONTEXT_TOKENS, Device, Parallelism, PolicyArgs, chosen_adapter, executor, load_policy_on,
};
use crate::Failure;
use crate::output::{json_line, print};

/// Options of `coe eval`.
#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// The tasks, one JSON object per line.
    pub(crate) tasks: PathBuf,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Only the first N tasks.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
    /// Only every N-th task from the I-th (0-based), for running one set as N independent jobs
    /// (a Slurm array, a Kubernetes Indexed Job); each task plays the episodes a whole run
    /// would, and `coe report` merges the shards' summaries into exact totals.
    #[arg(long, value_name = "I/N")]
    pub(crate) shard: Option<Shard>,
    /// Write every episode's trace here (JSON Lines), each task's as soon as it is done (in
    /// task order once the run ends), with FILE.run.json saying which run it is.
    #[arg(long, value_name = "FILE")]
    pub(crate) traces: Option<PathBuf>,
    /// Go on with the run whose --traces FILE is there: its finished tasks are kept, the rest
    /// played (each task's episodes depend on its position alone, so the result is a straight
    /// run's). Refused when FILE belongs to another run.
    #[arg(long, requires = "traces")]
    pub(crate) resume: bool,
    /// Write DIR/index.html: every episode turn by turn, with each command's diff.
    #[arg(long, value_name = "DIR", conflicts_with = "direct")]
    pub(crate) html: Option<PathBuf>,
    /// The direct-answer baseline instead of episodes: ask for the whole fixed program in one
    /// answer, with the prompts of FILE (fixtures/eval/*.direct.jsonl) matched by task_id. It
    /// asks the base model unless --adapter names adapters (the default policy is trained to
    /// edit, not to answer whole programs).
    #[arg(long, value_name = "FILE")]
    pub(crate) direct: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub(crate) device: Device,
}

/// `I/N`: the tasks at positions `I, I + N, I + 2N, ...` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    index: usize,
    count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not I/N with 0 <= I < N (e.g. 0/4)");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            index.trim().parse().map_err(|_| bad())?,
            count.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

pub(crate) fn eval(args: EvalArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let p = &args.policy;
    let mut tasks =
        coe_trainer::run::load_tasks(&args.tasks).map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    // Each task keeps its position in the file: it seeds the task's episodes.
    let tasks: Vec<(usize, coe_tool_state::Task)> = tasks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| args.shard.is_none_or(|s| i % s.count == s.index))
        .collect();
    let samples = p.samples.unwrap_or(1);
    if samples == 0 {
        return Err(Failure::Input("--samples must be at least 1".into()));
    }
    let adapter = eval_adapter(
        args.direct.is_some(),
        p.model.as_deref(),
        p.adapter.as_deref(),
    )?;
    match args.device {
        Device::Cpu => eval_on::<coe_policy::CpuBackend>(&args, &tasks, samples, adapter, started),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            eval_on::<coe_policy::CudaBackend>(&args, &tasks, samples, adapter, started)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(Device::cuda_missing()),
    }
}

/// The adapters `coe eval` uses: those of [`chosen_adapter`], except that the direct-answer
/// baseline asks the base model when no `--adapter` is given.
fn eval_adapter(
    direct: bool,
    model: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Option<PathBuf>, Failure> {
    if direct && adapter.is_none() {
        return Ok(None);
    }
    chosen_adapter(model, adapter)
}

/// The evaluation itself, with the model on backend `B`'s default device.
fn eval_on<B: Backend>(
    args: &EvalArgs,
    tasks: &[(usize, coe_tool_state::Task)],
    samples: usize,
    adapter: Option<PathBuf>,
    started: Instant,
) -> Result<(), Failure> {
    let p = &args.policy;
    let policy = load_policy_on::<B>(p.model.as_deref(), adapter.as_deref(), &Default::default())?;
    let sandbox = executor(p.workers, Parallelism::Processes)?;
    let config = coe_trainer::rollout::PlayConfig {
        episode: coe_tool_state::EpisodeConfig {
            max_turns: p.max_turns,
            ..Default::default()
        },
        sampling: SamplingConfig {
            temperature: if samples == 1 { 0.0 } else { 1.0 },
            ..SamplingConfig::default()
        },
        context: CONTEXT_TOKENS,
        workers: p.workers,
        batch: p.batch,
    };
    let settings = |temperature: f64, max_turns: usize, direct: bool| EvalSettings {
        temperature,
        max_turns,
        context: CONTEXT_TOKENS,
        seed: p.seed,
        direct,
        adapter: adapter
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned()),
    };
    if let Some(prompts) = &args.direct {
        let prompts = coe_trainer::direct::load_prompts(prompts)
            .map_err(|e| Failure::Input(e.to_string()))?;
        let sampling = SamplingConfig {
            // Room for a whole program; the answer ends at the end-of-turn token or with its
            // first code block, which is the program run.
            max_tokens: 768,
            stop_at_newline: false,
            stop_after_code_block: true,
            ..config.sampling
        };
        let settings = settings(sampling.temperature, 1, true);
        let (summary, _) = play_resumable(
            args,
            adapter.as_deref(),
            tasks,
            samples,
            settings,
            started,
            |todo, on_task| {
                coe_trainer::direct::evaluate_direct(
                    &policy,
                    todo,
                    &prompts,
                    &sandbox,
                    samples,
                    p.batch,
                    &sampling,
                    &config.episode.limits,
                    p.seed,
                    on_task,
                )
                .map(|(_, groups)| groups)
            },
        )?;
        return print_summary(&summary, args.json);
    }
    let settings = settings(config.sampling.temperature, p.max_turns, false);
    let (summary, groups) = play_resumable(
        args,
        adapter.as_deref(),
        tasks,
        samples,
        settings,
        started,
        |todo, on_task| {
            coe_trainer::eval::evaluate(&policy, todo, &sandbox, samples, &config, p.seed, on_task)
                .map(|(_, groups)| groups)
        },
    )?;
    if let Some(dir) = &args.html {
        let title = format!(
            "coe eval: {} ({}{})",
            args.tasks.display(),
            p.model.as_deref().map_or_else(
                || "SmolLM2-135M-Instruct".into(),
                |m| m.display().to_string()
            ),
            adapter
                .as_deref()
                .map_or_else(String::new, |a| format!(" + {}", a.display()))
        );
        let page = crate::html::write_report(dir, &title, &summary, &groups)
            .map_err(|e| Failure::Internal(format!("{}: {e}", dir.display())))?;
        eprintln!("coe: wrote {}", page.display());
    }
    print_summary(&summary, args.json)
}

/// Plays the tasks with `play` (given the tasks to play and a callback for each finished task,
/// it returns their samples in task order), writing each finished task's samples to `--traces`
/// and, with `--resume`, first taking the tasks already there; returns the summary of every
/// task (with its settings and wall time, earlier processes' included) and the samples.
fn play_resumable<T: Sample>(
    args: &EvalArgs,
    adapter: Option<&Path>,
    tasks: &[(usize, coe_tool_state::Task)],
    samples: usize,
    settings: EvalSettings,
    started: Instant,
    play: impl FnOnce(
        &[(usize, coe_tool_state::Task)],
        &mut dyn FnMut(usize, &[T]),
    ) -> Result<Vec<Vec<T>>, coe_trainer::TrainerError>,
) -> Result<(EvalSummary, Vec<Vec<T>>), Failure> {
    let sha256 = |path: &Path| {
        coe_cache::sha256_file(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))
    };
    let mut progress = match &args.traces {
        Some(path) => {
            let key = RunKey {
                tasks: args.tasks.clone(),
                tasks_sha256: sha256(&args.tasks)?,
                model: args.policy.model.clone(),
                adapter_sha256: adapter.map(sha256).transpose()?,
                direct_prompts: args.direct.clone(),
                shard: args.shard.map(|s| format!("{}/{}", s.index, s.count)),
                limit: args.limit,
                samples,
                settings: settings.clone(),
            };
            Some(Progress::<T>::open(path, key, tasks, args.resume)?)
        }
        None => None,
    };
    let (done, earlier_wall_s) = match progress.as_mut() {
        Some(p) => (std::mem::take(&mut p.done), p.earlier_wall_s),
        None => (tasks.iter().map(|_| None).collect(), 0.0),
    };
    let todo: Vec<(usize, coe_tool_state::Task)> = tasks
        .iter()
        .zip(&done)
        .filter(|(_, d)| d.is_none())
        .map(|(task, _)| task.clone())
        .collect();
    let total = tasks.len();
    let mut finished = total - todo.len();
    if finished > 0 {
        eprintln!("coe: resuming: {finished} of {total} tasks were already played");
    }
    // A failed write stops the writing as it goes (the file would no longer be whole tasks)
    // but not the run: the file is written whole at the end.
    let mut writing = true;
    let played = play(&todo, &mut |_, group: &[T]| {
        finished += 1;
        report_task(finished, total, group);
        if let Some(progress) = progress.as_mut().filter(|_| writing)
            && let Err(Failure::Input(e) | Failure::Internal(e)) =
                progress.task_done(group, started.elapsed().as_secs_f64())
        {
            eprintln!("coe: {e}; the traces will be written at the end");
            writing = false;
        }
    })
    .map_err(|e| Failure::Internal(e.to_string()))?;
    if played.len() != todo.len() {
        return Err(Failure::Internal(format!(
            "{} tasks played, {} asked",
            played.len(),
            todo.len()
        )));
    }
    let mut played = played.into_iter();
    let groups: Vec<Vec<T>> = done
        .into_iter()
        .map(|d| d.or_else(|| played.next()).unwrap_or_default())
        .collect();
    let per_task = tasks
        .iter()
        .zip(&groups)
        .map(|((index, task), group)| T::task_result(*index, &task.task_id, group))
        .collect();
    let mut summary = EvalSummary::from_tasks(per_task);
    let wall_s = started.elapsed().as_secs_f64();
    summary.wall_s = Some(earlier_wall_s + wall_s);
    summary.settings = Some(settings);
    if let Some(progress) = progress {
        progress.finish(&groups, wall_s)?;
    }
    Ok((summary, groups))
}

/// Prints `[finished/total] task: solved/n solved` for a task's finished samples.
fn report_task<T: Sample>(finished: usize, total: usize, samples: &[T]) {
    let id = samples.first().map_or("", |s| s.task_id());
    let solved = samples.iter().filter(|s| s.solved()).count();
    eprintln!(
        "[{finished}/{total}] {id}: {solved}/{} solved",
        samples.len()
    );
}

fn print_summary(summary: &EvalSummary, json: bool) -> Result<(), Failure> {
    if json {
        return print(&json_line(summary)?);
    }
    let interval = |i: Option<coe_trainer::eval::Interval>| {
        i.map_or_else(String::new, |i| format!(" [{:.1}, {:.1}]", i.low, i.high))
    };
    print(&format!(
        "tasks {}  samples {}\npass@1 {:.2}%{}  pass@{} {:.2}%{}  (95% intervals, bootstrap over source problems)\nmean turns {:.2}  malformed {:.1}%  solved-then-broken {:.1}%  wall {:.1} s\n",
        summary.tasks,
        summary.samples,
        summary.pass_at_1,
        interval(summary.pass_at_1_interval),
        summary.samples,
        summary.pass_at_k,
        interval(summary.pass_at_k_interval),
        summary.mean_turns,
        summary.malformed_rate,
        summary.solved_then_broken_rate,
        summary.wall_s.unwrap_or(0.0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_baseline_asks_the_base_model_unless_told_otherwise() {
        assert_eq!(eval_adapter(true, None, None).unwrap(), None);
        let mine = Path::new("mine.safetensors");
        assert_eq!(
            eval_adapter(true, None, Some(mine)).unwrap().as_deref(),
            Some(mine)
        );
        // Episodes keep `coe repair`'s default: the built-in default policy.
        assert!(eval_adapter(false, None, None).unwrap().is_some());
        assert_eq!(
            eval_adapter(false, None, Some(Path::new("none"))).unwrap(),
            None
        );
    }
}
