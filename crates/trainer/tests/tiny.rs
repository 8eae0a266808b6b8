//! The trainer on a tiny random model and a toy environment (fast, no files needed).

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use coe_data::prompt::{Message, Role};
use coe_exec::testing::FakeExecutor;
use coe_policy::generate::{rng, token_logprobs};
use coe_policy::{
    Adapters, CpuBackend, Llama, LlamaConfig, LoraConfig, Policy, SamplingConfig, TextTokenizer,
};
use coe_tool_state::{EpisodeConfig, Task};
use coe_trainer::TrainerError;
use coe_trainer::chat::{Encoded, encode};
use coe_trainer::grpo::{
    EpisodeLoss, GrpoConfig, UpdateEpisode, episodes_loss, group_advantages, reference_logprobs,
    reference_policy, sampling_model,
};
use coe_trainer::optim::{OptimConfig, Trainer};
use coe_trainer::rollout::{PlayConfig, Rollout, TurnSpan, play, play_tasks};
use coe_trainer::sft::load_demonstrations;
use coe_trainer::sft::sft_loss;

type AD = Autodiff<CpuBackend>;

/// The GRPO loss of one episode alone, without a KL term.
fn episode_loss<B: burn::prelude::Backend>(
    model: &Llama<B>,
    rollout: &Rollout,
    advantages: &[f32],
    normaliser: usize,
    config: &GrpoConfig,
) -> EpisodeLoss<B> {
    let episode = UpdateEpisode {
        rollout,
        advantages,
        reference: None,
    };
    episodes_loss(model, &[episode], normaliser, config).unwrap()
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::tiny().unwrap()
}

/// The adapters' settings of the tiny model in these tests.
/// The backend's random generator is one per process: a test that seeds it (a trainer step, a
/// random tensor) and expects its draws holds this lock, so tests on other threads cannot
/// interleave draws.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn backend_rng() -> std::sync::MutexGuard<'static, ()> {
    BACKEND_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const TOY_LORA: LoraConfig = LoraConfig {
    rank: 8,
    alpha: 16.0,
    dropout: 0.0,
};

fn lora_model<B: burn::prelude::Backend>(seed: u64) -> Llama<B> {
    let lora = TOY_LORA;
    let mut model = Llama::random(LlamaConfig::tiny(), seed, &Default::default());
    // A stronger (frozen) embedding, so the tiny model's logits can move far enough to
    // memorise: the random one's logits are all within about 1.6 of each other.
    model.embed =
        burn::module::Param::from_tensor(model.embed.val().mul_scalar(4.0)).set_require_grad(false);
    model.attach_lora(&lora, seed, &Default::default())
}

/// A tiny policy with fresh adapters.
fn toy_policy(seed: u64) -> Policy<CpuBackend> {
    Policy {
        model: lora_model::<CpuBackend>(seed),
        tokenizer: tokenizer(),
    }
}

/// The largest absolute difference between two equally long lists.
fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn demo(command: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "fix it"),
        Message::new(Role::User, "L 1 x = 1\n***\nfailed"),
        Message::new(Role::Assistant, command),
        Message::new(Role::User, "L 1 x = 2\n***\nall passed"),
        Message::new(Role::Assistant, "EXIT"),
    ]
}

/// The demonstrations of `commands` (see [`demo`]), encoded.
fn encoded_demos(commands: &[&str]) -> Vec<Encoded> {
    let tok = tokenizer();
    commands
        .iter()
        .map(|c| encode(&tok, &demo(c), 2048).unwrap())
        .collect()
}

#[test]
fn only_assistant_tokens_are_targets() {
    let tok = tokenizer();
    let encoded = encode(&tok, &demo("REPL 1 >>>x = 2"), 2048).unwrap();
    assert_eq!(encoded.turns, 2);
    assert_eq!(encoded.tokens.len(), encoded.targets.len());
    let target_text: Vec<u32> = encoded
        .tokens
        .iter()
        .zip(&encoded.targets)
        .filter(|&(_, &t)| t)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(
        tok.decode(&target_text).unwrap(),
        "REPL 1 x = 2<|im_end|>EXIT<|im_end|>".replace(">>>", "")
    );
    // The whole sequence is the template's rendering of the conversation.
    let all = tok.decode(&encoded.tokens).unwrap();
    assert!(all.starts_with("<|im_start|>system\nfix it<|im_end|>\n<|im_start|>user\n"));
    assert!(all.ends_with("<|im_start|>assistant\nEXIT<|im_end|>\n"));
}

#[test]
fn truncation_keeps_whole_exchanges() {
    let tok = tokenizer();
    let full = encode(&tok, &demo("REPL 1 x = 2"), 2048).unwrap();
    let cut = encode(&tok, &demo("REPL 1 x = 2"), full.tokens.len() - 3).unwrap();
    assert_eq!(cut.turns, 1);
    assert_eq!(cut.tokens[..], full.tokens[..cut.tokens.len()]);
    assert!(matches!(
        encode(&tok, &demo("REPL 1 x = 2"), 10),
        Err(TrainerError::TooLong { context: 10 })
    ));
}

#[test]
fn demonstrations_too_long_for_the_context_are_skipped_and_counted() {
    let tok = tokenizer();
    let short = serde_json::json!({ "messages": demo("DELL 1") });
    let long_program = format!("L 1 x = 1\n{}***\nfailed", "L 2 # padding\n".repeat(40));
    let mut long = demo("DELL 1");
    long[1] = Message::new(Role::User, &long_program);
    let long = serde_json::json!({ "messages": long });
    let context = encode(&tok, &demo("DELL 1"), 2048).unwrap().tokens.len() + 5;
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("demos.jsonl");
    std::fs::write(&path, format!("{short}\n{long}\n\n{short}\n")).unwrap();
    let (examples, skipped) = load_demonstrations(&tok, &path, context, &[]).unwrap();
    assert_eq!((examples.len(), skipped), (2, 1));
    // A task left out of training contributes nothing.
    let kept = serde_json::json!({ "task_id": "mbpp/1", "messages": demo("DELL 1") });
    let left_out = serde_json::json!({ "task_id": "mbpp/2", "messages": demo("DELL 1") });
    let with_ids = scratch.path().join("demos-with-ids.jsonl");
    std::fs::write(&with_ids, format!("{kept}\n{left_out}\n{left_out}\n")).unwrap();
    let (examples, _) =
        load_demonstrations(&tok, &with_ids, context, &["mbpp/2".to_string()]).unwrap();
    assert_eq!(examples.len(), 1);
    // Nothing fits: an error that says so, not an empty run.
    let none = load_demonstrations(&tok, &path, 8, &[]).unwrap_err();
    assert!(
        none.to_string()
            .contains("no demonstrations that fit 8 tokens"),
        "{none}"
    );
    // A broken line names its number.
    std::fs::write(&path, format!("{short}\n{{oops\n")).unwrap();
    let bad = load_demonstrations(&tok, &path, context, &[]).unwrap_err();
    assert!(bad.to_string().contains("line 2"), "{bad}");
}

#[test]
fn masked_user_tokens_carry_no_loss() {
    // Changing a user message's tokens (not what the assistant learns) changes the context but
    // the loss is computed on the same target tokens: its gradient reaches only through them.
    let tok = tokenizer();
    let model = lora_model::<CpuBackend>(1);
    let encoded = encode(&tok, &demo("DELL 1"), 2048).unwrap();
    let mut no_targets = encoded.clone();
    no_targets.targets.iter_mut().for_each(|t| *t = false);
    assert!(
        sft_loss(&model, &[&no_targets]).is_err(),
        "no targets, no loss"
    );
    let (rows, targets) = coe_trainer::sft::batch_targets(&[&encoded]);
    assert!(targets.iter().all(|&(_, p)| encoded.targets[p]));
    assert_eq!(
        targets.len(),
        encoded.targets.iter().filter(|&&t| t).count()
    );
    assert_eq!(rows[0], encoded.tokens);
}

/// A micro-batch of demonstrations of different lengths (`OptimConfig::micro_batch`) is padded
/// at the end: its loss must be the token-weighted mean of each one's own loss, so padding
/// neither adds targets nor changes what an earlier position sees.
#[test]
fn a_padded_micro_batch_scores_each_demonstration_as_alone() {
    let model = lora_model::<CpuBackend>(4);
    let demos = encoded_demos(&["REPL 1 x = 2 + 3 + 4 + 5", "DELL 1", "ADDL 1 y = 3"]);
    assert!(
        demos[0].tokens.len() > demos[1].tokens.len(),
        "lengths differ"
    );
    let scalar = |t: burn::tensor::Tensor<CpuBackend, 1>| t.into_scalar();
    let targets = |e: &Encoded| e.targets.iter().skip(1).filter(|&&t| t).count() as f32;
    let (mut weighted, mut count) = (0.0f32, 0.0f32);
    for demo in &demos {
        weighted += scalar(sft_loss(&model, &[demo]).unwrap()) * targets(demo);
        count += targets(demo);
    }
    let batch: Vec<&Encoded> = demos.iter().collect();
    let together = scalar(sft_loss(&model, &batch).unwrap());
    assert!(
        (together - weighted / count).abs() < 1e-5,
        "batched {together} vs one by one {}",
        weighted / count
    );
}

#[test]
fn sft_overfits_a_few_demos() {
    let _rng = backend_rng();
    let demos = encoded_demos(&["REPL 1 x = 2", "DELL 1", "ADDL 1 y = 3"]);
    let config = OptimConfig {
        lr: 3e-2,
        warmup_steps: 2,
        steps: 60,
        grad_accum: 3,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::new(lora_model::<AD>(2), config);
    let batches: Vec<Vec<&Encoded>> = demos.iter().map(|d| vec![d]).collect();
    let first = trainer.sft_step(&batches).unwrap().loss;
    let mut last = first;
    for _ in 1..60 {
        last = trainer.sft_step(&batches).unwrap().loss;
    }
    // The tiny random model (frozen random embedding and head) fits slowly; the threshold is
    // relative: the loss must fall below 30% of where it started within 60 steps.
    assert!(
        last < 0.3 * first,
        "loss {first} -> {last} after 60 steps (threshold 30%)"
    );
}

#[test]
fn schedule_warms_up_then_decays() {
    let c = OptimConfig {
        lr: 1.0,
        warmup_steps: 4,
        steps: 104,
        min_lr_ratio: 0.1,
        ..OptimConfig::default()
    };
    assert_eq!(c.lr_at(0), 0.25);
    assert_eq!(c.lr_at(3), 1.0);
    assert!((c.lr_at(54) - 0.55).abs() < 1e-9);
    assert!((c.lr_at(104) - 0.1).abs() < 1e-9);
    assert!((c.lr_at(500) - 0.1).abs() < 1e-9);
}

/// A toy rollout: the prompt, then one turn whose command is `command`.
fn toy_rollout(tok: &TextTokenizer, command: &str, model: &Llama<CpuBackend>) -> Rollout {
    let prompt = tok
        .encode("<|im_start|>user\nfix<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let generated = tok.encode(&format!("{command}<|im_end|>")).unwrap();
    let mut tokens = prompt.clone();
    tokens.extend(&generated);
    let targets: Vec<(usize, usize)> = (prompt.len()..tokens.len()).map(|p| (0, p)).collect();
    let old = token_logprobs(model, &[tokens.clone()], &targets, Adapters::On).unwrap();
    let old_logprobs = old.into_data().convert::<f32>().into_vec().unwrap();
    let trace: coe_tool_state::Trace = serde_json::from_value(serde_json::json!({
        "task_id": "toy", "initial_observation": "", "initial_status": "passed", "turns": [],
        "end": null, "solved": false, "return": 0.0, "final_program": ""
    }))
    .unwrap();
    Rollout {
        trace,
        turns: vec![TurnSpan {
            start: prompt.len(),
            len: generated.len(),
            old_logprobs,
            reward: 0.0,
        }],
        tokens,
        context_full: false,
    }
}

fn command_logprob(model: &Llama<CpuBackend>, rollout: &Rollout) -> f32 {
    let span = &rollout.turns[0];
    let targets: Vec<(usize, usize)> = (span.start..span.start + span.len)
        .map(|p| (0, p))
        .collect();
    token_logprobs(
        model,
        std::slice::from_ref(&rollout.tokens),
        &targets,
        Adapters::On,
    )
    .unwrap()
    .sum()
    .into_scalar()
}

#[test]
fn one_grpo_update_moves_probability_towards_the_rewarded_command() {
    let _rng = backend_rng();
    let tok = tokenizer();
    let mut trainer = Trainer::new(
        lora_model::<AD>(3),
        OptimConfig {
            lr: 2e-2,
            warmup_steps: 0,
            steps: 1,
            ..OptimConfig::default()
        },
    );
    let valid = trainer.model.valid();
    let good = toy_rollout(&tok, "EXIT", &valid);
    let bad = toy_rollout(&tok, "DELL 1", &valid);
    let before = (
        command_logprob(&valid, &good),
        command_logprob(&valid, &bad),
    );
    // Rewards: the good command solves (+1), the bad one is penalised (-0.5).
    let adv = group_advantages(&[vec![1.0], vec![-0.5]]);
    let config = GrpoConfig::default();
    let episodes = [
        (good.clone(), adv[0].clone()),
        (bad.clone(), adv[1].clone()),
    ];
    let group_tokens = good.turns[0].len + bad.turns[0].len;
    trainer
        .step_sum(
            &episodes,
            |_| 1,
            |_| false,
            |model, (rollout, a)| {
                Ok((
                    episode_loss(model, rollout, a, group_tokens, &config).loss,
                    (),
                ))
            },
        )
        .unwrap();
    let valid = trainer.model.valid();
    let after = (
        command_logprob(&valid, &good),
        command_logprob(&valid, &bad),
    );
    assert!(
        after.0 > before.0,
        "rewarded command: {before:?} -> {after:?}"
    );
    assert!(
        after.1 < before.1,
        "penalised command: {before:?} -> {after:?}"
    );
}

/// Runs nothing: the program "passes" when it contains `x = 2`.
fn toy_executor() -> FakeExecutor {
    FakeExecutor::passing_when("x = 2")
}

/// Short episodes with short commands, the environment on the model's thread.
fn toy_play_config() -> PlayConfig {
    PlayConfig {
        episode: EpisodeConfig {
            max_turns: 3,
            ..EpisodeConfig::default()
        },
        sampling: SamplingConfig {
            max_tokens: 8,
            ..SamplingConfig::default()
        },
        workers: 0,
        ..PlayConfig::default()
    }
}

fn toy_task(id: usize) -> Task {
    Task {
        task_id: format!("toy/{id}"),
        text: String::new(),
        code: "x = 1\n".into(),
        reference: None,
        setup: None,
        tests: vec![format!("assert x == {}", id + 1)],
    }
}

#[test]
fn pipelined_play_matches_play_without_workers() {
    let policy = toy_policy(5);
    let tasks: Vec<Task> = (1..=3).map(toy_task).collect();
    let config = toy_play_config();
    let mut reported = Vec::new();
    let (inline, _) = play_tasks(
        &policy,
        &tasks,
        &toy_executor(),
        2,
        &config,
        &mut rng(7),
        |i, g| reported.push((i, g.len())),
    )
    .unwrap();
    reported.sort_unstable();
    assert_eq!(reported, [(0, 2), (1, 2), (2, 2)]);
    let workers = PlayConfig {
        workers: 2,
        ..config
    };
    let (piped, stats) = play_tasks(
        &policy,
        &tasks,
        &toy_executor(),
        2,
        &workers,
        &mut rng(7),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(piped.len(), 3);
    for (task, (a, b)) in tasks.iter().zip(inline.iter().zip(&piped)) {
        assert_eq!(a.len(), 2);
        for (a, b) in a.iter().zip(b) {
            assert_eq!(b.trace.task_id, task.task_id);
            assert_eq!(a.tokens, b.tokens);
            assert_eq!(a.turns, b.turns);
        }
    }
    let all: Vec<&Rollout> = piped.iter().flatten().collect();
    assert_eq!(stats.episodes, 6);
    assert_eq!(
        stats.env_steps,
        all.iter().map(|r| r.trace.turns.len()).sum::<usize>()
    );
    assert_eq!(
        stats.generated_tokens,
        all.iter()
            .flat_map(|r| &r.turns)
            .map(|t| t.len)
            .sum::<usize>()
    );
    assert!(stats.model_s() > 0.0 && stats.wall_s >= stats.model_s());
}

/// Episodes decoded as rows of one batch play exactly as one episode at a time: the same
/// commands, and the same sampling log-probabilities up to float rounding.
#[test]
fn batched_play_matches_one_episode_at_a_time() {
    let policy = toy_policy(8);
    let tasks: Vec<Task> = (1..=4).map(toy_task).collect();
    let play = |batch| {
        let config = PlayConfig {
            batch,
            ..toy_play_config()
        };
        play_tasks(
            &policy,
            &tasks,
            &toy_executor(),
            3,
            &config,
            &mut rng(9),
            |_, _| {},
        )
        .unwrap()
    };
    let (alone, alone_stats) = play(1);
    let (together, together_stats) = play(16);
    // Batch 16 holds all 12 episodes; batch 1 still opens a group of 3 at a time.
    assert!(together_stats.decode_rows / together_stats.decode_batches > 3);
    assert!(alone_stats.decode_rows / alone_stats.decode_batches <= 3);
    for (a, b) in alone.iter().flatten().zip(together.iter().flatten()) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.trace, b.trace);
        for (x, y) in a.turns.iter().zip(&b.turns) {
            assert_eq!((x.start, x.len, x.reward), (y.start, y.len, y.reward));
            let gap = max_gap(&x.old_logprobs, &y.old_logprobs);
            assert!(gap < 1e-4, "log-probs differ by {gap}");
        }
    }
    assert_eq!(together_stats.episodes, 12);
}

#[test]
fn direct_answers_are_run_against_the_tests() {
    use coe_trainer::direct::{DirectPrompt, evaluate_direct};
    let policy = toy_policy(6);
    let tasks: Vec<Task> = (1..=2).map(toy_task).collect();
    let prompts: Vec<DirectPrompt> = tasks
        .iter()
        .map(|t| DirectPrompt {
            task_id: t.task_id.clone(),
            messages: vec![
                Message::new(Role::System, "reply with the fixed program"),
                Message::new(Role::User, &t.code),
            ],
            answer: String::new(),
        })
        .collect();
    let sampling = SamplingConfig {
        max_tokens: 8,
        stop_at_newline: false,
        ..SamplingConfig::default()
    };
    let indexed: Vec<(usize, Task)> = tasks.iter().cloned().enumerate().collect();
    let mut seen = 0;
    let (summary, groups) = evaluate_direct(
        &policy,
        &indexed,
        &prompts,
        &toy_executor(),
        3,
        1,
        &sampling,
        &Default::default(),
        1,
        |_, answers| seen += answers.len(),
    )
    .unwrap();
    assert_eq!((summary.tasks, summary.samples, seen), (2, 3, 6));
    // Both tasks' answers decoding as one batch are the answers of one task at a time.
    let texts = |groups: &[Vec<coe_trainer::direct::DirectAnswer>]| -> Vec<String> {
        groups.iter().flatten().map(|a| a.text.clone()).collect()
    };
    for batch in [4, 6, 16] {
        let (batched_summary, batched) = evaluate_direct(
            &policy,
            &indexed,
            &prompts,
            &toy_executor(),
            3,
            batch,
            &sampling,
            &Default::default(),
            1,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(texts(&batched), texts(&groups), "batch {batch}");
        assert_eq!(batched_summary.per_task, summary.per_task);
    }
    for (task, answers) in tasks.iter().zip(&groups) {
        for answer in answers {
            assert_eq!(answer.task_id, task.task_id);
            // The toy executor passes a program exactly when it contains `x = 2`.
            assert_eq!(answer.solved, answer.program.contains("x = 2"));
        }
    }
    // A task without a prompt is an error, not a silent skip.
    assert!(
        evaluate_direct(
            &policy,
            &[(0, toy_task(9))],
            &prompts,
            &toy_executor(),
            1,
            1,
            &sampling,
            &Default::default(),
            1,
            |_, _| {}
        )
        .is_err()
    );
}

#[test]
fn random_policy_episodes_are_scored_and_malformed_output_costs_half() {
    let policy = toy_policy(4);
    let task = toy_task(1);
    let config = toy_play_config();
    let rollouts = play(&policy, &task, &toy_executor(), 4, &config, &mut rng(1)).unwrap();
    assert_eq!(rollouts.len(), 4);
    for rollout in &rollouts {
        assert_eq!(rollout.turns.len(), rollout.trace.turns.len());
        for (span, turn) in rollout.turns.iter().zip(&rollout.trace.turns) {
            assert_eq!(span.reward, turn.reward);
            assert_eq!(span.old_logprobs.len(), span.len);
            if matches!(turn.effect, coe_tool_state::Effect::Malformed { .. }) {
                // A malformed command really gets -0.5 (plus the no-EXIT penalty on the last turn).
                assert!(turn.reward <= -0.5, "{turn:?}");
            }
        }
    }
    let summary = coe_trainer::eval::summarize(&[rollouts.into_iter().map(|r| r.trace).collect()]);
    assert_eq!((summary.tasks, summary.samples), (1, 4));
}

#[test]
fn resume_reproduces_the_next_step() {
    let _rng = backend_rng();
    let demos = encoded_demos(&["REPL 1 x = 2", "DELL 1"]);
    let batches: Vec<Vec<&Encoded>> = demos.iter().map(|d| vec![d]).collect();
    let config = OptimConfig {
        lr: 1e-2,
        warmup_steps: 1,
        steps: 10,
        grad_accum: 2,
        ..OptimConfig::default()
    };
    // Dropout on, so the per-step seeding of its masks is exercised too.
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
    };
    let base = || {
        let mut model = Llama::<AD>::random(LlamaConfig::tiny(), 9, &Default::default());
        model.embed = burn::module::Param::from_tensor(model.embed.val().mul_scalar(4.0))
            .set_require_grad(false);
        model
    };
    let mut straight = Trainer::new(
        base().attach_lora(&lora, 9, &Default::default()),
        config.clone(),
    );
    straight.seed = 5;
    straight.sft_step(&batches).unwrap();
    straight.sft_step(&batches).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    straight.save_checkpoint(dir, &lora, &[]).unwrap();
    let expected = straight.sft_step(&batches).unwrap();

    let (mut resumed, state) = Trainer::load_checkpoint(base(), dir, config).unwrap();
    assert_eq!((state.step, state.seed), (2, 5));
    let got = resumed.sft_step(&batches).unwrap();
    assert_eq!(got, expected, "the step after resuming differs");
}

#[test]
fn parts_taken_at_once_give_the_step_taken_one_by_one() {
    let _rng = backend_rng();
    let demos = encoded_demos(&[
        "REPL 1 x = 2",
        "DELL 1",
        "ADDL 1 y = [value * 3 for value in range(10) if value % 2 == 0]",
    ]);
    // Three micro-batches of unequal length: threads take the longest (the last) first and
    // finish out of order; the step must still be the one taken one by one.
    let batches: Vec<Vec<&Encoded>> = demos.iter().map(|d| vec![d]).collect();
    let adapters_after = |parallel_parts: usize| {
        let config = OptimConfig {
            lr: 1e-2,
            warmup_steps: 1,
            steps: 10,
            grad_accum: 3,
            parallel_parts,
            ..OptimConfig::default()
        };
        let mut trainer = Trainer::new(lora_model::<AD>(4), config);
        let losses: Vec<f64> = (0..3)
            .map(|_| trainer.sft_step(&batches).unwrap().loss)
            .collect();
        let weights: Vec<f32> = trainer
            .model
            .named_linears()
            .into_iter()
            .filter_map(|(_, linear)| linear.lora.as_ref())
            .flat_map(|lora| {
                [lora.a.val(), lora.b.val()]
                    .into_iter()
                    .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
            })
            .collect();
        (losses, weights)
    };
    let (one_by_one_losses, one_by_one) = adapters_after(1);
    for threads in [2, 3] {
        let (losses, adapters) = adapters_after(threads);
        for (a, b) in one_by_one_losses.iter().zip(&losses) {
            assert!(
                (a - b).abs() < 1e-6,
                "{threads} threads: losses {one_by_one_losses:?} vs {losses:?}"
            );
        }
        let gap = max_gap(&one_by_one, &adapters);
        assert!(
            gap < 1e-6,
            "{threads} threads: adapters differ by {gap} after 3 steps"
        );
    }
    // The steps moved the adapters (B starts at zero), so the comparison compared something.
    assert!(one_by_one.iter().any(|&w| w != 0.0) && one_by_one_losses[2] < one_by_one_losses[0]);
}

#[test]
fn a_part_that_must_run_alone_overlaps_no_other() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    let _rng = backend_rng();
    let demos = encoded_demos(&["REPL 1 x = 2", "DELL 1", "ADDL 1 y = 3", "REPL 2 z = 4"]);
    let config = OptimConfig {
        parallel_parts: 2,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::new(lora_model::<AD>(4), config);
    let parts: Vec<usize> = (0..demos.len()).collect();
    // Runs a step; returns (most parts seen at once, lone parts that had company).
    let mut step = |alone: &(dyn Fn(&usize) -> bool + Sync)| {
        let (running, most, company) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        trainer
            .step_sum(
                &parts,
                |_| 1,
                alone,
                |model, &i| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let loss = coe_trainer::sft::sft_loss(model, &[&demos[i]]);
                    // Give a partner time to start (up to a second), as it would if allowed to.
                    let started = Instant::now();
                    while running.load(Ordering::SeqCst) < 2
                        && started.elapsed() < Duration::from_secs(1)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if alone(&i) && running.load(Ordering::SeqCst) != 1 {
                        company.fetch_add(1, Ordering::SeqCst);
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok((loss?, ()))
                },
            )
            .unwrap();
        (most.into_inner(), company.into_inner())
    };
    // Without lone parts two run at once: the threads are really there.
    assert_eq!(step(&|_| false).0, 2);
    // Parts 0 and 2 must run alone: neither ever has company, and nothing runs beside them.
    let (most, company) = step(&|i| i % 2 == 0);
    assert_eq!(company, 0, "a lone part had company");
    assert!(most <= 2);
}

/// `lora_model` with every adapter's `B` made non-zero, so that the adapters (and their
/// dropout) change the model's output, as a trained SFT adapter does.
fn trained_lora_model<B: burn::prelude::Backend>(seed: u64, dropout: f64) -> Llama<B> {
    let mut model = lora_model::<B>(seed);
    let device = Default::default();
    let _rng = backend_rng();
    B::seed(&device, seed);
    for linear in model.linears_mut() {
        if let Some(lora) = &mut linear.lora {
            let dims = lora.b.dims();
            lora.b = burn::module::Param::from_tensor(burn::tensor::Tensor::random(
                dims,
                burn::tensor::Distribution::Normal(0.0, 0.3),
                &device,
            ));
        }
    }
    model.set_lora_dropout(dropout);
    model
}

/// Episodes sampled as GRPO samples them (temperature 1, no nucleus cut).
fn grpo_rollouts(policy: &Policy<CpuBackend>, context: usize) -> Vec<Rollout> {
    let config = PlayConfig {
        sampling: SamplingConfig {
            max_tokens: 8,
            ..SamplingConfig::default()
        },
        context,
        ..toy_play_config()
    };
    play(
        policy,
        &toy_task(1),
        &toy_executor(),
        3,
        &config,
        &mut rng(7),
    )
    .unwrap()
}

fn max_log_ratio(model: &Llama<AD>, rollouts: &[Rollout]) -> f32 {
    let config = GrpoConfig::default();
    rollouts
        .iter()
        .filter(|r| r.turns.iter().any(|t| t.len > 0))
        .map(|r| {
            let adv = vec![1.0; r.turns.len()];
            episode_loss(model, r, &adv, 1, &config).stats.max_log_ratio
        })
        .fold(0.0, f32::max)
}

#[test]
fn the_first_update_scores_every_token_with_the_sampling_policy() {
    // Adapters saved with dropout 0.05 (the SFT default): dropout in the update but not in
    // sampling makes the update's policy another one.
    let mut model = trained_lora_model::<AD>(11, 0.05);
    // Sampled as run_rl samples: adapters merged into the weights.
    let policy = Policy {
        model: sampling_model(&model),
        tokenizer: tokenizer(),
    };
    let rollouts = grpo_rollouts(&policy, 2048);
    assert!(rollouts.iter().any(|r| !r.turns.is_empty()));
    <AD as burn::prelude::Backend>::seed(&Default::default(), 3);
    let with_dropout = max_log_ratio(&model, &rollouts);
    assert!(
        with_dropout > 1e-3,
        "dropout should change the ratio: {with_dropout}"
    );
    // What run_rl does before its first update: the ratio is 1 on every token.
    model.set_lora_dropout(0.0);
    let on_policy = max_log_ratio(&model, &rollouts);
    assert!(on_policy < 1e-5, "max |log ratio| {on_policy}");
}

#[test]
fn the_kl_reference_is_the_policy_rl_starts_from() {
    let model = trained_lora_model::<CpuBackend>(12, 0.0);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let path = dir.join("sft.safetensors");
    coe_policy::lora::save_adapters(&model, &TOY_LORA, &path).unwrap();
    let policy = Policy {
        model,
        tokenizer: tokenizer(),
    };
    let rollouts = grpo_rollouts(&policy, 2048);
    // The same random base as `trained_lora_model(12, ..)` builds, before its adapters.
    let base = || {
        let mut base = Llama::<CpuBackend>::random(LlamaConfig::tiny(), 12, &Default::default());
        base.embed = burn::module::Param::from_tensor(base.embed.val().mul_scalar(4.0))
            .set_require_grad(false);
        base
    };
    let reference = reference_policy(base(), Some(&path)).unwrap();
    let before_sft = reference_policy(base(), None).unwrap();
    let (mut gap, mut gap_to_base) = (0.0f32, 0.0f32);
    for rollout in rollouts.iter().filter(|r| !r.turns.is_empty()) {
        let one = std::slice::from_ref(&rollout);
        let q = reference_logprobs(&reference, one).unwrap().pop().unwrap();
        let q_base = reference_logprobs(&before_sft, one).unwrap().pop().unwrap();
        let p: Vec<f32> = rollout
            .turns
            .iter()
            .flat_map(|t| t.old_logprobs.iter().copied())
            .collect();
        for ((p, q), q_base) in p.iter().zip(&q).zip(&q_base) {
            gap = gap.max((p - q).abs());
            gap_to_base = gap_to_base.max((p - q_base).abs());
        }
    }
    // At the start of RL the reference is the policy itself: the KL term starts at 0 instead
    // of pulling towards the base model.
    assert!(
        gap < 1e-4,
        "reference differs from the starting policy by {gap}"
    );
    assert!(
        gap_to_base > 1e-2,
        "the base model is a different policy: {gap_to_base}"
    );
}

/// A group's loss with its prompt run once (one graph, one backward) has the value and the
/// adapter gradients of its episodes' losses taken one at a time, and so have the reference
/// log-probs.
#[test]
fn the_shared_prompt_update_equals_per_episode_updates() {
    let sampler = Policy {
        model: trained_lora_model::<CpuBackend>(13, 0.0),
        tokenizer: tokenizer(),
    };
    let rollouts: Vec<Rollout> = grpo_rollouts(&sampler, 2048)
        .into_iter()
        .filter(|r| r.turns.iter().any(|t| t.len > 0))
        .collect();
    assert!(rollouts.len() >= 2, "need a group");
    assert!(
        rollouts.iter().any(|r| r.turns.len() > 1),
        "need later turns"
    );
    let model = trained_lora_model::<AD>(13, 0.0);
    let references =
        reference_logprobs(&sampler.model, &rollouts.iter().collect::<Vec<_>>()).unwrap();
    let advantages: Vec<Vec<f32>> = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| (0..r.turns.len()).map(|t| (i + t) as f32 - 1.5).collect())
        .collect();
    let episodes: Vec<UpdateEpisode<'_>> = rollouts
        .iter()
        .zip(&advantages)
        .zip(&references)
        .map(|((rollout, advantages), reference)| UpdateEpisode {
            rollout,
            advantages,
            reference: Some(reference),
        })
        .collect();
    let config = GrpoConfig::default();
    let gradients = |loss: EpisodeLoss<AD>| {
        let value = loss.loss.clone().into_scalar();
        let grads = loss.loss.backward();
        let flat: Vec<f32> = model
            .named_linears()
            .into_iter()
            .filter_map(|(_, linear)| linear.lora.as_ref())
            .flat_map(|lora| {
                let a = lora.a.val().grad(&grads).unwrap();
                let b = lora.b.val().grad(&grads).unwrap();
                [
                    a.into_data().to_vec::<f32>().unwrap(),
                    b.into_data().to_vec::<f32>().unwrap(),
                ]
            })
            .flatten()
            .collect();
        (value, flat)
    };
    let (shared_value, shared_grads) =
        gradients(episodes_loss(&model, &episodes, 50, &config).unwrap());
    let (mut value, mut grads) = (0.0f32, vec![0.0f32; shared_grads.len()]);
    for episode in &episodes {
        let (v, g) =
            gradients(episodes_loss(&model, std::slice::from_ref(episode), 50, &config).unwrap());
        value += v;
        grads.iter_mut().zip(g).for_each(|(sum, x)| *sum += x);
    }
    assert!(
        (value - shared_value).abs() < 1e-4,
        "{value} vs {shared_value}"
    );
    let gap = max_gap(&grads, &shared_grads);
    let scale = grads.iter().map(|g| g.abs()).fold(0.0f32, f32::max);
    assert!(scale > 1e-3, "the gradients are all about zero");
    assert!(gap < 1e-4, "gradients differ by {gap} (largest {scale})");
    // The reference log-probs of the group equal each episode's alone.
    for (rollout, together) in rollouts.iter().zip(&references) {
        let alone = reference_logprobs(&sampler.model, &[rollout])
            .unwrap()
            .pop()
            .unwrap();
        let gap = max_gap(&alone, together);
        assert!(gap < 1e-4);
    }
}

#[test]
fn the_loss_weighs_every_token_of_a_group_alike() {
    let tok = tokenizer();
    let model = lora_model::<AD>(3);
    let valid = model.valid();
    let short = toy_rollout(&tok, "EXIT", &valid);
    let long = toy_rollout(&tok, "REPL 1 >>>x = 2 and a longer command", &valid);
    let (n_short, n_long) = (short.turns[0].len, long.turns[0].len);
    assert!(n_long > 2 * n_short);
    let config = GrpoConfig {
        beta: 0.0,
        ..GrpoConfig::default()
    };
    let loss = |rollout: &Rollout| {
        let part = episode_loss(&model, rollout, &[1.0], n_short + n_long, &config);
        part.loss.into_scalar()
    };
    // On-policy with advantage 1 each token's objective is 1: an episode's share of the
    // group's loss is its share of the group's tokens (a per-episode mean gave both -1).
    let (short_loss, long_loss) = (loss(&short), loss(&long));
    assert!(
        (short_loss / long_loss - n_short as f32 / n_long as f32).abs() < 1e-4,
        "{short_loss} {long_loss}"
    );
    assert!((short_loss + long_loss + 1.0).abs() < 1e-4);
}

#[test]
fn an_episode_cut_by_the_context_gets_the_turn_limit_penalty() {
    let policy = toy_policy(4);
    // Room for the opening and about one turn: every episode is cut before its third turn.
    let started =
        coe_tool_state::Episode::start(toy_task(1), toy_executor(), toy_play_config().episode)
            .unwrap();
    let opening = coe_trainer::chat::prompt_ids(
        &policy.tokenizer,
        &coe_data::prompt::opening(&toy_task(1), started.observation()),
    )
    .unwrap()
    .len();
    // A prompt that does not fit at all: every episode of the group is cut before its first
    // turn, and the play goes on.
    let none = grpo_rollouts(&policy, opening + 7);
    assert_eq!(none.len(), 3);
    assert!(none.iter().all(|r| r.context_full && r.turns.is_empty()));
    let rollouts = grpo_rollouts(&policy, opening + 8 + 40);
    let cut: Vec<&Rollout> = rollouts.iter().filter(|r| r.context_full).collect();
    assert!(!cut.is_empty(), "no episode was cut");
    let penalty = coe_tool_state::Rewards::default();
    for rollout in cut {
        assert_eq!(
            rollout.trace.end,
            Some(coe_tool_state::EndReason::ContextFull)
        );
        let last = rollout.trace.turns.last().unwrap();
        assert_eq!(rollout.turns.last().unwrap().reward, last.reward);
        assert!(last.reward <= penalty.no_exit + penalty.turn, "{last:?}");
    }
}

#[test]
fn evaluation_shards_merge_into_exactly_the_whole_run() {
    use coe_trainer::eval::{EvalSummary, evaluate};
    let policy = toy_policy(6);
    let tasks: Vec<Task> = (0..5).map(toy_task).collect();
    let config = PlayConfig {
        sampling: SamplingConfig {
            temperature: 1.0,
            max_tokens: 8,
            ..SamplingConfig::default()
        },
        ..toy_play_config()
    };
    let run = |indices: &[usize]| {
        let shard: Vec<(usize, Task)> = indices.iter().map(|&i| (i, tasks[i].clone())).collect();
        evaluate(&policy, &shard, &toy_executor(), 3, &config, 11, |_, _| {})
            .unwrap()
            .0
    };
    let whole = run(&[0, 1, 2, 3, 4]);
    let shards = [run(&[0, 2, 4]), run(&[1, 3])];
    let merged = EvalSummary::merge(&shards).unwrap();
    assert_eq!(merged, whole);
    // A shard given twice (or shards of two splits) would count tasks twice: refused.
    let twice = EvalSummary::merge(&[shards[0].clone(), shards[1].clone(), shards[0].clone()]);
    assert!(twice.unwrap_err().contains("in two shards"));
    // Shards played with other settings are not shards of one run, and merged ones keep theirs.
    let settings = coe_trainer::eval::EvalSettings {
        temperature: 1.0,
        max_turns: 10,
        context: 2048,
        seed: 11,
        direct: false,
        adapter: None,
    };
    let (mut first, mut second) = (shards[0].clone(), shards[1].clone());
    first.settings = Some(settings.clone());
    second.settings = Some(coe_trainer::eval::EvalSettings {
        temperature: 0.0,
        ..settings.clone()
    });
    let mixed = EvalSummary::merge(&[first.clone(), second.clone()]);
    assert!(mixed.unwrap_err().contains("different settings"));
    second.settings = Some(settings.clone());
    let merged = EvalSummary::merge(&[first, second]).unwrap();
    assert_eq!(merged.settings, Some(settings));
    assert_eq!(whole.per_task.len(), 5);
    let interval = whole.pass_at_1_interval.unwrap();
    assert!(interval.low <= whole.pass_at_1 && whole.pass_at_1 <= interval.high);
}
