//! The parser: a model's raw output to a [`Command`].

use crate::{
    Command, Keyword, LineNumber, LineText, ParseError, REPW_SEPARATOR, SearchText, TEXT_MARKER,
};

/// Parses one command. See [`Command::parse`].
pub(crate) fn parse_command(input: &str) -> Result<Command, ParseError> {
    let input = strip_one_newline(input).trim_start();
    if input.contains(['\n', '\r']) {
        return Err(ParseError::MultipleLines);
    }
    let keyword_end = input
        .find(|c: char| c.is_whitespace() || c == '>')
        .unwrap_or(input.len());
    let (word, rest) = input.split_at(keyword_end);
    if word.is_empty() {
        return Err(if rest.trim().is_empty() {
            ParseError::Empty
        } else {
            ParseError::UnknownCommand {
                found: first_word(rest).to_owned(),
            }
        });
    }
    let keyword = Keyword::from_word(word).ok_or_else(|| ParseError::UnknownCommand {
        found: word.to_owned(),
    })?;

    if keyword == Keyword::Exit {
        return match rest.trim() {
            "" => Ok(Command::Exit),
            extra => Err(ParseError::TrailingText {
                keyword,
                found: extra.to_owned(),
            }),
        };
    }

    let (line, rest) = parse_line_number(keyword, rest)?;
    if keyword == Keyword::DeleteLine {
        return match rest.trim() {
            "" => Ok(Command::DeleteLine { line }),
            extra => Err(ParseError::TrailingText {
                keyword,
                found: extra.to_owned(),
            }),
        };
    }

    let text = rest
        .trim_start()
        .strip_prefix(TEXT_MARKER)
        .ok_or(ParseError::MissingText { keyword })?;
    // The input holds no line break (checked above), so the text is a valid LineText.
    let line_text = |s: &str| LineText::new(s).map_err(|_| ParseError::MultipleLines);
    if keyword == Keyword::ReplaceWord {
        let (old, new) = text
            .split_once(REPW_SEPARATOR)
            .ok_or(ParseError::MissingNewText)?;
        // Split at the first separator, so `old` cannot contain one; only emptiness remains.
        let old = SearchText::new(old).map_err(|_| ParseError::EmptyOldText)?;
        return Ok(Command::ReplaceWord {
            line,
            old,
            new: line_text(new)?,
        });
    }
    let text = line_text(text)?;
    Ok(if keyword == Keyword::AddLine {
        Command::AddLine { line, text }
    } else {
        Command::ReplaceLine { line, text }
    })
}

/// Reads the line number after the keyword; returns it and the rest of the input.
fn parse_line_number(keyword: Keyword, rest: &str) -> Result<(LineNumber, &str), ParseError> {
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '>')
        .unwrap_or(rest.len());
    let (digits, rest) = rest.split_at(end);
    if digits.is_empty() {
        return Err(ParseError::MissingLineNumber { keyword });
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadLineNumber {
            keyword,
            found: digits.to_owned(),
        });
    }
    let too_large = || ParseError::LineNumberTooLarge {
        keyword,
        found: digits.to_owned(),
    };
    let value: u32 = digits.parse().map_err(|_| too_large())?;
    let line = LineNumber::new(value).ok_or(ParseError::LineNumberZero { keyword })?;
    Ok((line, rest))
}

/// Removes one trailing `\n`, `\r\n` or `\r`.
fn strip_one_newline(input: &str) -> &str {
    input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .or_else(|| input.strip_suffix('\r'))
        .unwrap_or(input)
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

/// Parses a script of commands, one per line, as `coe apply` reads it.
///
/// Blank lines are skipped. Each item is the 1-based line number in the script and the parse
/// result, so a caller can report `line N: message`.
pub fn parse_script(script: &str) -> impl Iterator<Item = (usize, Result<Command, ParseError>)> {
    script
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| (index + 1, Command::parse(line)))
}
