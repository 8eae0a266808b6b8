//! The program under repair, as lines, and applying edit commands to it.

use coe_dsl::{Command, Keyword, LineNumber, Quoted};
use serde::{Deserialize, Serialize};

/// How lines end in the source the program came from; kept so the repaired file looks like the
/// original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LineEnding {
    /// `\n`
    #[default]
    Lf,
    /// `\r\n`
    CrLf,
    /// `\r` (classic Mac OS; Python accepts it)
    Cr,
}

impl LineEnding {
    /// The characters that end a line.
    pub const fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
            LineEnding::Cr => "\r",
        }
    }
}

/// A Python program as a list of lines (without their line breaks).
///
/// Line breaks are `\n`, `\r\n` or `\r`, as in Python. The style of the first one found is kept
/// for the whole program, and so is the presence of a final line break.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Program {
    lines: Vec<String>,
    line_ending: LineEnding,
    final_newline: bool,
}

/// Why a well-formed command cannot be applied. The program is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The command names a line the program does not have.
    #[error("{}", out_of_range_message(*.keyword, *.line, *.lines))]
    LineOutOfRange {
        /// The command's keyword.
        keyword: Keyword,
        /// The line it named.
        line: LineNumber,
        /// How many lines the program has.
        lines: usize,
    },
    /// `REPW` names text that the line does not contain.
    #[error("REPW: line {line} does not contain `{}`", Quoted(.old))]
    TextNotFound {
        /// The line it named.
        line: LineNumber,
        /// The text it searched for.
        old: String,
    },
}

fn out_of_range_message(keyword: Keyword, line: LineNumber, lines: usize) -> String {
    let size = match lines {
        0 => "the program is empty".to_owned(),
        1 => "the program has 1 line".to_owned(),
        n => format!("the program has {n} lines"),
    };
    if keyword == Keyword::AddLine {
        format!(
            "ADDL: line {line} is out of range; {size}, so ADDL takes 1 to {}",
            lines + 1
        )
    } else {
        format!("{keyword}: line {line} does not exist; {size}")
    }
}

impl Program {
    /// Splits `source` into lines. Never fails: any text is a program (perhaps a broken one).
    pub fn parse(source: &str) -> Self {
        let mut lines = Vec::new();
        let mut line_ending = None;
        let mut rest = source;
        let mut final_newline = false;
        while !rest.is_empty() {
            match rest.find(['\n', '\r']) {
                Some(at) => {
                    lines.push(rest[..at].to_owned());
                    let ending = if rest[at..].starts_with("\r\n") {
                        LineEnding::CrLf
                    } else if rest[at..].starts_with('\r') {
                        LineEnding::Cr
                    } else {
                        LineEnding::Lf
                    };
                    line_ending.get_or_insert(ending);
                    rest = &rest[at + ending.as_str().len()..];
                    final_newline = rest.is_empty();
                }
                None => {
                    lines.push(rest.to_owned());
                    rest = "";
                }
            }
        }
        Self {
            lines,
            line_ending: line_ending.unwrap_or_default(),
            final_newline,
        }
    }

    /// The program's lines, without line breaks.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the program has no lines.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The line ending style kept from the source.
    pub fn line_ending(&self) -> LineEnding {
        self.line_ending
    }

    /// The program as source text, in its original line ending style.
    pub fn to_source(&self) -> String {
        let ending = self.line_ending.as_str();
        let mut source = self.lines.join(ending);
        if self.final_newline && !self.lines.is_empty() {
            source.push_str(ending);
        }
        source
    }

    /// The program as Python will run it: lines joined by `\n`, ending with one.
    pub fn to_python(&self) -> String {
        let mut source = self.lines.join("\n");
        source.push('\n');
        source
    }

    /// Applies one command. On error the program is unchanged. `EXIT` changes nothing.
    pub fn apply(&mut self, command: &Command) -> Result<(), EditError> {
        let keyword = command.keyword();
        let lines = self.lines.len();
        let out_of_range = |line: LineNumber| EditError::LineOutOfRange {
            keyword,
            line,
            lines,
        };
        match command {
            Command::AddLine { line, text } => {
                if line.index() > self.lines.len() {
                    return Err(out_of_range(*line));
                }
                self.lines.insert(line.index(), text.to_string());
            }
            Command::ReplaceLine { line, text } => {
                let target = self
                    .lines
                    .get_mut(line.index())
                    .ok_or_else(|| out_of_range(*line))?;
                text.as_str().clone_into(target);
            }
            Command::ReplaceWord { line, old, new } => {
                let target = self
                    .lines
                    .get_mut(line.index())
                    .ok_or_else(|| out_of_range(*line))?;
                if !target.contains(old.as_str()) {
                    return Err(EditError::TextNotFound {
                        line: *line,
                        old: old.to_string(),
                    });
                }
                *target = target.replace(old.as_str(), new);
            }
            Command::DeleteLine { line } => {
                if line.index() >= self.lines.len() {
                    return Err(out_of_range(*line));
                }
                self.lines.remove(line.index());
            }
            Command::Exit => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(source: &str, command: &str) -> Result<String, EditError> {
        let mut program = Program::parse(source);
        program.apply(&Command::parse(command).unwrap())?;
        Ok(program.to_source())
    }

    #[test]
    fn keeps_line_endings_and_final_newline() {
        for source in [
            "a\nb\n",
            "a\nb",
            "a\r\nb\r\n",
            "a\r\nb",
            "a\rb\r",
            "",
            "\n",
            "a\n\n",
        ] {
            assert_eq!(Program::parse(source).to_source(), source, "{source:?}");
        }
        let mixed = Program::parse("a\r\nb\nc\rd");
        assert_eq!(mixed.lines(), ["a", "b", "c", "d"]);
        assert_eq!(mixed.line_ending(), LineEnding::CrLf);
        assert_eq!(mixed.to_source(), "a\r\nb\r\nc\r\nd");
        assert_eq!(mixed.to_python(), "a\nb\nc\nd\n");
    }

    #[test]
    fn applies_each_command() {
        let src = "def f(a, b):\n    return a - b\n";
        assert_eq!(
            apply(src, "ADDL 1 >>>import math").unwrap(),
            "import math\ndef f(a, b):\n    return a - b\n"
        );
        assert_eq!(
            apply(src, "ADDL 3 >>>x = 1").unwrap(),
            "def f(a, b):\n    return a - b\nx = 1\n"
        );
        assert_eq!(
            apply(src, "REPL 2 >>>    return a + b").unwrap(),
            "def f(a, b):\n    return a + b\n"
        );
        assert_eq!(
            apply("x = a - b - c\n", "REPW 1 >>>- >>>+").unwrap(),
            "x = a + b + c\n"
        );
        assert_eq!(apply(src, "DELL 1").unwrap(), "    return a - b\n");
        assert_eq!(apply(src, "EXIT").unwrap(), src);
        assert_eq!(apply("x\n", "ADDL 1 >>>y").unwrap(), "y\nx\n");
        assert_eq!(apply("", "ADDL 1 >>>y").unwrap(), "y");
    }

    #[test]
    fn errors_leave_the_program_unchanged() {
        let src = "a = 1\nb = 2\n";
        for command in [
            "ADDL 4 >>>x",
            "REPL 3 >>>x",
            "REPW 3 >>>a >>>b",
            "DELL 3",
            "REPW 1 >>>z >>>y",
        ] {
            let mut program = Program::parse(src);
            let before = program.clone();
            assert!(program.apply(&Command::parse(command).unwrap()).is_err());
            assert_eq!(program, before, "{command}");
        }
    }
}
