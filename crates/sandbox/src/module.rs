//! The guest module: snapshot with wasmtime-wizer, compile with Cranelift, cache on disk.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Instance, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::SandboxError;
use crate::run::{self, block_on};

/// The guest as built by `build.rs` (before the snapshot).
static GUEST_WASM: &[u8] = include_bytes!(env!("COE_PYTHON_RUNNER_WASM"));

/// Bump when the way the snapshot is made changes, to invalidate old caches.
const SNAPSHOT_FORMAT: u32 = 1;

/// The cache folder ([`coe_cache::cache_dir`]); the sandbox keeps its compiled guest in
/// `sandbox/` there.
pub fn cache_dir_default() -> PathBuf {
    coe_cache::cache_dir()
}

/// Loads the compiled snapshot from the cache, or builds and caches it.
pub(crate) fn load_or_build(engine: &Engine, cache_dir: &Path) -> Result<Module, SandboxError> {
    let path = cache_dir
        .join("sandbox")
        .join(format!("python-runner-{}.cwasm", cache_key(engine)));
    if path.is_file() {
        // SAFETY: the file was written by `Module::serialize` of this same guest and engine
        // configuration (both are in its name), in coe's own cache directory. wasmtime still
        // checks its header and refuses an incompatible file, and then we rebuild.
        #[allow(unsafe_code)]
        let cached = unsafe { Module::deserialize_file(engine, &path) };
        match cached {
            Ok(module) => return Ok(module),
            Err(error) => tracing::warn!(
                "ignoring unusable cached guest {}: {error}; rebuilding",
                path.display()
            ),
        }
    }
    tracing::info!(
        "preparing the Python sandbox: snapshotting and compiling the guest (once; cached in {})",
        path.display()
    );
    let snapshot = snapshot(engine, GUEST_WASM)?;
    let module = Module::new(engine, &snapshot)
        .map_err(|e| SandboxError::Prepare(format!("compiling the snapshot: {e}")))?;
    if let Err(error) = write_cache(&module, &path) {
        // A read-only cache only costs time on the next start.
        tracing::warn!(
            "cannot cache the compiled guest at {}: {error}",
            path.display()
        );
    }
    Ok(module)
}

/// The cache key: the guest's hash, the engine's compatibility hash and the snapshot format.
fn cache_key(engine: &Engine) -> String {
    let mut engine_hasher = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hasher);
    let mut sha = Sha256::new();
    sha.update(GUEST_WASM);
    sha.update(engine_hasher.finish().to_le_bytes());
    sha.update(SNAPSHOT_FORMAT.to_le_bytes());
    sha.update(env!("CARGO_PKG_VERSION").as_bytes());
    let digest = sha.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn write_cache(module: &Module, path: &Path) -> std::io::Result<()> {
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    // A concurrent reader never sees half a file.
    coe_cache::write_atomically(path, &bytes)
}

/// Runs the guest's `wizer-initialize` and returns the pre-initialized module.
fn snapshot(engine: &Engine, wasm: &[u8]) -> Result<Vec<u8>, SandboxError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| SandboxError::Prepare(format!("{what}: {e}"));
    let wizer = Wizer::new();
    let (context, instrumented) = wizer
        .instrument(wasm)
        .map_err(|e| fail("instrumenting the guest", &e))?;
    let module = Module::new(engine, &instrumented).map_err(|e| fail("compiling the guest", &e))?;
    let linker = run::linker(engine)?;
    let mut store = run::init_store(engine);
    let instance = block_on(linker.instantiate_async(&mut store, &module))
        .map_err(|e| fail("instantiating the guest", &e))?;
    let init = instance
        .get_typed_func::<(), ()>(&mut store, wizer.get_init_func())
        .map_err(|e| fail("finding the guest's initializer", &e))?;
    block_on(init.call_async(&mut store, ())).map_err(|e| fail("initializing the guest", &e))?;
    let mut state = SnapshotSource {
        store: &mut store,
        instance,
    };
    block_on(wizer.snapshot(&context, &mut state)).map_err(|e| fail("snapshotting the guest", &e))
}

/// What wizer reads the initialized state from.
struct SnapshotSource<'a> {
    store: &'a mut Store<run::RunState>,
    instance: Instance,
}

impl InstanceState for SnapshotSource<'_> {
    fn global_get(
        &mut self,
        name: &str,
        _type_hint: ValType,
    ) -> impl Future<Output = SnapshotVal> + Send {
        let value = self
            .instance
            .get_global(&mut *self.store, name)
            .map(|global| global.get(&mut *self.store));
        // Wizer only asks for the globals it instrumented, which exist and are numeric.
        let value = match value {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            _ => SnapshotVal::I32(0),
        };
        std::future::ready(value)
    }

    fn memory_contents(
        &mut self,
        name: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => contents(&[]),
        }
        std::future::ready(())
    }
}
