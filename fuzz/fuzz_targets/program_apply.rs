//! A program (before the first NUL byte) and commands (one per line after it): applying never
//! panics, a refused command leaves the program unchanged, and the source round-trips.
#![no_main]

use coe_dsl::parse_script;
use coe_tool_state::{Program, render_observation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (source, script) = input.split_once('\0').unwrap_or((input, ""));
    let mut program = Program::parse(source);
    assert_eq!(Program::parse(&program.to_source()), program);
    for (_, parsed) in parse_script(script) {
        let Ok(command) = parsed else { continue };
        let before = program.clone();
        if program.apply(&command).is_err() {
            assert_eq!(program, before);
        }
    }
    let _ = render_observation(&program, "feedback");
});
