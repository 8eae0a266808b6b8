//! `run_rl` as a whole, on the default model (SmolLM2-135M) with the default policy's adapters
//! saved with LoRA dropout on: what the run itself must wire up, which the unit tests of its
//! parts cannot see. Its first update scores every token with the policy that sampled it
//! (dropout off), its KL reference is the policy it starts from (KL 0 at the first step), a
//! run stopped after a step and resumed takes the step a straight run takes, and its adapter is
//! saved with the settings it was loaded with. Needs `cargo xtask model`: without it the test
//! says so and returns (under CI it fails).

use std::path::{Path, PathBuf};

use coe_exec::testing::FakeExecutor;
use coe_policy::{CpuTrainBackend, LoraConfig, Policy, SamplingConfig};
use coe_trainer::config::RunConfig;
use coe_trainer::grpo::{GrpoConfig, run_rl};
use coe_trainer::optim::OptimConfig;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The default policy's adapters, saved again with dropout 0.1 in their settings.
fn adapter_with_dropout(model: &Path, dir: &Path) -> PathBuf {
    let policy = Policy::<CpuTrainBackend>::load(model, &Default::default()).unwrap();
    let (model, lora) = coe_policy::lora::load_adapters(
        policy.model,
        &fixture("fixtures/policy/adapter.safetensors"),
    )
    .unwrap();
    let path = dir.join("init.safetensors");
    let lora = LoraConfig {
        dropout: 0.1,
        ..lora
    };
    coe_policy::lora::save_adapters(&model, &lora, &path).unwrap();
    path
}

fn config(init: &Path, tasks: &Path, out: &Path, steps: usize) -> RunConfig {
    RunConfig {
        init_adapter: Some(init.to_path_buf()),
        rl_tasks: Some(tasks.to_path_buf()),
        out_dir: out.to_path_buf(),
        seed: 3,
        context: 1024,
        checkpoint_every: 1,
        snapshot_every: 0,
        tasks_per_step: 2,
        max_turns: 1,
        grpo: GrpoConfig {
            group_size: 4,
            beta: 0.01,
            ..GrpoConfig::default()
        },
        // Short commands: some end, some are cut (malformed), so groups differ.
        sampling: SamplingConfig {
            max_tokens: 4,
            ..SamplingConfig::default()
        },
        // A constant rate, so a run of 1 step and one of 2 share their first step's.
        optim: OptimConfig {
            lr: 1e-4,
            warmup_steps: 0,
            steps,
            min_lr_ratio: 1.0,
            grad_accum: 1,
            parallel_parts: 1,
            ..OptimConfig::default()
        },
        ..RunConfig::default()
    }
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &serde_json::Value| line["phase"] == "rl")
        .collect()
}

fn adapter_values(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .iter()
        .flat_map(|name| {
            file.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_run_is_on_policy_anchored_to_its_start_and_resumes_exactly() {
    let Some(model) = coe_cache::default_model_for_tests().unwrap() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let init = adapter_with_dropout(&model, dir);
    // Two validation tasks (any tasks would do: nothing is evaluated).
    let tasks = dir.join("tasks.jsonl");
    let lines: Vec<String> =
        std::fs::read_to_string(fixture("fixtures/eval/mbpp-synthetic-validation.jsonl"))
            .unwrap()
            .lines()
            .step_by(2)
            .take(2)
            .map(String::from)
            .collect();
    std::fs::write(&tasks, lines.join("\n") + "\n").unwrap();
    // Nothing passes: returns differ by the commands' validity alone.
    let executor = FakeExecutor::passing_when("no program contains this");

    let straight = dir.join("straight");
    run_rl::<CpuTrainBackend, _>(&config(&init, &tasks, &straight, 2), &executor, false).unwrap();
    let lines = metrics(&straight);
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert!(
        first["skipped_groups"].as_u64().unwrap() < 2,
        "some group must have differing returns for the checks below to mean anything: {first}"
    );
    // Dropout is off in the update, so the policy that sampled scores every token alike, up to
    // the rounding between the sampler's merged weights and the update's adapters (2.3e-4
    // measured; dropout 0.1 left on moves log-probs by orders of magnitude more).
    assert!(first["max_log_ratio"].as_f64().unwrap() < 1e-3, "{first}");
    // The reference is the starting policy (base + the init adapters), not the base model.
    assert!(first["kl"].as_f64().unwrap().abs() < 1e-5, "{first}");

    let stopped = dir.join("stopped");
    run_rl::<CpuTrainBackend, _>(&config(&init, &tasks, &stopped, 1), &executor, false).unwrap();
    run_rl::<CpuTrainBackend, _>(&config(&init, &tasks, &stopped, 2), &executor, true).unwrap();
    let resumed = metrics(&stopped);
    assert_eq!(resumed.len(), 2);
    for key in ["loss", "mean_return", "kl", "skipped_groups", "episodes"] {
        assert_eq!(resumed[1][key], lines[1][key], "step 2's {key}");
    }
    let (a, b) = (
        adapter_values(&straight.join("adapter.safetensors")),
        adapter_values(&stopped.join("adapter.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    let gap = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(gap < 1e-6, "the resumed run's adapters differ by {gap}");

    // Saved with the settings the adapters were loaded with, not the config's defaults.
    assert_ne!(RunConfig::default().lora.dropout, 0.1);
    let base = Policy::<CpuTrainBackend>::load(&model, &Default::default()).unwrap();
    let (_, saved) =
        coe_policy::lora::load_adapters(base.model, &straight.join("adapter.safetensors")).unwrap();
    assert_eq!(saved.dropout, 0.1);
}
