//! Subcommands that run the language model.

use std::path::{Path, PathBuf};

use coe_policy::generate::{rng, top_k};
use coe_policy::{Adapters, ChatMessage, CpuBackend, Policy, SamplingConfig, Session};
use serde::Serialize;

use crate::Failure;
use crate::commands::read_text;
use crate::output::{json_line, print};

/// Loads the base model (the default one unless `model` names a GGUF file or Hugging Face
/// folder) and, when given, LoRA adapters.
pub(crate) fn load_policy(
    model: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Policy<CpuBackend>, Failure> {
    let path: PathBuf = match model {
        Some(path) => path.to_path_buf(),
        None => coe_policy::default_model_path(),
    };
    if !path.exists() {
        return Err(Failure::Input(if model.is_some() {
            format!("no model at {}", path.display())
        } else {
            format!(
                "the default model is not installed at {}: run `cargo xtask model` to fetch it",
                path.display()
            )
        }));
    }
    let mut policy = Policy::<CpuBackend>::load(&path, &Default::default())
        .map_err(|e| Failure::Input(format!("loading {}: {e}", path.display())))?;
    if let Some(adapter) = adapter {
        let (model, _) = coe_policy::adapter::load_adapters(policy.model, adapter)
            .map_err(|e| Failure::Input(format!("loading adapters: {e}")))?;
        policy.model = model.merge_lora();
    }
    Ok(policy)
}

/// Options of `coe generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// The prompt text.
    #[arg(long, value_name = "FILE")]
    pub(crate) prompt_file: PathBuf,
    /// A GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// LoRA adapters (safetensors) to apply to the model.
    #[arg(long, value_name = "PATH")]
    pub(crate) adapter: Option<PathBuf>,
    /// Tokenize the prompt file as it is, without the chat template.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub(crate) max_tokens: usize,
    /// Always pick the most likely token.
    #[arg(long)]
    pub(crate) greedy: bool,
    /// Sampling temperature (ignored with --greedy).
    #[arg(long, default_value_t = 0.7)]
    pub(crate) temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    pub(crate) top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Print one JSON object: prompt_ids, ids, text, top5_first, stop.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct GenerateJson {
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    top5_first: Vec<(u32, f32)>,
    stop: coe_policy::StopReason,
}

pub(crate) fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let text = read_text(&args.prompt_file)?;
    let policy = load_policy(args.model.as_deref(), args.adapter.as_deref())?;
    let prompt = if args.raw {
        text
    } else {
        let template = policy.tokenizer.template();
        template.render(
            &[ChatMessage {
                role: "user",
                content: &text,
            }],
            true,
        )
    };
    let internal = |e: coe_policy::PolicyError| Failure::Internal(e.to_string());
    let prompt_ids = policy.tokenizer.encode(&prompt).map_err(internal)?;
    if prompt_ids.is_empty() {
        return Err(Failure::Input("the prompt is empty".into()));
    }
    let config = SamplingConfig {
        temperature: if args.greedy { 0.0 } else { args.temperature },
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        stop_at_newline: false,
    };
    let mut session = Session::new(&policy.model);
    session.push(&prompt_ids);
    let first = session
        .prefill(&policy.model, Adapters::On)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let (generation, _) = session
        .decode(
            &policy.model,
            &policy.tokenizer,
            first.clone(),
            1,
            &config,
            &mut rng(args.seed),
        )
        .map_err(|e| Failure::Input(e.to_string()))?
        .pop()
        .ok_or_else(|| Failure::Internal("no generation".into()))?;
    let mut visible = generation.tokens.clone();
    if visible.last().is_some_and(|&t| policy.tokenizer.is_stop(t)) {
        visible.pop();
    }
    let text = policy.tokenizer.decode(&visible).map_err(internal)?;
    if args.json {
        print(&json_line(&GenerateJson {
            prompt_ids,
            ids: generation.tokens,
            text,
            top5_first: top_k(&first, 5),
            stop: generation.stop,
        })?)
    } else {
        print(&format!("{text}\n"))
    }
}

/// Which training phase `coe train` runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Phase {
    /// Supervised fine-tuning on the demonstrations.
    Sft,
    /// GRPO over live sandbox episodes.
    Rl,
}

pub(crate) fn plot(dir: &Path) -> Result<(), Failure> {
    let metrics = dir.join("metrics.jsonl");
    if !metrics.is_file() {
        return Err(Failure::Input(format!(
            "coe: no {} (is {} a training run's folder?)",
            metrics.display(),
            dir.display()
        )));
    }
    let written = coe_trainer::plot::plot_metrics(&metrics, &dir.join("plots"))
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let mut out = String::new();
    for path in written {
        out.push_str(&format!("{}\n", path.display()));
    }
    print(&out)
}

pub(crate) fn train(
    phase: Phase,
    config_path: &Path,
    resume: bool,
    steps: Option<usize>,
    out: Option<PathBuf>,
) -> Result<(), Failure> {
    let mut config = coe_trainer::run::RunConfig::load(config_path)
        .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(steps) = steps {
        config.optim.steps = steps;
    }
    if let Some(out) = out {
        config.out_dir = out;
    }
    // Data made by `cargo xtask data` lives in the cache.
    let data = coe_cache::cache_dir().join("data");
    if config.sft_data.is_none() {
        config.sft_data = Some(data.join("sft-train.jsonl"));
    }
    if config.rl_tasks.is_none() && config.rl_demos.is_none() {
        config.rl_demos = Some(data.join("demos-train.jsonl"));
    }
    if !config.model_path().exists() {
        return Err(Failure::Input(format!(
            "no base model at {}: run `cargo xtask model`",
            config.model_path().display()
        )));
    }
    let failed = |e: coe_trainer::TrainerError| Failure::Internal(e.to_string());
    let adapter = match phase {
        Phase::Sft => coe_trainer::run::run_sft::<coe_policy::CpuTrainBackend>(&config, resume)
            .map_err(failed)?,
        Phase::Rl => {
            let sandbox = std::sync::Arc::new(crate::commands::sandbox()?);
            coe_trainer::run::run_rl::<coe_policy::CpuTrainBackend, _>(&config, &sandbox, resume)
                .map_err(failed)?
        }
    };
    print(&format!(
        "adapter: {}\nmetrics: {}\nplots: {}\n",
        adapter.display(),
        config.out_dir.join("metrics.jsonl").display(),
        config.out_dir.join("plots").display()
    ))
}

/// The policy and episode options `coe repair` and `coe eval` share.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Base model: a GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// LoRA adapters to apply.
    #[arg(long, value_name = "PATH")]
    pub(crate) adapter: Option<PathBuf>,
    /// Episodes per task (1: greedy; more: sampled).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub(crate) samples: usize,
    /// Turns per episode.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) max_turns: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Threads running sandbox steps while the model writes the next command (0: none).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) workers: usize,
}

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
    /// Write every episode's trace here (JSON Lines).
    #[arg(long, value_name = "FILE")]
    pub(crate) traces: Option<PathBuf>,
    /// Write DIR/index.html: every episode turn by turn, with each command's diff.
    #[arg(long, value_name = "DIR", conflicts_with = "direct")]
    pub(crate) html: Option<PathBuf>,
    /// The direct-answer baseline instead of episodes: ask for the whole fixed program in one
    /// answer, with the prompts of FILE (fixtures/eval/*.direct.jsonl) matched by task_id.
    #[arg(long, value_name = "FILE")]
    pub(crate) direct: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn eval(args: EvalArgs) -> Result<(), Failure> {
    let p = &args.policy;
    let mut tasks =
        coe_trainer::run::load_tasks(&args.tasks).map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    if p.samples == 0 {
        return Err(Failure::Input("--samples must be at least 1".into()));
    }
    let policy = load_policy(p.model.as_deref(), p.adapter.as_deref())?;
    let sandbox = std::sync::Arc::new(crate::commands::sandbox()?);
    let config = coe_trainer::rollout::PlayConfig {
        episode: coe_tool_state::EpisodeConfig {
            max_turns: p.max_turns,
            ..Default::default()
        },
        sampling: SamplingConfig {
            temperature: if p.samples == 1 { 0.0 } else { 1.0 },
            ..SamplingConfig::default()
        },
        context: 2048,
        workers: p.workers,
    };
    let total = tasks.len();
    if let Some(prompts) = &args.direct {
        let prompts = coe_trainer::direct::load_prompts(prompts)
            .map_err(|e| Failure::Input(e.to_string()))?;
        let sampling = SamplingConfig {
            // Room for a whole program; the answer ends at the end-of-turn token.
            max_tokens: 768,
            stop_at_newline: false,
            ..config.sampling
        };
        let (summary, groups) = coe_trainer::direct::evaluate_direct(
            &policy,
            &tasks,
            &prompts,
            &sandbox,
            p.samples,
            &sampling,
            &config.episode.limits,
            p.seed,
            |i, answers| report_task(i, total, answers, |a| (&a.task_id, a.solved)),
        )
        .map_err(|e| Failure::Internal(e.to_string()))?;
        if let Some(path) = &args.traces {
            write_json_lines(path, groups.iter().flatten())?;
        }
        return print_summary(&summary, args.json);
    }
    let (summary, groups) = coe_trainer::run::evaluate(
        &policy,
        &tasks,
        &sandbox,
        p.samples,
        &config,
        p.seed,
        |i, traces| report_task(i, total, traces, |t| (&t.task_id, t.solved)),
    )
    .map_err(|e| Failure::Internal(e.to_string()))?;
    if let Some(path) = &args.traces {
        write_json_lines(path, groups.iter().flatten())?;
    }
    if let Some(dir) = &args.html {
        let title = format!(
            "coe eval: {} ({}{})",
            args.tasks.display(),
            p.model.as_deref().map_or_else(
                || "SmolLM2-135M-Instruct".into(),
                |m| m.display().to_string()
            ),
            p.adapter
                .as_deref()
                .map_or_else(String::new, |a| format!(" + {}", a.display()))
        );
        let page = crate::html::write_report(dir, &title, &summary, &groups)
            .map_err(|e| Failure::Internal(format!("{}: {e}", dir.display())))?;
        eprintln!("coe: wrote {}", page.display());
    }
    print_summary(&summary, args.json)
}

/// Prints `[i/total] task: solved/n solved` for a task's finished samples; `outcome` gives a
/// sample's task id and whether it solved the task.
fn report_task<T>(i: usize, total: usize, samples: &[T], outcome: impl Fn(&T) -> (&str, bool)) {
    let id = samples.first().map_or("", |s| outcome(s).0);
    let solved = samples.iter().filter(|s| outcome(s).1).count();
    eprintln!(
        "[{}/{total}] {id}: {solved}/{} solved",
        i + 1,
        samples.len()
    );
}

/// Writes one JSON line per item to `path`.
fn write_json_lines<'a, T: serde::Serialize + 'a>(
    path: &Path,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<(), Failure> {
    let mut text = String::new();
    for item in items {
        text.push_str(&json_line(item)?);
    }
    std::fs::write(path, text).map_err(|e| Failure::Internal(format!("{}: {e}", path.display())))
}

fn print_summary(summary: &coe_trainer::eval::EvalSummary, json: bool) -> Result<(), Failure> {
    if json {
        print(&json_line(summary)?)
    } else {
        print(&format!(
            "tasks {}  samples {}\npass@1 {:.2}%  pass@{} {:.2}%\nmean turns {:.2}  malformed {:.1}%  solved-then-broken {:.1}%\n",
            summary.tasks,
            summary.samples,
            summary.pass_at_1,
            summary.samples,
            summary.pass_at_k,
            summary.mean_turns,
            summary.malformed_rate,
            summary.solved_then_broken_rate
        ))
    }
}

/// The committed default policy (LoRA adapters for the default base model), found through the
/// workspace this binary was built from, so `coe repair` works from any directory.
const DEFAULT_ADAPTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/policy/adapter.safetensors"
);

/// Options of `coe repair`.
#[derive(Debug, clap::Args)]
pub(crate) struct RepairArgs {
    /// The Python program to repair.
    pub(crate) program: PathBuf,
    /// A test snippet (usually one assert); repeatable, at least one.
    #[arg(long = "test", value_name = "SNIPPET")]
    pub(crate) tests: Vec<String>,
    /// What the program should do, in a sentence (shown to the model before the tests).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) task: String,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Print one JSON object (solved, turns, final_program, diff).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct RepairJson<'a> {
    solved: bool,
    turns: &'a [coe_tool_state::Turn],
    final_program: &'a str,
    diff: String,
    episodes_played: usize,
}

pub(crate) fn repair(args: RepairArgs) -> Result<(), Failure> {
    let p = &args.policy;
    if args.tests.is_empty() {
        return Err(Failure::Input("give at least one --test".into()));
    }
    if p.samples == 0 {
        return Err(Failure::Input("--samples must be at least 1".into()));
    }
    let code = read_text(&args.program)?;
    let task = coe_tool_state::Task {
        task_id: args.program.display().to_string(),
        text: args.task.clone(),
        code: code.clone(),
        reference: None,
        setup: None,
        tests: args.tests.clone(),
    };
    let sandbox = std::sync::Arc::new(crate::commands::sandbox()?);
    let episode = coe_tool_state::EpisodeConfig {
        max_turns: p.max_turns,
        ..Default::default()
    };
    let probe = coe_tool_state::Episode::start(task.clone(), &sandbox, episode)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    if probe.is_passing() {
        return Err(Failure::Input(format!(
            "{}: the tests already pass; nothing to repair",
            args.program.display()
        )));
    }
    let adapter = p.adapter.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_ADAPTER);
        (p.model.is_none() && default.exists()).then_some(default)
    });
    if p.adapter.is_none() && adapter.is_some() && !args.json {
        eprintln!("coe: using the default policy, fixtures/policy/adapter.safetensors");
    }
    if adapter.is_none() && !args.json {
        eprintln!(
            "coe: no adapter given and no trained default policy committed; using the base model alone"
        );
    }
    let policy = load_policy(p.model.as_deref(), adapter.as_deref())?;
    let config = coe_trainer::rollout::PlayConfig {
        episode,
        sampling: SamplingConfig {
            temperature: if p.samples == 1 { 0.0 } else { 0.8 },
            ..SamplingConfig::default()
        },
        context: 2048,
        workers: p.workers,
    };
    let rollouts = coe_trainer::rollout::play(
        &policy,
        &task,
        &sandbox,
        p.samples,
        &config,
        &mut rng(p.seed),
    )
    .map_err(|e| Failure::Internal(e.to_string()))?;
    let played = rollouts.len();
    let best = rollouts
        .into_iter()
        .max_by(|a, b| {
            (a.trace.solved, a.trace.total_reward)
                .partial_cmp(&(b.trace.solved, b.trace.total_reward))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .ok_or_else(|| Failure::Internal("no episode was played".into()))?;
    let trace = best.trace;
    let diff = similar::TextDiff::from_lines(&code, &trace.final_program)
        .unified_diff()
        .header("before", "after")
        .to_string();
    if args.json {
        return print(&json_line(&RepairJson {
            solved: trace.solved,
            turns: &trace.turns,
            final_program: &trace.final_program,
            diff,
            episodes_played: played,
        })?);
    }
    let mut out = String::new();
    for turn in &trace.turns {
        out.push_str(&format!("turn {}: {}\n", turn.turn, turn.output));
        // EXIT changes nothing, so its observation repeats the previous turn's feedback.
        let feedback = if turn.effect == coe_tool_state::Effect::Exit {
            "(episode ended)"
        } else {
            turn.observation
                .rsplit("***\n")
                .next()
                .unwrap_or("")
                .trim_end()
        };
        for line in feedback.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out.push_str(&format!(
        "\n{} after {} turns\n\n{}",
        if trace.solved { "solved" } else { "not solved" },
        trace.turns.len(),
        if diff.is_empty() {
            "(program unchanged)\n".to_string()
        } else {
            diff
        }
    ));
    print(&out)
}
