//! Snapshot of every parse error message: these lines are what the model reads.

use coe_dsl::Command;

#[test]
fn every_error_message() {
    let inputs = [
        "",
        "DELL 1\nDELL 2",
        "addl 1 >>>x",
        "Fix the bug on line 2 by changing - to +",
        "REPL",
        "DELL x",
        "REPL 0 >>>x",
        "REPL 4294967296 >>>x",
        "ADDL 2 x = 1",
        "REPW 2 >>>a>>>b",
        "REPW 2 >>> >>>b",
        "DELL 2 now",
        "EXIT please",
    ];
    let mut report = String::new();
    for input in inputs {
        let error = Command::parse(input).expect_err(input);
        report.push_str(&format!("{input:?}\n  {:?}: {error}\n", error.kind()));
    }
    insta::assert_snapshot!(report);
}
