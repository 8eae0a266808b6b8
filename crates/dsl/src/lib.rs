//! The Chain-of-Edits edit language.
//!
//! A model repairs a program by emitting one command per turn:
//!
//! | command | meaning |
//! |---|---|
//! | `ADDL <n> >>><text>` | insert `<text>` as a new line that becomes line `n` |
//! | `REPL <n> >>><text>` | replace line `n` with `<text>` |
//! | `REPW <n> >>><old> >>><new>` | in line `n`, replace every occurrence of `<old>` by `<new>` |
//! | `DELL <n>` | delete line `n` |
//! | `EXIT` | end the episode |
//!
//! [`Command::parse`] reads a model's raw output and [`Command`]'s `Display` prints the canonical
//! form, so that `Command::parse(&c.to_string()) == Ok(c)` for every command. Text after `>>>` is
//! kept verbatim: indentation is meaning in Python.
//!
//! ```
//! use coe_dsl::{Command, LineNumber};
//!
//! let command = Command::parse("REPL 2 >>>    return a + b\n").unwrap();
//! assert_eq!(command.line(), LineNumber::new(2));
//! assert_eq!(command.to_string(), "REPL 2 >>>    return a + b");
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod command;
mod error;
mod parse;
mod text;

pub use command::{Command, Keyword, LineNumber};
pub use error::{ParseError, ParseErrorKind, Quoted};
pub use parse::parse_script;
pub use text::{LineText, SearchText, TextError};

/// The marker that opens the text of `ADDL`, `REPL` and `REPW`.
pub const TEXT_MARKER: &str = ">>>";

/// The separator between the old and the new text of `REPW`: a space, then `>>>`.
pub const REPW_SEPARATOR: &str = " >>>";
