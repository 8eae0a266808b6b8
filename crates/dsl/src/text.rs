//! Validated pieces of text carried by commands.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::REPW_SEPARATOR;

/// Why a string cannot be used as command text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The text contains `\n` or `\r`: a command edits exactly one line.
    #[error("the text contains a line break; one command edits one line")]
    LineBreak,
    /// The old text of `REPW` is empty.
    #[error("the text to replace is empty")]
    Empty,
    /// The old text of `REPW` contains ` >>>`, which would make the command ambiguous.
    #[error("the text to replace contains ` >>>`")]
    ContainsSeparator,
}

/// The text of one program line: any characters except `\n` and `\r`, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LineText(String);

impl LineText {
    /// Checks that `text` holds no line break.
    pub fn new(text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        if text.contains(['\n', '\r']) {
            return Err(TextError::LineBreak);
        }
        Ok(Self(text))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Gives the owned string back.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The text `REPW` searches for: a non-empty [`LineText`] without ` >>>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SearchText(LineText);

impl SearchText {
    /// Checks that `text` is non-empty, on one line, and free of the ` >>>` separator.
    pub fn new(text: impl Into<String>) -> Result<Self, TextError> {
        let text = LineText::new(text)?;
        if text.is_empty() {
            return Err(TextError::Empty);
        }
        if text.contains(REPW_SEPARATOR) {
            return Err(TextError::ContainsSeparator);
        }
        Ok(Self(text))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

macro_rules! string_like {
    ($ty:ty) => {
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $ty {
            type Error = TextError;
            fn try_from(text: String) -> Result<Self, TextError> {
                Self::new(text)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = TextError;
            fn try_from(text: &str) -> Result<Self, TextError> {
                Self::new(text)
            }
        }

        impl From<$ty> for String {
            fn from(text: $ty) -> String {
                text.as_str().to_owned()
            }
        }
    };
}

string_like!(LineText);
string_like!(SearchText);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_text_rejects_line_breaks_only() {
        assert!(LineText::new("  x = 1\t# é >>> y").is_ok());
        assert!(LineText::new("").is_ok());
        assert_eq!(LineText::new("a\nb"), Err(TextError::LineBreak));
        assert_eq!(LineText::new("a\rb"), Err(TextError::LineBreak));
    }

    #[test]
    fn search_text_rules() {
        assert!(SearchText::new("a>>>b").is_ok());
        assert!(SearchText::new("a ").is_ok());
        assert_eq!(SearchText::new(""), Err(TextError::Empty));
        assert_eq!(SearchText::new("a >>>b"), Err(TextError::ContainsSeparator));
        assert_eq!(SearchText::new("\n"), Err(TextError::LineBreak));
    }

    #[test]
    fn serde_validates() {
        let ok: LineText = serde_json::from_str("\"  y\"").unwrap();
        assert_eq!(ok.as_str(), "  y");
        assert!(serde_json::from_str::<LineText>("\"a\\nb\"").is_err());
        assert!(serde_json::from_str::<SearchText>("\"\"").is_err());
    }
}
