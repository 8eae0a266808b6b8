//! Property tests: printing then parsing gives the command back, and no input panics.

use coe_dsl::{Command, LineNumber, LineText, SearchText};
use proptest::prelude::*;

/// Text for one line: anything without `\n` and `\r`, biased towards code-like characters.
fn line_text() -> impl Strategy<Value = LineText> {
    prop_oneof![
        "[^\n\r]{0,40}",
        "[ \t]{0,8}[a-z_()=+<>:' -]{0,30}",
        "[ >a]{0,12}",
    ]
    .prop_map(|s| LineText::new(s).unwrap())
}

fn search_text() -> impl Strategy<Value = SearchText> {
    prop_oneof!["[^\n\r]{1,20}", "[ >a]{1,12}"]
        .prop_filter_map("not a valid REPW old text", |s| SearchText::new(s).ok())
}

fn line_number() -> impl Strategy<Value = LineNumber> {
    prop_oneof![1u32..50, 1u32..=u32::MAX].prop_map(|n| LineNumber::new(n).unwrap())
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (line_number(), line_text()).prop_map(|(line, text)| Command::AddLine { line, text }),
        (line_number(), line_text()).prop_map(|(line, text)| Command::ReplaceLine { line, text }),
        (line_number(), search_text(), line_text())
            .prop_map(|(line, old, new)| Command::ReplaceWord { line, old, new }),
        line_number().prop_map(|line| Command::DeleteLine { line }),
        Just(Command::Exit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn print_then_parse_round_trips(command in command()) {
        let printed = command.to_string();
        prop_assert_eq!(Command::parse(&printed), Ok(command.clone()));
        // A model's trailing newline is tolerated too.
        prop_assert_eq!(Command::parse(&format!("{printed}\n")), Ok(command));
    }

    #[test]
    fn parser_never_panics_and_errors_are_one_line(input in any::<String>()) {
        if let Err(error) = Command::parse(&input) {
            let message = error.to_string();
            prop_assert!(!message.contains('\n'), "{message:?}");
            prop_assert!(message.chars().count() < 160, "{message:?}");
        }
    }

    #[test]
    fn parser_never_panics_on_near_commands(
        input in "(ADDL|REPL|REPW|DELL|EXIT|addl|)[ \t]{0,2}[0-9x-]{0,12}[ >]{0,5}[^\n]{0,10}( >>>)?[^\n]{0,5}\n?"
    ) {
        if let Ok(command) = Command::parse(&input) {
            // Whatever parses prints to a form that parses to the same command.
            prop_assert_eq!(Command::parse(&command.to_string()), Ok(command));
        }
    }
}
