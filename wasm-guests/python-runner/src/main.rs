//! coe's sandbox guest: RustPython compiled to `wasm32-wasip1`.
//!
//! Build-time (`wizer-initialize`, snapshotted by the host with wasmtime-wizer): build the
//! interpreter with its frozen standard library and import the modules MBPP-style programs use,
//! so a run starts from a warm interpreter.
//!
//! Run-time (`_start`): read one postcard [`Request`] from stdin, run setup, program and each
//! test in one `__main__` namespace, and hand the postcard [`Response`] to the host function
//! `coe.submit_response`. Python code cannot call that function, and whatever it prints goes to
//! stdout, which the host only ever treats as captured text: the result cannot be forged.

use std::cell::OnceCell;
use std::io::Read as _;

use coe_sandbox_protocol::{Exception, PHASE_DONE, PHASE_TESTS, Request, Response, StepResult};
use rustpython::vm::{
    AsObject, Interpreter, PyObjectRef, VirtualMachine, builtins::PyBaseExceptionRef,
    compiler::Mode, scope::Scope,
};
use rustpython::{InterpreterBuilder, InterpreterBuilderExt};

/// Modules imported into the snapshot: what MBPP and HumanEval solutions import, and what the
/// interpreter itself needs to run them. Importing one later still works, only slower.
const PRELOADED_MODULES: &[&str] = &[
    "sys", "builtins", "re", "math", "cmath", "collections", "collections.abc", "heapq",
    "itertools", "functools", "bisect", "operator", "string", "copy", "typing", "array",
    "fractions", "statistics", "random", "datetime", "struct", "decimal", "hashlib", "enum",
    "dataclasses", "abc", "types", "io", "numbers", "keyword", "textwrap", "unicodedata",
    "linecache", "traceback", "warnings",
];

/// Longest exception message reported, in characters.
const MESSAGE_LIMIT: usize = 500;

/// Source names the host and the feedback rely on.
const SETUP_NAME: &str = "<setup>";
const PROGRAM_NAME: &str = "<program>";
const TEST_NAME: &str = "<test>";

#[link(wasm_import_module = "coe")]
unsafe extern "C" {
    /// Hands the encoded response to the host (once per run).
    #[link_name = "submit_response"]
    fn host_submit_response(ptr: *const u8, len: usize);
    /// Tells the host a phase ended (for its timings only).
    #[link_name = "mark_phase"]
    fn host_mark_phase(phase: i32);
}

fn mark_phase(phase: i32) {
    // SAFETY: a plain call with an integer argument.
    unsafe { host_mark_phase(phase) };
}

thread_local! {
    // The guest is single-threaded; the interpreter lives for the whole instance.
    static INTERPRETER: OnceCell<Interpreter> = const { OnceCell::new() };
}

fn build_interpreter() -> Interpreter {
    let interpreter = InterpreterBuilder::new().init_stdlib().interpreter();
    interpreter.enter(|vm| {
        for module in PRELOADED_MODULES {
            // A module that fails to import is simply not preloaded.
            let _ = vm.import(*module, 0);
        }
    });
    interpreter
}

/// Run by wasmtime-wizer before the snapshot is taken.
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn wizer_initialize() {
    INTERPRETER.with(|cell| {
        cell.get_or_init(build_interpreter);
    });
}

fn main() {
    let mut input = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("python-runner: cannot read the request: {error}");
        std::process::exit(3);
    }
    let request: Request<'_> = match postcard::from_bytes(&input) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("python-runner: malformed request: {error}");
            std::process::exit(3);
        }
    };
    let response = INTERPRETER.with(|cell| {
        let interpreter = cell.get_or_init(build_interpreter);
        interpreter.enter(|vm| run(vm, &request))
    });
    let bytes = match postcard::to_allocvec(&response) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("python-runner: cannot encode the response: {error}");
            std::process::exit(3);
        }
    };
    // SAFETY: the host copies `len` bytes from `ptr` within this instance's memory.
    unsafe { host_submit_response(bytes.as_ptr(), bytes.len()) };
}

fn run(vm: &VirtualMachine, request: &Request<'_>) -> Response {
    let scope = match vm.new_scope_with_main() {
        Ok(scope) => scope,
        Err(exc) => {
            let failure = StepResult::Raised(describe(vm, &exc));
            return Response {
                setup: failure,
                program: StepResult::Skipped,
                tests: vec![StepResult::Skipped; request.tests.len()],
            };
        }
    };
    let setup = run_step(vm, &scope, &request.setup, SETUP_NAME);
    let program = if setup == StepResult::Completed {
        run_step(vm, &scope, &request.program, PROGRAM_NAME)
    } else {
        StepResult::Skipped
    };
    mark_phase(PHASE_TESTS);
    let tests = request
        .tests
        .iter()
        .map(|test| {
            if program != StepResult::Completed {
                return StepResult::Skipped;
            }
            // A trace or profile hook left by the program must not run inside a test.
            *vm.trace_func.borrow_mut() = vm.ctx.none();
            *vm.profile_func.borrow_mut() = vm.ctx.none();
            run_step(vm, &scope, test, TEST_NAME)
        })
        .collect();
    mark_phase(PHASE_DONE);
    flush_stdout(vm);
    Response {
        setup,
        program,
        tests,
    }
}

/// Compiles `source` as its own code object and runs it in `scope`.
fn run_step(vm: &VirtualMachine, scope: &Scope, source: &str, name: &str) -> StepResult {
    match vm.compile(source, Mode::Exec, name) {
        Err(error) => {
            let exc = error.into_pyexception(vm, Some(source));
            StepResult::CompileError(describe(vm, &exc))
        }
        Ok(code) => match vm.run_code_obj(code, scope.clone()) {
            Ok(_) => StepResult::Completed,
            Err(exc) => StepResult::Raised(describe(vm, &exc)),
        },
    }
}

/// Describes an exception: its class name, message, and the program line it came from.
fn describe(vm: &VirtualMachine, exc: &PyBaseExceptionRef) -> Exception {
    let type_name = exc.class().name().to_string();
    let is_syntax_error = exc
        .class()
        .fast_issubclass(vm.ctx.exceptions.syntax_error);
    let (message, line) = if is_syntax_error {
        // SyntaxError's str() repeats file and line; `msg` and `lineno` are the parts we want.
        let message = attribute_text(vm, exc.as_object(), "msg");
        let in_program = attribute_text(vm, exc.as_object(), "filename") == PROGRAM_NAME;
        let line = in_program
            .then(|| attribute_line(vm, exc.as_object(), "lineno"))
            .flatten();
        (message, line)
    } else {
        let message = match exc.as_object().str(vm) {
            Ok(text) => text.to_string_lossy().into_owned(),
            Err(_) => "<exception str() failed>".to_owned(),
        };
        (message, program_line(exc))
    };
    Exception {
        type_name,
        message: truncate(message, MESSAGE_LIMIT),
        line,
    }
}

/// The line of the innermost traceback frame that runs program code.
fn program_line(exc: &PyBaseExceptionRef) -> Option<u32> {
    let mut line = None;
    let mut next = exc.traceback();
    while let Some(tb) = next {
        if tb.frame.f_code().source_path().as_str() == PROGRAM_NAME {
            line = u32::try_from(tb.lineno.get()).ok();
        }
        next = tb.next.lock().clone();
    }
    line
}

fn attribute_text(vm: &VirtualMachine, object: &rustpython::vm::PyObject, name: &'static str) -> String {
    object
        .get_attr(name, vm)
        .and_then(|value| value.str(vm))
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn attribute_line(vm: &VirtualMachine, object: &rustpython::vm::PyObject, name: &'static str) -> Option<u32> {
    let value: PyObjectRef = object.get_attr(name, vm).ok()?;
    let number: i64 = value.try_into_value(vm).ok()?;
    u32::try_from(number).ok()
}

/// Flushes the interpreter's own stdout (not whatever the program put in `sys.stdout`), so the
/// host sees everything printed.
fn flush_stdout(vm: &VirtualMachine) {
    if let Ok(stdout) = vm.sys_module.get_attr("__stdout__", vm) {
        let _ = vm.call_method(&stdout, "flush", ());
    }
}

fn truncate(mut text: String, limit: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(limit) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}
