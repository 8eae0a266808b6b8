//! `cargo xtask`: the one entry point that prepares what a task needs (toolchain targets, and
//! later the guest, its snapshot and the model) and then runs it, so a fresh machine needs no
//! manual step.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

const WASM_TARGET: &str = "wasm32-wasip1";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "coe's task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the main job on the bundled example.
    Demo,
    /// Run every test of the workspace (what CI runs, after the lints).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run CI's checks: formatting, clippy with warnings as errors, then the tests.
    Ci,
    /// Install the toolchain pieces the project needs (the wasm32-wasip1 target).
    Setup,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match cli.task {
        Task::Demo => demo(),
        Task::Test { args } => test(&args),
        Task::Ci => ci(),
        Task::Setup => ensure_wasm_target(),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}

/// The main job. Until the policy lands, it applies the example's repairing edits.
fn demo() -> Result<()> {
    ensure_wasm_target()?;
    let example = Path::new("fixtures/examples");
    cargo(&[
        "run",
        "--quiet",
        "--release",
        "--bin",
        "coe",
        "--",
        "apply",
        &example.join("max_of_three.py").to_string_lossy(),
        &example.join("max_of_three.dsl").to_string_lossy(),
    ])
}

fn test(extra: &[String]) -> Result<()> {
    ensure_wasm_target()?;
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
