//! Chain-of-Edits data.
//!
//! - [`sources`]: MBPP rows, HumanEvalFix rows and coe task JSONL into one [`Task`] type, with
//!   per-line errors that do not stop a batch; [`normalize`] cleans line endings and
//!   indentation.
//! - [`corrupt`]: seeded, reproducible corruptions of a reference solution, 1-5 edits, each one
//!   edit command, with its inverse.
//! - [`demo`]: demonstrations: the inverse commands played through a real
//!   [`coe_tool_state::Episode`], so every observation carries real feedback.
//! - [`prompt`]: the system prompt, the chat transcripts for SFT, and the direct-answer format.
//! - [`formats`]: every file the pipeline writes or reads (one type per line format) and the
//!   one JSON Lines reader and writer.
//! - [`split`]: MBPP splits by task id; [`stats`]: the statistics of a data set.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod corrupt;
pub mod demo;
pub mod formats;
pub mod normalize;
pub mod prompt;
pub mod sources;
pub mod split;
pub mod stats;

pub use coe_tool_state::Task;

/// Version of the generators; written into every generated file so a change is visible.
pub const GENERATOR_VERSION: u32 = 1;

/// A stable 64-bit hash (FNV-1a) for deriving per-task seeds: unlike `std`'s hasher it is
/// fixed forever, so a seed and a task id give the same data on every machine and release.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
