//! Parsing examples: what a model may write and what it means.

use coe_dsl::{Command, Keyword, LineNumber, LineText, ParseError, SearchText, parse_script};

fn line(n: u32) -> LineNumber {
    LineNumber::new(n).unwrap()
}

fn text(s: &str) -> LineText {
    LineText::new(s).unwrap()
}

#[test]
fn parses_each_command() {
    assert_eq!(
        Command::parse("ADDL 1 >>>import math"),
        Ok(Command::AddLine {
            line: line(1),
            text: text("import math")
        })
    );
    assert_eq!(
        Command::parse("REPL 2 >>>    return a + b"),
        Ok(Command::ReplaceLine {
            line: line(2),
            text: text("    return a + b")
        })
    );
    assert_eq!(
        Command::parse("REPW 12 >>>a - b >>>a + b"),
        Ok(Command::ReplaceWord {
            line: line(12),
            old: SearchText::new("a - b").unwrap(),
            new: text("a + b")
        })
    );
    assert_eq!(
        Command::parse("DELL 7"),
        Ok(Command::DeleteLine { line: line(7) })
    );
    assert_eq!(Command::parse("EXIT"), Ok(Command::Exit));
}

#[test]
fn text_is_verbatim() {
    let cases = [
        "\t\tx = 1",
        "    s = 'a >>> b'",
        "",
        "   ",
        "print('héllo, 世界')  # comment",
        ">>>",
    ];
    for case in cases {
        let parsed = Command::parse(&format!("REPL 3 >>>{case}")).unwrap();
        assert_eq!(
            parsed,
            Command::ReplaceLine {
                line: line(3),
                text: text(case)
            },
            "{case:?}"
        );
    }
}

#[test]
fn repw_splits_at_the_first_separator() {
    let parsed = Command::parse("REPW 1 >>>x >>>y >>>z").unwrap();
    assert_eq!(
        parsed,
        Command::ReplaceWord {
            line: line(1),
            old: SearchText::new("x").unwrap(),
            new: text("y >>>z")
        }
    );
    // `>>>` without a space before it is part of the old text.
    let parsed = Command::parse("REPW 1 >>>a>>>b >>>c").unwrap();
    assert_eq!(
        parsed,
        Command::ReplaceWord {
            line: line(1),
            old: SearchText::new("a>>>b").unwrap(),
            new: text("c")
        }
    );
    // An empty replacement deletes the old text.
    assert!(Command::parse("REPW 1 >>>abc >>>").is_ok());
}

#[test]
fn tolerates_surrounding_whitespace_and_one_newline() {
    assert_eq!(Command::parse("  EXIT  \n"), Ok(Command::Exit));
    assert_eq!(
        Command::parse("\nDELL 2\r\n"),
        Ok(Command::DeleteLine { line: line(2) })
    );
    assert_eq!(
        Command::parse("DELL   2  "),
        Ok(Command::DeleteLine { line: line(2) })
    );
    assert_eq!(
        Command::parse("REPL 2 >>>  x  \n").unwrap().to_string(),
        "REPL 2 >>>  x  "
    );
    assert_eq!(
        Command::parse("REPL 2>>>x").unwrap().to_string(),
        "REPL 2 >>>x"
    );
    assert_eq!(Command::parse("EXIT\n\n"), Err(ParseError::MultipleLines));
    assert_eq!(
        Command::parse("DELL 1\nDELL 2"),
        Err(ParseError::MultipleLines)
    );
    assert_eq!(
        Command::parse("REPL 1 >>>a\rb"),
        Err(ParseError::MultipleLines)
    );
}

#[test]
fn errors_carry_their_kind() {
    use ParseError as E;
    let k = Keyword::ReplaceLine;
    let cases: [(&str, ParseError); 14] = [
        ("", E::Empty),
        (" \t\n", E::Empty),
        (
            "addl 1 >>>x",
            E::UnknownCommand {
                found: "addl".into(),
            },
        ),
        (
            ">>>x",
            E::UnknownCommand {
                found: ">>>x".into(),
            },
        ),
        ("REPL", E::MissingLineNumber { keyword: k }),
        ("REPL >>>x", E::MissingLineNumber { keyword: k }),
        (
            "REPL x >>>y",
            E::BadLineNumber {
                keyword: k,
                found: "x".into(),
            },
        ),
        (
            "REPL -1 >>>y",
            E::BadLineNumber {
                keyword: k,
                found: "-1".into(),
            },
        ),
        ("REPL 0 >>>y", E::LineNumberZero { keyword: k }),
        (
            "REPL 99999999999 >>>y",
            E::LineNumberTooLarge {
                keyword: k,
                found: "99999999999".into(),
            },
        ),
        ("REPL 2 y", E::MissingText { keyword: k }),
        ("REPW 2 >>>a>>>b", E::MissingNewText),
        ("REPW 2 >>> >>>b", E::EmptyOldText),
        (
            "DELL 2 >>>x",
            E::TrailingText {
                keyword: Keyword::DeleteLine,
                found: ">>>x".into(),
            },
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(Command::parse(input), Err(expected), "{input:?}");
    }
    // `REPW 2 >>> >>>b`: the old text is empty; a space before ` >>>` would be old text.
    assert!(Command::parse("REPW 2 >>>  >>>b").is_ok());
}

#[test]
fn script_skips_blank_lines_and_numbers_lines() {
    let script = "DELL 1\n\n  \nREPL 1 >>>x\r\nBOGUS\n";
    let parsed: Vec<_> = parse_script(script).collect();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0].0, 1);
    assert_eq!(parsed[1].0, 4);
    assert_eq!(parsed[1].1.as_ref().unwrap().to_string(), "REPL 1 >>>x");
    assert_eq!(parsed[2].0, 5);
    assert!(parsed[2].1.is_err());
}

#[test]
fn serde_uses_the_printed_form() {
    let command = Command::parse("REPW 4 >>>i < n >>>i <= n").unwrap();
    let json = serde_json::to_string(&command).unwrap();
    assert_eq!(json, "\"REPW 4 >>>i < n >>>i <= n\"");
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    assert!(serde_json::from_str::<Command>("\"NOPE\"").is_err());
}
