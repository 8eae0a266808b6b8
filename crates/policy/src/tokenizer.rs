//! The text side of the model: a byte-level BPE tokenizer (the `tokenizers` crate), built from
//! `tokenizer.json` or from GGUF metadata, and the chat templates of SmolLM2 (ChatML) and
//! Llama 3.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::PolicyError;
use crate::gguf::{Gguf, Value};

/// A chat message handed to the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// The text.
    pub content: &'a str,
}

/// How messages are wrapped in special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2, Qwen).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` after
    /// `<|begin_of_text|>` (Llama 3).
    Llama3,
}

impl ChatTemplate {
    /// The text of one message.
    pub fn message(self, message: ChatMessage<'_>) -> String {
        match self {
            Self::ChatMl => format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                message.role, message.content
            ),
            Self::Llama3 => format!(
                "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                message.role, message.content
            ),
        }
    }

    /// What opens the assistant's answer.
    pub fn generation_prompt(self) -> &'static str {
        match self {
            Self::ChatMl => "<|im_start|>assistant\n",
            Self::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
        }
    }

    /// What starts a conversation.
    pub fn bos(self) -> &'static str {
        match self {
            Self::ChatMl => "",
            Self::Llama3 => "<|begin_of_text|>",
        }
    }

    /// What the template writes after a message's end-of-turn token (ChatML: a newline).
    pub fn after_end_of_turn(self) -> &'static str {
        match self {
            Self::ChatMl => "\n",
            Self::Llama3 => "",
        }
    }

    /// What ends an assistant message (the model emits it to end its turn).
    pub fn end_of_turn(self) -> &'static str {
        match self {
            Self::ChatMl => "<|im_end|>",
            Self::Llama3 => "<|eot_id|>",
        }
    }

    /// A whole conversation, optionally followed by the generation prompt.
    pub fn render(self, messages: &[ChatMessage<'_>], generation_prompt: bool) -> String {
        let mut text = self.bos().to_string();
        for &m in messages {
            text.push_str(&self.message(m));
        }
        if generation_prompt {
            text.push_str(self.generation_prompt());
        }
        text
    }
}

/// A tokenizer with its chat template and end-of-turn tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    template: ChatTemplate,
    end_of_turn: u32,
    stop_ids: HashSet<u32>,
    newline_ids: HashSet<u32>,
    backtick_ids: HashSet<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("template", &self.template)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    fn new(inner: Tokenizer) -> Result<Self, PolicyError> {
        let id = |t: &str| inner.token_to_id(t);
        let template = if id("<|im_start|>").is_some() {
            ChatTemplate::ChatMl
        } else if id("<|start_header_id|>").is_some() {
            ChatTemplate::Llama3
        } else {
            return Err(PolicyError::Tokenizer(
                "no chat template: neither <|im_start|> (ChatML) nor <|start_header_id|> (Llama 3) is a token"
                    .into(),
            ));
        };
        let end_of_turn =
            id(template.end_of_turn()).ok_or_else(|| tok_err("no end-of-turn token"))?;
        let mut stop_ids: HashSet<u32> = [end_of_turn].into();
        for extra in ["<|endoftext|>", "<|end_of_text|>", "<|eom_id|>"] {
            stop_ids.extend(id(extra));
        }
        // One pass over the vocabulary for every per-token property the sampler checks.
        let (mut newline_ids, mut backtick_ids) = (HashSet::new(), HashSet::new());
        for i in 0..inner.get_vocab_size(true) as u32 {
            if let Ok(text) = inner.decode(&[i], false) {
                if text.contains('\n') {
                    newline_ids.insert(i);
                }
                if text.contains('`') {
                    backtick_ids.insert(i);
                }
            }
        }
        Ok(Self {
            inner,
            template,
            end_of_turn,
            stop_ids,
            newline_ids,
            backtick_ids,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| PolicyError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::new(inner)
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`). Only byte-level BPE
    /// (`gpt2`) vocabularies are supported; SmolLM2's (`tokenizer.ggml.pre = smollm`) splits
    /// digits one by one before the byte-level split, as its `tokenizer.json` does.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, PolicyError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(PolicyError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, gpt2)"
            )));
        }
        let tokens = gguf.get_strings("tokenizer.ggml.tokens")?;
        let merges = gguf
            .get_strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("bad merge {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
            Ok(Value::Array(items)) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            _ => byte_level.into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are matched whole in text, as llama.cpp does.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|&(_, &kind)| kind == 3)
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(&special);
        Self::new(inner)
    }

    /// A character-level ChatML tokenizer of at most 64 ids, matching
    /// [`crate::LlamaConfig::tiny`], for tests: lower-case letters, digits, the upper-case
    /// letters of the edit commands, some punctuation, space and newline; other characters are
    /// dropped.
    pub fn tiny() -> Result<Self, PolicyError> {
        let specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"];
        // Byte-level BPE spells space as U+0120 and newline as U+010A.
        let chars = "\u{120}\u{10a}abcdefghijklmnopqrstuvwxyz0123456789ADELPRWXIT()'=:,._";
        let vocab: tokenizers::models::bpe::Vocab = specials
            .iter()
            .map(|s| s.to_string())
            .chain(chars.chars().map(String::from))
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, Vec::new())
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        inner.add_special_tokens(&special);
        Self::new(inner)
    }

    /// The chat template.
    pub fn template(&self) -> ChatTemplate {
        self.template
    }

    /// Token ids of `text`; special tokens written in the text count as such.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PolicyError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PolicyError> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The token that ends an assistant turn.
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// Whether `id` ends generation (end of turn or of text).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// Whether the token's text contains a line break.
    pub fn has_newline(&self, id: u32) -> bool {
        self.newline_ids.contains(&id)
    }

    /// Whether the token's text contains a backtick (it may open or close a code block).
    pub fn has_backtick(&self, id: u32) -> bool {
        self.backtick_ids.contains(&id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), PolicyError> {
        self.inner
            .save(path, false)
            .map_err(|e| PolicyError::Tokenizer(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_as_their_models_expect() {
        let messages = [
            ChatMessage {
                role: "system",
                content: "S",
            },
            ChatMessage {
                role: "user",
                content: "U",
            },
        ];
        assert_eq!(
            ChatTemplate::ChatMl.render(&messages, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            ChatTemplate::Llama3.render(&messages, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        for template in [ChatTemplate::ChatMl, ChatTemplate::Llama3] {
            let assistant = template.message(ChatMessage {
                role: "assistant",
                content: "X",
            });
            let expected_tail = format!(
                "X{}{}",
                template.end_of_turn(),
                template.after_end_of_turn()
            );
            assert!(assistant.ends_with(&expected_tail), "{assistant:?}");
        }
    }
}
