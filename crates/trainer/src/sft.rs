//! Supervised fine-tuning: the next-token loss on assistant tokens only, LoRA parameters only
//! (the optimiser is [`crate::optim`]), over the demonstrations of a transcript file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use coe_data::formats::Transcript;
use coe_policy::generate::token_logprobs;
use coe_policy::{Adapters, Llama, TextTokenizer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::TrainerError;
use crate::chat::{Encoded, encode};
use crate::config::{RunConfig, io_err};
use crate::metrics::{Metrics, plot_run};
use crate::optim::{StepReport, Trainer};
use crate::progress::Progress;
use crate::run::{finish, keep_snapshot, read_strict, start};

/// Right-pads sequences to one length and lists the target positions `(row, position)`.
pub fn batch_targets(batch: &[&Encoded]) -> (Vec<Vec<u32>>, Vec<(usize, usize)>) {
    let len = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(batch.len());
    let mut targets = Vec::new();
    for (row, encoded) in batch.iter().enumerate() {
        let mut tokens = encoded.tokens.clone();
        tokens.resize(len, 0);
        rows.push(tokens);
        targets.extend(
            encoded
                .targets
                .iter()
                .enumerate()
                .filter(|&(pos, &is_target)| is_target && pos > 0)
                .map(|(pos, _)| (row, pos)),
        );
    }
    (rows, targets)
}

/// Mean negative log-likelihood of the target tokens of `batch` (a scalar tensor).
pub fn sft_loss<B: Backend>(
    model: &Llama<B>,
    batch: &[&Encoded],
) -> Result<Tensor<B, 1>, TrainerError> {
    let (rows, targets) = batch_targets(batch);
    if targets.is_empty() {
        return Err(TrainerError::Data("a batch without target tokens".into()));
    }
    let logprobs = token_logprobs(model, &rows, &targets, Adapters::On)?;
    Ok(logprobs.mean().neg())
}

impl<B: AutodiffBackend> Trainer<B> {
    /// One SFT step on `micro_batches` of encoded demonstrations.
    pub fn sft_step(
        &mut self,
        micro_batches: &[Vec<&Encoded>],
    ) -> Result<StepReport, TrainerError> {
        // A micro-batch costs about its token count (attention's square term is a third of
        // the work at most at these contexts).
        let work = |batch: &Vec<&Encoded>| batch.iter().map(|e| e.tokens.len() as u64).sum();
        self.step_with(micro_batches, work, |model, batch| sft_loss(model, batch))
    }
}

/// Reads and encodes the demonstrations of `path` (JSON Lines with `messages`), leaving out
/// those of the tasks in `exclude`. Returns them with the number skipped because their opening
/// and first command exceed `context` (they teach nothing at that length); an error when none
/// is left.
pub fn load_demonstrations(
    tokenizer: &TextTokenizer,
    path: &Path,
    context: usize,
    exclude: &[String],
) -> Result<(Vec<Encoded>, usize), TrainerError> {
    let mut examples = Vec::new();
    let mut too_long = 0;
    for record in read_strict::<Transcript>(path)? {
        if exclude.contains(&record.task_id) {
            continue;
        }
        match encode(tokenizer, &record.messages, context) {
            Ok(encoded) => examples.push(encoded),
            Err(TrainerError::TooLong { .. }) => too_long += 1,
            Err(e) => return Err(e),
        }
    }
    if examples.is_empty() {
        return Err(TrainerError::Data(format!(
            "{} has no demonstrations that fit {context} tokens",
            path.display()
        )));
    }
    Ok((examples, too_long))
}

/// Supervised fine-tuning; returns the final adapter's path. With `resume`, continues from
/// `out_dir/checkpoint` exactly (same data order, dropout masks and optimiser state).
pub fn run_sft<B: AutodiffBackend>(
    config: &RunConfig,
    resume: bool,
) -> Result<PathBuf, TrainerError> {
    std::fs::create_dir_all(&config.out_dir).map_err(|e| io_err(&config.out_dir, e))?;
    let started_run = start::<B>(config, resume)?;
    let (mut trainer, tokenizer, lora) =
        (started_run.trainer, started_run.tokenizer, started_run.lora);
    let data_path = config
        .sft_data
        .clone()
        .ok_or_else(|| TrainerError::Data("sft_data is not set".into()))?;
    let (examples, too_long) = load_demonstrations(
        &tokenizer,
        &data_path,
        config.context,
        &config.exclude_tasks,
    )?;
    if too_long > 0 {
        eprintln!(
            "sft: skipped {too_long} demonstrations whose opening and first command exceed {} tokens",
            config.context
        );
    }
    let mut metrics = Metrics::open(&config.out_dir, trainer.step)?;
    let micro_batch = config.optim.micro_batch.max(1);
    let per_step = config.optim.grad_accum.max(1) * micro_batch;
    let shuffled = |epoch: usize| {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        ));
        order
    };
    // The shuffle of the current epoch, made once per epoch.
    let mut order: (usize, Vec<usize>) = (0, shuffled(0));
    // Example k of the run is example (k mod n) of epoch (k / n)'s shuffled order.
    let mut step_examples = |step: usize| -> Vec<&Encoded> {
        (step * per_step..(step + 1) * per_step)
            .map(|k| {
                let epoch = k / examples.len();
                if order.0 != epoch {
                    order = (epoch, shuffled(epoch));
                }
                &examples[order.1[k % examples.len()]]
            })
            .collect()
    };
    let tokens_of = |batch: &[&Encoded]| batch.iter().map(|e| e.tokens.len()).sum::<usize>();
    // A resumed run counts the tokens of the steps it already took.
    let mut tokens_seen: usize = (0..trainer.step)
        .map(|step| tokens_of(&step_examples(step)))
        .sum();
    let tokens_before = tokens_seen;
    let started = Instant::now();
    let progress = Progress::new("sft", trainer.step, config.optim.steps);
    while trainer.step < config.optim.steps {
        let first = trainer.step * per_step;
        let chosen = step_examples(trainer.step);
        tokens_seen += tokens_of(&chosen);
        let batches: Vec<Vec<&Encoded>> = chosen.chunks(micro_batch).map(<[_]>::to_vec).collect();
        let report = trainer.sft_step(&batches)?;
        if report.step % config.log_every.max(1) == 0 || report.step == config.optim.steps {
            let elapsed = started.elapsed().as_secs_f64();
            let line = serde_json::json!({
                "phase": "sft", "step": report.step, "loss": report.loss, "lr": report.lr,
                "epoch": (first as f64) / examples.len() as f64,
                "tokens": tokens_seen,
                "tokens_per_s": (tokens_seen - tokens_before) as f64 / elapsed,
                "elapsed_s": elapsed,
            });
            progress.log(&line);
            metrics.write(&line)?;
        }
        progress.step(
            report.step,
            &format!(
                "loss {:.3} {:.0} tok/s",
                report.loss,
                (tokens_seen - tokens_before) as f64 / started.elapsed().as_secs_f64()
            ),
        );
        if report.step % config.checkpoint_every.max(1) == 0 {
            trainer.save_checkpoint(&config.out_dir.join("checkpoint"), &lora, &[])?;
            plot_run(&config.out_dir);
        }
        keep_snapshot(&trainer, &lora, config)?;
    }
    progress.finish();
    finish(&trainer, &lora, config)
}
