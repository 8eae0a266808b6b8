//! Chat transcripts as training sequences: token ids plus a mask that is true on the tokens the
//! model must learn to produce (each assistant message and its end-of-turn token).

use coe_data::prompt::{Message, Role};
use coe_policy::{ChatMessage, TextTokenizer};

use crate::TrainerError;

/// A tokenised conversation with its loss mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// True where the token is a target (assistant content and end of turn).
    pub targets: Vec<bool>,
    /// Assistant turns kept (the rest were cut by the context limit).
    pub turns: usize,
}

pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The token ids of `messages` in the tokenizer's chat template, ending with the assistant
/// header: the prompt a generation continues.
pub fn prompt_ids(
    tokenizer: &TextTokenizer,
    messages: &[Message],
) -> Result<Vec<u32>, TrainerError> {
    let chat: Vec<ChatMessage<'_>> = messages
        .iter()
        .map(|m| ChatMessage {
            role: role_name(m.role),
            content: &m.content,
        })
        .collect();
    Ok(tokenizer.encode(&tokenizer.template().render(&chat, true))?)
}

/// The text of generated tokens, without stop tokens.
pub(crate) fn answer_text(
    tokenizer: &TextTokenizer,
    tokens: &[u32],
) -> Result<String, TrainerError> {
    let visible: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|&t| !tokenizer.is_stop(t))
        .collect();
    Ok(tokenizer.decode(&visible)?)
}

/// Tokenises `messages` in the tokenizer's chat template.
///
/// Truncation rule: the opening (every message before the first assistant message) is always
/// kept; then whole exchanges (assistant message plus the user message after it) are added in
/// order while the total stays within `context`; the first exchange that does not fit, and all
/// after it, are dropped. A conversation whose opening plus first assistant message does not fit
/// is an error (it cannot teach anything).
pub fn encode(
    tokenizer: &TextTokenizer,
    messages: &[Message],
    context: usize,
) -> Result<Encoded, TrainerError> {
    let template = tokenizer.template();
    let piece = |text: &str| tokenizer.encode(text).map_err(TrainerError::from);
    let mut tokens = piece(template.bos())?;
    let mut targets = vec![false; tokens.len()];
    let mut turns = 0;
    for message in messages {
        let chat = ChatMessage {
            role: role_name(message.role),
            content: &message.content,
        };
        let (ids, mask) = if message.role == Role::Assistant {
            // Header (not learned), then content and end of turn (learned).
            let header = piece(template.generation_prompt())?;
            let body = piece(&format!("{}{}", message.content, template.end_of_turn()))?;
            let tail = piece(template.after_end_of_turn())?;
            let mut ids = header.clone();
            ids.extend(&body);
            ids.extend(&tail);
            let mut mask = vec![false; header.len()];
            mask.extend(std::iter::repeat_n(true, body.len()));
            mask.extend(std::iter::repeat_n(false, tail.len()));
            (ids, mask)
        } else {
            let ids = piece(&template.message(chat))?;
            let mask = vec![false; ids.len()];
            (ids, mask)
        };
        if tokens.len() + ids.len() > context {
            if turns == 0 {
                return Err(TrainerError::TooLong { context });
            }
            // Drop a trailing user message that has no assistant answer after it.
            break;
        }
        tokens.extend(ids);
        targets.extend(mask);
        if message.role == Role::Assistant {
            turns += 1;
        }
    }
    // A cut conversation must not end on a user message that teaches nothing: trailing
    // non-target tokens are harmless, so they stay.
    Ok(Encoded {
        tokens,
        targets,
        turns,
    })
}
