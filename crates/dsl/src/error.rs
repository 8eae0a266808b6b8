//! Parse errors, each with a one-line message written for a model to read.

use std::fmt;

use crate::Keyword;

/// Longest piece of the model's output quoted back in an error message.
const QUOTE_LIMIT: usize = 24;

/// Why a model's output is not a command. `Display` gives the one-line message that becomes the
/// turn's feedback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty command; write one command such as `{}`", Keyword::ReplaceLine.example())]
    Empty,
    /// A line break inside the output: one turn holds exactly one command.
    #[error("more than one line; write exactly one command per turn")]
    MultipleLines,
    /// The first word is not a keyword.
    #[error("unknown command `{}`; use ADDL, REPL, REPW, DELL or EXIT", Quoted(.found))]
    UnknownCommand {
        /// The first word of the output.
        found: String,
    },
    /// The keyword is not followed by a line number.
    #[error("{keyword} needs a line number, as in `{}`", .keyword.example())]
    MissingLineNumber {
        /// The command's keyword.
        keyword: Keyword,
    },
    /// Something other than digits where the line number belongs.
    #[error("{keyword}: `{}` is not a line number", Quoted(.found))]
    BadLineNumber {
        /// The command's keyword.
        keyword: Keyword,
        /// What stood where the number belongs.
        found: String,
    },
    /// Line 0: line numbers start at 1.
    #[error("{keyword}: line numbers start at 1")]
    LineNumberZero {
        /// The command's keyword.
        keyword: Keyword,
    },
    /// A line number beyond any program.
    #[error("{keyword}: line number `{}` is too large", Quoted(.found))]
    LineNumberTooLarge {
        /// The command's keyword.
        keyword: Keyword,
        /// The digits written.
        found: String,
    },
    /// `ADDL`, `REPL` or `REPW` without `>>>` after the line number.
    #[error("{keyword} needs `>>>` after the line number, as in `{}`", .keyword.example())]
    MissingText {
        /// The command's keyword.
        keyword: Keyword,
    },
    /// `REPW` without ` >>>` between the old and the new text.
    #[error("REPW needs ` >>>` (a space, then >>>) between the old and the new text, as in `{}`", Keyword::ReplaceWord.example())]
    MissingNewText,
    /// `REPW` with nothing to search for.
    #[error("REPW needs the text to replace between the two `>>>`")]
    EmptyOldText,
    /// Text after a complete `DELL n` or `EXIT`.
    #[error("{keyword} takes nothing after {}; remove `{}`", if *.keyword == Keyword::Exit { "it" } else { "the line number" }, Quoted(.found))]
    TrailingText {
        /// The command's keyword.
        keyword: Keyword,
        /// The extra text.
        found: String,
    },
}

/// The kind of a [`ParseError`] without its data, for counting malformed commands by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // each kind is its ParseError variant
pub enum ParseErrorKind {
    Empty,
    MultipleLines,
    UnknownCommand,
    MissingLineNumber,
    BadLineNumber,
    LineNumberZero,
    LineNumberTooLarge,
    MissingText,
    MissingNewText,
    EmptyOldText,
    TrailingText,
}

impl ParseErrorKind {
    /// A stable snake_case name, for metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "empty",
            ParseErrorKind::MultipleLines => "multiple_lines",
            ParseErrorKind::UnknownCommand => "unknown_command",
            ParseErrorKind::MissingLineNumber => "missing_line_number",
            ParseErrorKind::BadLineNumber => "bad_line_number",
            ParseErrorKind::LineNumberZero => "line_number_zero",
            ParseErrorKind::LineNumberTooLarge => "line_number_too_large",
            ParseErrorKind::MissingText => "missing_text",
            ParseErrorKind::MissingNewText => "missing_new_text",
            ParseErrorKind::EmptyOldText => "empty_old_text",
            ParseErrorKind::TrailingText => "trailing_text",
        }
    }
}

impl ParseError {
    /// The error's kind.
    pub const fn kind(&self) -> ParseErrorKind {
        match self {
            ParseError::Empty => ParseErrorKind::Empty,
            ParseError::MultipleLines => ParseErrorKind::MultipleLines,
            ParseError::UnknownCommand { .. } => ParseErrorKind::UnknownCommand,
            ParseError::MissingLineNumber { .. } => ParseErrorKind::MissingLineNumber,
            ParseError::BadLineNumber { .. } => ParseErrorKind::BadLineNumber,
            ParseError::LineNumberZero { .. } => ParseErrorKind::LineNumberZero,
            ParseError::LineNumberTooLarge { .. } => ParseErrorKind::LineNumberTooLarge,
            ParseError::MissingText { .. } => ParseErrorKind::MissingText,
            ParseError::MissingNewText => ParseErrorKind::MissingNewText,
            ParseError::EmptyOldText => ParseErrorKind::EmptyOldText,
            ParseError::TrailingText { .. } => ParseErrorKind::TrailingText,
        }
    }
}

/// Quotes a piece of the model's output in a message, cut after a few characters (with `...`)
/// so the message stays one short line.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_LIMIT) {
            Some((cut, _)) => write!(f, "{}...", &self.0[..cut]),
            None => f.write_str(self.0),
        }
    }
}
