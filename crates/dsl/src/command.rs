//! The command type and its canonical printed form.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::{LineText, ParseError, REPW_SEPARATOR, SearchText, TEXT_MARKER};

/// A 1-based line number, as shown in the observation (`L 1 ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LineNumber(NonZeroU32);

impl LineNumber {
    /// Line `n`, or `None` for 0.
    pub const fn new(n: u32) -> Option<Self> {
        match NonZeroU32::new(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The number as written (1-based).
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The 0-based index of the line.
    pub const fn index(self) -> usize {
        // u32 always fits in usize on the 32- and 64-bit targets coe supports.
        (self.0.get() - 1) as usize
    }
}

impl fmt::Display for LineNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The keyword that starts a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Keyword {
    /// `ADDL`: insert a line.
    #[serde(rename = "ADDL")]
    AddLine,
    /// `REPL`: replace a line.
    #[serde(rename = "REPL")]
    ReplaceLine,
    /// `REPW`: replace text within a line.
    #[serde(rename = "REPW")]
    ReplaceWord,
    /// `DELL`: delete a line.
    #[serde(rename = "DELL")]
    DeleteLine,
    /// `EXIT`: end the episode.
    #[serde(rename = "EXIT")]
    Exit,
}

impl Keyword {
    /// Every keyword, in the order the language lists them.
    pub const ALL: [Keyword; 5] = [
        Keyword::AddLine,
        Keyword::ReplaceLine,
        Keyword::ReplaceWord,
        Keyword::DeleteLine,
        Keyword::Exit,
    ];

    /// The keyword as written in a command.
    pub const fn as_str(self) -> &'static str {
        match self {
            Keyword::AddLine => "ADDL",
            Keyword::ReplaceLine => "REPL",
            Keyword::ReplaceWord => "REPW",
            Keyword::DeleteLine => "DELL",
            Keyword::Exit => "EXIT",
        }
    }

    /// The keyword written as `word`, if any (case-sensitive).
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == word)
    }

    /// A short correct example of the command, used in error messages.
    pub const fn example(self) -> &'static str {
        match self {
            Keyword::AddLine => "ADDL 3 >>>    x = 0",
            Keyword::ReplaceLine => "REPL 3 >>>    return x",
            Keyword::ReplaceWord => "REPW 3 >>>a - b >>>a + b",
            Keyword::DeleteLine => "DELL 3",
            Keyword::Exit => "EXIT",
        }
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One command of the edit language.
///
/// Serialised (serde) as its printed form, e.g. `"DELL 3"`, so traces stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Command {
    /// `ADDL n >>>text`: insert `text` so that it becomes line `n` (1 <= n <= lines + 1).
    AddLine {
        /// The line number the new line will have.
        line: LineNumber,
        /// The new line, verbatim.
        text: LineText,
    },
    /// `REPL n >>>text`: replace line `n` with `text`.
    ReplaceLine {
        /// The line to replace.
        line: LineNumber,
        /// The new content, verbatim.
        text: LineText,
    },
    /// `REPW n >>>old >>>new`: in line `n`, replace every occurrence of `old` by `new`.
    ReplaceWord {
        /// The line to edit.
        line: LineNumber,
        /// The text to find (must occur in the line).
        old: SearchText,
        /// The replacement.
        new: LineText,
    },
    /// `DELL n`: delete line `n`.
    DeleteLine {
        /// The line to delete.
        line: LineNumber,
    },
    /// `EXIT`: end the episode.
    Exit,
}

impl Command {
    /// Parses one command from a model's raw output (see [`ParseError`] for what is refused).
    /// Leading whitespace and one trailing newline are tolerated; nothing else is.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        crate::parse::parse_command(input)
    }

    /// The command's keyword.
    pub const fn keyword(&self) -> Keyword {
        match self {
            Command::AddLine { .. } => Keyword::AddLine,
            Command::ReplaceLine { .. } => Keyword::ReplaceLine,
            Command::ReplaceWord { .. } => Keyword::ReplaceWord,
            Command::DeleteLine { .. } => Keyword::DeleteLine,
            Command::Exit => Keyword::Exit,
        }
    }

    /// The line the command names, `None` for `EXIT`.
    pub const fn line(&self) -> Option<LineNumber> {
        match self {
            Command::AddLine { line, .. }
            | Command::ReplaceLine { line, .. }
            | Command::ReplaceWord { line, .. }
            | Command::DeleteLine { line } => Some(*line),
            Command::Exit => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keyword = self.keyword();
        match self {
            Command::AddLine { line, text } | Command::ReplaceLine { line, text } => {
                write!(f, "{keyword} {line} {TEXT_MARKER}{text}")
            }
            Command::ReplaceWord { line, old, new } => {
                write!(
                    f,
                    "{keyword} {line} {TEXT_MARKER}{old}{REPW_SEPARATOR}{new}"
                )
            }
            Command::DeleteLine { line } => write!(f, "{keyword} {line}"),
            Command::Exit => f.write_str(keyword.as_str()),
        }
    }
}

impl TryFrom<String> for Command {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Command::parse(&text)
    }
}

impl From<Command> for String {
    fn from(command: Command) -> String {
        command.to_string()
    }
}

impl std::str::FromStr for Command {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Command::parse(text)
    }
}
