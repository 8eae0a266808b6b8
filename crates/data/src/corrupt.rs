//! Seeded corruptions: from a reference solution, a broken program made by 1-5 random edits,
//! each expressible as one edit command, together with the command that undoes it.

use coe_dsl::{Command, LineNumber, LineText, SearchText};
use coe_tool_state::Program;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// What an edit did to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    /// A line was deleted.
    DeleteLine,
    /// A line was inserted (a duplicate, or a line of another solution).
    InsertLine,
    /// A line was replaced by a line of another solution.
    ReplaceLine,
    /// An operator was swapped (`+`/`-`, `<`/`<=`, `==`/`!=`, `and`/`or`, ...).
    Operator,
    /// An integer literal was moved by one.
    OffByOne,
    /// An identifier was swapped for another identifier of the program.
    Identifier,
    /// A builtin was swapped for a similar one (`min`/`max`, `sum`/`len`, ...).
    Builtin,
    /// A line's indentation was changed.
    Indentation,
}

impl EditKind {
    /// How often each kind is drawn, relative to the others. Token swaps dominate, so most
    /// broken programs still run and fail a test (the paper: 81.2% failed tests); line and
    /// indentation edits, which often break the syntax, are rarer.
    pub const fn weight(self) -> u32 {
        match self {
            EditKind::Operator => 4,
            EditKind::OffByOne | EditKind::Identifier => 3,
            EditKind::Builtin
            | EditKind::DeleteLine
            | EditKind::InsertLine
            | EditKind::ReplaceLine => 2,
            EditKind::Indentation => 1,
        }
    }

    /// Every kind.
    pub const ALL: [EditKind; 8] = [
        EditKind::DeleteLine,
        EditKind::InsertLine,
        EditKind::ReplaceLine,
        EditKind::Operator,
        EditKind::OffByOne,
        EditKind::Identifier,
        EditKind::Builtin,
        EditKind::Indentation,
    ];
}

/// One corrupting edit and its inverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// The kind of change.
    pub kind: EditKind,
    /// The command that made the change.
    pub forward: Command,
    /// The command that undoes it (applied right after `forward`).
    pub inverse: Command,
}

/// A broken program and the edits that broke it, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corruption {
    /// The broken program.
    pub broken: String,
    /// The edits, in the order they were applied.
    pub edits: Vec<Edit>,
}

impl Corruption {
    /// The repair: the inverses in reverse order. Applied to `broken`, they give the reference.
    pub fn repair(&self) -> Vec<Command> {
        self.edits.iter().rev().map(|e| e.inverse.clone()).collect()
    }
}

/// Lines of other solutions, for inserted and replacing lines.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    lines: Vec<String>,
}

impl Corpus {
    /// Collects the distinct stripped code lines of `programs`.
    pub fn from_programs<'a>(programs: impl IntoIterator<Item = &'a str>) -> Self {
        let mut lines: Vec<String> = programs
            .into_iter()
            .flat_map(str::lines)
            .map(str::trim)
            // Block openers would need a body: leave them out of inserted and replacing lines.
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.ends_with(':'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines.dedup();
        Self { lines }
    }
}

const OPERATOR_SWAPS: &[(&str, &str)] = &[
    ("+", "-"),
    ("-", "+"),
    ("<", "<="),
    ("<=", "<"),
    (">", ">="),
    (">=", ">"),
    ("==", "!="),
    ("!=", "=="),
    ("*", "+"),
    ("//", "/"),
    ("and", "or"),
    ("or", "and"),
    ("True", "False"),
    ("False", "True"),
    ("<", ">"),
    (">", "<"),
];

const BUILTIN_SWAPS: &[(&str, &str)] = &[
    ("min", "max"),
    ("max", "min"),
    ("sum", "len"),
    ("len", "sum"),
    ("sorted", "reversed"),
    ("any", "all"),
    ("all", "any"),
    ("int", "float"),
    ("list", "set"),
    ("set", "list"),
    ("abs", "int"),
    ("range", "enumerate"),
];

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "self",
];

/// Makes a corruption of `reference` with `edits` edits (fewer if the program offers too few
/// places). `None` when no edit could be made or the edits cancel out.
pub fn corrupt(
    reference: &str,
    corpus: &Corpus,
    edits: usize,
    rng: &mut impl Rng,
) -> Option<Corruption> {
    let mut program = Program::parse(reference);
    let identifiers = identifiers_of(reference);
    let mut made = Vec::with_capacity(edits);
    for _ in 0..edits {
        for _attempt in 0..30 {
            let kind = *EditKind::ALL.choose_weighted(rng, |k| k.weight()).ok()?;
            let Some((forward, inverse)) = propose(kind, &program, corpus, &identifiers, rng)
            else {
                continue;
            };
            let mut changed = program.clone();
            if changed.apply(&forward).is_err() || changed == program {
                continue;
            }
            // Keep only edits whose inverse restores the program exactly.
            let mut restored = changed.clone();
            if restored.apply(&inverse).is_err() || restored.lines() != program.lines() {
                continue;
            }
            program = changed;
            made.push(Edit {
                kind,
                forward,
                inverse,
            });
            break;
        }
    }
    let broken = program.to_python();
    (!made.is_empty() && broken != Program::parse(reference).to_python()).then_some(Corruption {
        broken,
        edits: made,
    })
}

fn line_no(index: usize) -> Option<LineNumber> {
    LineNumber::new(u32::try_from(index + 1).ok()?)
}

fn text(s: &str) -> Option<LineText> {
    LineText::new(s).ok()
}

/// A forward command and its inverse, for an edit of `kind` somewhere in `program`.
fn propose(
    kind: EditKind,
    program: &Program,
    corpus: &Corpus,
    identifiers: &[String],
    rng: &mut impl Rng,
) -> Option<(Command, Command)> {
    let lines = program.lines();
    let code_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].trim().is_empty())
        .collect();
    let index = *code_lines.choose(rng)?;
    let original = &lines[index];
    let line = line_no(index)?;
    let indentation = indent_of(original);
    let replace = |new: String| -> Option<(Command, Command)> {
        Some((
            Command::ReplaceLine {
                line,
                text: text(&new)?,
            },
            Command::ReplaceLine {
                line,
                text: text(original)?,
            },
        ))
    };
    match kind {
        EditKind::DeleteLine => {
            // Deleting a block opener, or the only line of a block, breaks the syntax.
            let opens_block = original.trim_end().ends_with(':');
            let only_child = index > 0
                && lines[index - 1].trim_end().ends_with(':')
                && lines
                    .get(index + 1)
                    .is_none_or(|next| indent_of(next).len() <= indentation.len());
            if code_lines.len() < 2 || opens_block || only_child {
                return None;
            }
            Some((
                Command::DeleteLine { line },
                Command::AddLine {
                    line,
                    text: text(original)?,
                },
            ))
        }
        EditKind::InsertLine => {
            let at = rng.random_range(0..=lines.len());
            // Indent like the line before, or like the line after when the one before opens
            // a block.
            let before = at.checked_sub(1).and_then(|i| lines.get(i));
            let neighbour = match before {
                Some(b) if !b.trim_end().ends_with(':') => b,
                _ => lines.get(at).or(before)?,
            };
            let indent = indent_of(neighbour);
            let body = if rng.random_bool(0.5) {
                let duplicate = lines.get(*code_lines.choose(rng)?)?.trim();
                if duplicate.ends_with(':') {
                    return None;
                }
                duplicate.to_owned()
            } else {
                corpus.lines.choose(rng)?.clone()
            };
            let at = line_no(at)?;
            Some((
                Command::AddLine {
                    line: at,
                    text: text(&format!("{indent}{body}"))?,
                },
                Command::DeleteLine { line: at },
            ))
        }
        EditKind::ReplaceLine => {
            if original.trim_end().ends_with(':') {
                return None;
            }
            replace(format!("{indentation}{}", corpus.lines.choose(rng)?))
        }
        EditKind::Indentation => {
            let new = if indentation.len() >= 4 && rng.random_bool(0.5) {
                original[4..].to_owned()
            } else {
                format!("    {original}")
            };
            replace(new)
        }
        EditKind::Identifier if is_declaration(original) => None,
        EditKind::Operator | EditKind::OffByOne | EditKind::Identifier | EditKind::Builtin => {
            token_edit(kind, original, line, identifiers, rng)
        }
    }
}

/// Swaps one token of the line; uses `REPW` when it undoes exactly, `REPL` otherwise.
fn token_edit(
    kind: EditKind,
    original: &str,
    line: LineNumber,
    identifiers: &[String],
    rng: &mut impl Rng,
) -> Option<(Command, Command)> {
    let tokens = tokenize(original);
    let mut candidates: Vec<(usize, usize, String)> = Vec::new();
    for token in &tokens {
        let word = &original[token.start..token.end];
        let replacements: Vec<String> = match (kind, token.class) {
            (EditKind::Operator, Class::Operator | Class::Name) => OPERATOR_SWAPS
                .iter()
                .filter(|(from, _)| *from == word)
                .map(|(_, to)| (*to).to_owned())
                .collect(),
            (EditKind::Builtin, Class::Name) => BUILTIN_SWAPS
                .iter()
                .filter(|(from, _)| *from == word)
                .map(|(_, to)| (*to).to_owned())
                .collect(),
            (EditKind::OffByOne, Class::Number) => word
                .parse::<u64>()
                .map(|n| {
                    let mut options = vec![(n + 1).to_string()];
                    if n > 0 {
                        options.push((n - 1).to_string());
                    }
                    options
                })
                .unwrap_or_default(),
            (EditKind::Identifier, Class::Name) if !KEYWORDS.contains(&word) => identifiers
                .iter()
                .filter(|other| other.as_str() != word)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        candidates.extend(
            replacements
                .into_iter()
                .map(|r| (token.start, token.end, r)),
        );
    }
    let (start, end, replacement) = candidates.choose(rng)?.clone();
    let old = &original[start..end];
    let corrupted = format!("{}{replacement}{}", &original[..start], &original[end..]);
    let exact_repw =
        original.matches(old).count() == 1 && corrupted.matches(replacement.as_str()).count() == 1;
    if exact_repw
        && let (Ok(old_text), Ok(new_text)) =
            (SearchText::new(old), SearchText::new(replacement.as_str()))
    {
        return Some((
            Command::ReplaceWord {
                line,
                old: old_text.clone(),
                new: text(new_text.as_str())?,
            },
            Command::ReplaceWord {
                line,
                old: new_text,
                new: text(old_text.as_str())?,
            },
        ));
    }
    Some((
        Command::ReplaceLine {
            line,
            text: text(&corrupted)?,
        },
        Command::ReplaceLine {
            line,
            text: text(original)?,
        },
    ))
}

fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// `def`, `class` and import lines: swapping a name there mostly makes a syntax error
/// (duplicate parameters) or an unrelated program.
fn is_declaration(line: &str) -> bool {
    let code = line.trim_start();
    ["def ", "class ", "import ", "from "]
        .iter()
        .any(|p| code.starts_with(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Name,
    Number,
    Operator,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    class: Class,
}

/// Names, integer literals and operators of one line, outside strings and comments.
fn tokenize(line: &str) -> Vec<Token> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'#' {
            break;
        }
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push(Token {
                start,
                end: i,
                class: Class::Name,
            });
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            let literal = &line[start..i];
            if literal.bytes().all(|b| b.is_ascii_digit()) {
                tokens.push(Token {
                    start,
                    end: i,
                    class: Class::Number,
                });
            }
        } else if b"+-*/<>=!%".contains(&c) {
            while i < bytes.len() && b"+-*/<>=!%".contains(&bytes[i]) && i - start < 2 {
                i += 1;
            }
            tokens.push(Token {
                start,
                end: i,
                class: Class::Operator,
            });
        } else {
            i += if c.is_ascii() {
                1
            } else {
                line[i..].chars().next().map_or(1, char::len_utf8)
            };
        }
    }
    tokens
}

/// The distinct non-keyword names of a program.
fn identifiers_of(source: &str) -> Vec<String> {
    let mut names: Vec<String> = source
        .lines()
        .flat_map(|line| {
            tokenize(line)
                .into_iter()
                .filter(|t| t.class == Class::Name)
                .map(|t| line[t.start..t.end].to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|name| !KEYWORDS.contains(&name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const REFERENCE: &str = "def max_of_three(a, b, c):\n    largest = a\n    if b > largest:\n        largest = b\n    if c > largest:\n        largest = c\n    return largest\n";

    #[test]
    fn tokens_skip_strings_and_comments() {
        let line = "x = f('a + b', 10) + y1 # - z";
        let words: Vec<&str> = tokenize(line)
            .iter()
            .map(|t| &line[t.start..t.end])
            .collect();
        assert_eq!(words, ["x", "=", "f", "10", "+", "y1"]);
    }

    #[test]
    fn the_repair_undoes_every_corruption() {
        let corpus = Corpus::from_programs(["total = 0", "for x in xs:", "return total"]);
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let edits = 1 + (seed as usize % 5);
            let Some(corruption) = corrupt(REFERENCE, &corpus, edits, &mut rng) else {
                continue;
            };
            assert_ne!(corruption.broken, REFERENCE);
            let mut program = Program::parse(&corruption.broken);
            for command in corruption.repair() {
                program.apply(&command).unwrap();
            }
            assert_eq!(
                program.to_python(),
                REFERENCE,
                "seed {seed}: {corruption:#?}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_corruption() {
        let corpus = Corpus::default();
        let make = |seed| corrupt(REFERENCE, &corpus, 3, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }
}
