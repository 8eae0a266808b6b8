//! Builds the Python guest (`wasm-guests/python-runner`) for wasm32-wasip1 with a nested cargo
//! invocation, and points `COE_PYTHON_RUNNER_WASM` at the result for `include_bytes!`.
//!
//! The guest is rebuilt whenever its sources, lock file or the protocol crate change, so a
//! stale guest cannot be embedded. It builds into `<target>/wasm-guests`, shared by every
//! profile, so dev, test and release builds compile RustPython once.
//! `COE_PYTHON_RUNNER_WASM=/path/to/python-runner.wasm` skips the nested build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "wasm32-wasip1";

fn main() {
    println!("cargo::rerun-if-env-changed=COE_PYTHON_RUNNER_WASM");
    if let Some(prebuilt) = env::var_os("COE_PYTHON_RUNNER_WASM") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo::rerun-if-changed={}", prebuilt.display());
        println!(
            "cargo::rustc-env=COE_PYTHON_RUNNER_WASM={}",
            prebuilt.display()
        );
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.join("../..");
    let guest = workspace.join("wasm-guests/python-runner");
    for input in [
        guest.join("src"),
        guest.join("Cargo.toml"),
        guest.join("Cargo.lock"),
        guest.join(".cargo/config.toml"),
        workspace.join("wasm-guests/vendor"),
        workspace.join("crates/sandbox-protocol/src"),
        workspace.join("crates/sandbox-protocol/Cargo.toml"),
        workspace.join("rust-toolchain.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", input.display());
    }

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if !target_installed(Path::new(&rustc)) {
        fail(&format!(
            "the {GUEST_TARGET} target is not installed for this toolchain; \
             run `cargo xtask setup` (or `rustup target add {GUEST_TARGET}`)"
        ));
    }

    let target_dir = guest_target_dir();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest)
        .args(["build", "--release", "--locked", "--ignore-rust-version"])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are not meant for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        // Build scripts' stdout is read by cargo as directives: send the nested output to stderr.
        .stdout(Stdio::from(std::io::stderr()))
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("building the Python guest failed ({status})")),
        Err(error) => fail(&format!(
            "cannot run cargo to build the Python guest: {error}"
        )),
    }
    let wasm = target_dir
        .join(GUEST_TARGET)
        .join("release/python-runner.wasm");
    if !wasm.is_file() {
        fail(&format!(
            "the guest build did not produce {}",
            wasm.display()
        ));
    }
    println!("cargo::rustc-env=COE_PYTHON_RUNNER_WASM={}", wasm.display());
}

/// Whether the standard library for the guest target is installed next to `rustc`.
fn target_installed(rustc: &Path) -> bool {
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(GUEST_TARGET)
        .is_dir()
}

/// `<target>/wasm-guests`, found from OUT_DIR (`<target>/<profile>/build/<pkg>/out`), so every
/// profile shares one guest build.
fn guest_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    out_dir
        .ancestors()
        .nth(4)
        .map(|target| target.join("wasm-guests"))
        .unwrap_or_else(|| out_dir.join("wasm-guests"))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
