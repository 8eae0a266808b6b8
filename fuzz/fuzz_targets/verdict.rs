//! Any ending of a run, any guest report and any limit flags: the host's verdict never panics,
//! output over its limit is always `output_limit`, and an accepted outcome describes a possible
//! run (the requested number of tests, or none when the program did not complete).
#![no_main]

use std::time::Duration;

use coe_exec::Status;
use coe_sandbox_protocol::{Ending, GuestReport, RunEnd, verdict};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn run_end(u: &mut Unstructured<'_>) -> Result<RunEnd> {
    let ending = match u.int_in_range(0..=5)? {
        0 => Ending::Returned,
        1 => Ending::Exited(u.arbitrary()?),
        2 => Ending::TimedOut,
        3 => Ending::StackOverflow,
        4 => Ending::Trapped(u.arbitrary()?),
        _ => Ending::NotStarted(u.arbitrary()?),
    };
    let report = match u.int_in_range(0..=2)? {
        0 => GuestReport::Missing,
        1 => GuestReport::Invalid(u.arbitrary()?),
        _ => GuestReport::Received(u.arbitrary()?),
    };
    Ok(RunEnd {
        ending,
        report,
        memory_limit_hit: u.arbitrary()?,
        output_exceeded: u.arbitrary()?,
        stdout: u.arbitrary()?,
        tests_requested: u.int_in_range(0..=7)?,
        elapsed: Duration::from_micros(u.arbitrary()?),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(end) = run_end(&mut Unstructured::new(data)) else {
        return;
    };
    let (requested, flooded) = (end.tests_requested, end.output_exceeded);
    if let Ok(outcome) = verdict(end) {
        assert!(outcome.tests.is_empty() || outcome.tests.len() == requested);
        assert_eq!(flooded, outcome.status == Status::OutputLimit);
    }
});
