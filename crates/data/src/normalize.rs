//! Cleaning reference programs so they render and edit cleanly: `\n` line endings, no trailing
//! whitespace, and indentation rewritten as 4 spaces per block level (MBPP mixes tabs and
//! spaces).

/// Normalises `source`. Returns `None` when its layout is one this simple rewriter does not
/// understand (an inconsistent dedent, say); callers then keep the source as it was.
///
/// Lines inside brackets or after a backslash keep their own indentation relative to nothing
/// (Python ignores it); lines inside triple-quoted strings are left exactly as they are.
pub fn normalize_source(source: &str) -> Option<String> {
    let program = coe_tool_state::Program::parse(source);
    let mut scanner = Scanner::default();
    let mut widths: Vec<usize> = vec![0];
    let mut out = String::with_capacity(source.len());
    for line in program.lines() {
        let in_string = scanner.in_triple_string();
        let continued = scanner.continues_line();
        let stripped = line.trim();
        if in_string {
            out.push_str(line);
        } else if stripped.is_empty() {
            // Blank lines carry no indentation.
        } else if continued {
            out.push_str(&"    ".repeat(widths.len()));
            out.push_str(stripped);
        } else {
            let width = indent_width(line);
            if width > *widths.last()? {
                widths.push(width);
            } else {
                while width < *widths.last()? {
                    widths.pop();
                }
                if width != *widths.last()? {
                    return None;
                }
            }
            out.push_str(&"    ".repeat(widths.len() - 1));
            out.push_str(stripped);
        }
        out.push('\n');
        scanner.scan_line(line);
    }
    if scanner.in_triple_string() {
        return None;
    }
    Some(out)
}

/// Indentation width with tabs to the next multiple of 8, as Python's tokenizer counts it.
fn indent_width(line: &str) -> usize {
    let mut width = 0;
    for c in line.chars() {
        match c {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            '\x0c' => width = 0,
            _ => break,
        }
    }
    width
}

/// Tracks brackets, strings and backslash continuations across lines, roughly as Python's
/// tokenizer does (enough to know whether a line starts a new logical line).
#[derive(Debug, Default)]
struct Scanner {
    depth: usize,
    triple: Option<&'static str>,
    backslash: bool,
}

impl Scanner {
    fn in_triple_string(&self) -> bool {
        self.triple.is_some()
    }

    fn continues_line(&self) -> bool {
        self.depth > 0 || self.backslash
    }

    fn scan_line(&mut self, line: &str) {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        self.backslash = false;
        while i < chars.len() {
            if let Some(close) = self.triple {
                let quote = close.chars().next().unwrap_or('"');
                if chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == quote
                    && chars.get(i + 1) == Some(&quote)
                    && chars.get(i + 2) == Some(&quote)
                {
                    self.triple = None;
                    i += 3;
                    continue;
                }
                i += 1;
                continue;
            }
            match chars[i] {
                '#' => break,
                '(' | '[' | '{' => self.depth += 1,
                ')' | ']' | '}' => self.depth = self.depth.saturating_sub(1),
                '\\' if i + 1 == chars.len() => self.backslash = true,
                quote @ ('"' | '\'') => {
                    if chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote) {
                        self.triple = Some(if quote == '"' { "\"\"\"" } else { "'''" });
                        i += 3;
                        continue;
                    }
                    // A one-line string: skip to its closing quote.
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_and_crlf_become_four_spaces() {
        let mbpp = "R = 3\r\ndef f(cost): \r\n\ttc = [0] \r\n\tfor i in range(1): \r\n\t\ttc[i] = 1\r\n\treturn tc";
        assert_eq!(
            normalize_source(mbpp).unwrap(),
            "R = 3\ndef f(cost):\n    tc = [0]\n    for i in range(1):\n        tc[i] = 1\n    return tc\n"
        );
    }

    #[test]
    fn two_space_blocks_and_brackets() {
        let source = "def f(x):\n  y = [1,\n         2]\n  if x:\n    return y\n  return x\n";
        assert_eq!(
            normalize_source(source).unwrap(),
            "def f(x):\n    y = [1,\n        2]\n    if x:\n        return y\n    return x\n"
        );
    }

    #[test]
    fn docstrings_are_untouched() {
        let source = "def f():\n\t\"\"\"Doc\n\t  keep   \n\t\"\"\"\n\treturn 1\n";
        assert_eq!(
            normalize_source(source).unwrap(),
            "def f():\n    \"\"\"Doc\n\t  keep   \n\t\"\"\"\n    return 1\n"
        );
    }

    #[test]
    fn inconsistent_dedent_is_refused() {
        assert_eq!(normalize_source("if x:\n        a\n    b\n"), None);
    }
}
