//! Property tests: applying any command never panics, and a refused command changes nothing.

use coe_dsl::Command;
use coe_tool_state::Program;
use proptest::prelude::*;

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        "(def f\\(x\\):|    return x|\tpass|a = b - c|)(\r?\n(    x = 1|y|\t\tz = [1]|))*\r?\n?",
        any::<String>(),
    ]
}

fn command_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(ADDL|REPL|REPW|DELL) [0-9]{1,2} >>>[ a-z=-]{0,8}( >>>[ a-z+]{0,5})?",
        "DELL [0-9]{1,2}",
        Just("EXIT".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn source_round_trips(source in source()) {
        let program = Program::parse(&source);
        // Any line break style is kept when the source used one style throughout.
        let reparsed = Program::parse(&program.to_source());
        prop_assert_eq!(reparsed, program);
    }

    #[test]
    fn apply_never_panics_and_refusals_change_nothing(
        source in source(),
        commands in proptest::collection::vec(command_text(), 1..12),
    ) {
        let mut program = Program::parse(&source);
        for text in commands {
            let Ok(command) = Command::parse(&text) else { continue };
            let before = program.clone();
            match program.apply(&command) {
                Ok(()) => {
                    let expected = match &command {
                        Command::AddLine { .. } => before.len() + 1,
                        Command::DeleteLine { .. } => before.len() - 1,
                        _ => before.len(),
                    };
                    prop_assert_eq!(program.len(), expected);
                }
                Err(error) => {
                    prop_assert_eq!(&program, &before);
                    prop_assert!(!error.to_string().contains('\n'));
                }
            }
        }
    }

    #[test]
    fn add_then_delete_restores(source in source(), at in 1u32..30, text in "[ a-z]{0,10}") {
        let mut program = Program::parse(&source);
        let before = program.clone();
        if program.apply(&Command::parse(&format!("ADDL {at} >>>{text}")).unwrap()).is_ok() {
            program.apply(&Command::parse(&format!("DELL {at}")).unwrap()).unwrap();
            prop_assert_eq!(program.lines(), before.lines());
        }
    }
}
