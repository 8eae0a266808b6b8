//! Any bytes as a guest response: decoding never panics, and an accepted response describes a
//! possible run (the requested number of tests, or none when the program did not complete).
#![no_main]

use std::time::Duration;

use coe_sandbox_protocol::decode_outcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&requested, bytes)) = data.split_first() else {
        return;
    };
    let requested = usize::from(requested % 8);
    if let Ok(outcome) = decode_outcome(bytes, requested, String::new(), Duration::ZERO) {
        assert!(outcome.tests.is_empty() || outcome.tests.len() == requested);
    }
});
