//! Any input: the parser never panics, errors are one line, and what parses re-parses from its
//! printed form to the same command.
#![no_main]

use coe_dsl::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match Command::parse(input) {
        Ok(command) => assert_eq!(Command::parse(&command.to_string()), Ok(command)),
        Err(error) => assert!(!error.to_string().contains('\n')),
    }
});
