//! The optimiser and its state, shared by SFT and GRPO: AdamW on the LoRA parameters with linear
//! warm-up then cosine decay, gradient accumulation and clipping; checkpoints that resume
//! exactly.

use std::path::Path;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use coe_policy::Llama;
use serde::{Deserialize, Serialize};

use crate::TrainerError;

/// Optimiser settings shared by SFT and GRPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Total optimiser steps (the cosine decays to `min_lr_ratio * lr` at the last one).
    pub steps: usize,
    /// Floor of the cosine, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Micro-batches whose gradients are summed before one optimiser step.
    pub grad_accum: usize,
    /// SFT: demonstrations in one micro-batch, padded to the longest and run as one batch (its
    /// loss the mean over all their target tokens). 1 suits a CPU; a GPU wants several, since
    /// one demonstration leaves it mostly idle.
    pub micro_batch: usize,
    /// Each parameter tensor's gradient is scaled down to at most this L2 norm (burn clips per
    /// tensor, not over all parameters at once).
    pub clip_norm: f32,
    /// AdamW decoupled weight decay (applies to the adapters only: the base is frozen).
    pub weight_decay: f32,
    /// How many micro-batches (SFT) or update runs (GRPO) take their gradients at the same
    /// time, each on its own thread with its own graph in memory (so peak memory grows with
    /// it); 1 runs them one after another. On 2 cores the model alone keeps about 1.2 of them
    /// busy, and 2 at once nearly double SFT's tokens/s (see the crate README). Adapters with
    /// dropout always run one at a time, so their masks do not depend on thread timing.
    pub parallel_parts: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            warmup_steps: 20,
            steps: 1000,
            min_lr_ratio: 0.1,
            grad_accum: 8,
            micro_batch: 1,
            clip_norm: 1.0,
            weight_decay: 0.0,
            parallel_parts: 2,
        }
    }
}

impl OptimConfig {
    /// The learning rate of optimiser step `step` (0-based): linear warm-up, then cosine decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    /// The AdamW optimiser these settings describe.
    pub fn optimizer<B: AutodiffBackend>(&self) -> OptimizerAdaptor<AdamW, Llama<B>, B> {
        AdamWConfig::new()
            .with_weight_decay(self.weight_decay)
            .with_grad_clipping(Some(GradientClippingConfig::Norm(self.clip_norm)))
            .init()
    }
}

/// The state of a fine-tuning run.
pub struct Trainer<B: AutodiffBackend> {
    /// The model being trained (base frozen, adapters trainable).
    pub model: Llama<B>,
    optimizer: OptimizerAdaptor<AdamW, Llama<B>, B>,
    /// Settings.
    pub config: OptimConfig,
    /// Optimiser steps taken.
    pub step: usize,
    /// Seed of the backend's random generator (dropout), reset before each step to
    /// `seed + step` so a resumed run draws the same masks.
    pub seed: u64,
}

/// What a checkpoint's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps taken.
    pub step: usize,
    /// The run's seed.
    pub seed: u64,
    /// The LoRA settings of the adapters.
    pub lora: coe_policy::LoraConfig,
}

impl<B: AutodiffBackend> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("step", &self.step).finish()
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step number (1-based, after the step).
    pub step: usize,
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer for `model` (which should carry LoRA adapters).
    pub fn new(model: Llama<B>, config: OptimConfig) -> Self {
        Self {
            optimizer: config.optimizer(),
            model,
            config,
            step: 0,
            seed: 0,
        }
    }

    /// Writes adapters, optimiser state, step and the run's `extra` files (name, bytes) to
    /// `dir` atomically: everything goes to a sibling temporary folder first, which then
    /// replaces `dir`.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        lora: &coe_policy::LoraConfig,
        extra: &[(&str, Vec<u8>)],
    ) -> Result<(), TrainerError> {
        let tmp = coe_cache::temporary_sibling(dir);
        let io = |path: &Path, e: &dyn std::fmt::Display| TrainerError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, &e))?;
        coe_policy::lora::save_adapters(&self.model, lora, &tmp.join("adapter.safetensors"))?;
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(self.optimizer.to_record(), tmp.join("optimizer"))
            .map_err(|e| io(&tmp.join("optimizer.bin"), &e))?;
        let state = CheckpointState {
            step: self.step,
            seed: self.seed,
            lora: *lora,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| io(dir, &e))?;
        std::fs::write(tmp.join("state.json"), json).map_err(|e| io(&tmp, &e))?;
        for (name, bytes) in extra {
            std::fs::write(tmp.join(name), bytes).map_err(|e| io(&tmp.join(name), &e))?;
        }
        let old = coe_cache::temporary_sibling(dir);
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| io(dir, &e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, &e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, &e))?;
        }
        Ok(())
    }

    /// Restores a trainer from a checkpoint written by [`Trainer::save_checkpoint`], on top of
    /// the frozen `base` model.
    pub fn load_checkpoint(
        base: Llama<B>,
        dir: &Path,
        config: OptimConfig,
    ) -> Result<(Self, CheckpointState), TrainerError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| TrainerError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, &e))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| io(&state_path, &e))?;
        let (model, _) = coe_policy::lora::load_adapters(base, &dir.join("adapter.safetensors"))?;
        let device = model.embed.val().device();
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("optimizer"), &device)
            .map_err(|e| io(&dir.join("optimizer.bin"), &e))?;
        let optimizer = config.optimizer().load_record(record);
        Ok((
            Self {
                model,
                optimizer,
                config,
                step: state.step,
                seed: state.seed,
            },
            state,
        ))
    }

    /// How many parts [`Trainer::step_sum`] takes at once: [`OptimConfig::parallel_parts`], or
    /// 1 when the adapters have dropout (it draws from the backend's one generator, so parts
    /// running at once would take their masks in an order set by thread timing).
    pub fn parts_at_once(&self) -> usize {
        if self.model.lora_dropout() > 0.0 {
            1
        } else {
            self.config.parallel_parts.max(1)
        }
    }

    /// One optimiser step over `micro_batches` (gradients of each micro-batch's loss, divided
    /// by their number, are summed). `loss_fn` computes a micro-batch's loss; `work` estimates
    /// its cost (see [`Trainer::step_sum`]). A loss that is not finite stops with an error and
    /// leaves the model as it was.
    pub fn step_with<T: Sync>(
        &mut self,
        micro_batches: &[T],
        work: impl Fn(&T) -> u64,
        loss_fn: impl Fn(&Llama<B>, &T) -> Result<Tensor<B, 1>, TrainerError> + Sync,
    ) -> Result<StepReport, TrainerError> {
        let scale = 1.0 / micro_batches.len().max(1) as f64;
        let (report, _) = self.step_sum(
            micro_batches,
            work,
            |_| false,
            |model, batch| Ok((loss_fn(model, batch)?.mul_scalar(scale), ())),
        )?;
        Ok(report)
    }

    /// One optimiser step whose loss is the sum of `loss_fn` over `parts` (each part already
    /// weighted by the caller: GRPO divides by the tokens of the part's group). `loss_fn` also
    /// returns what the caller wants to keep of each part, handed back in the order of `parts`.
    ///
    /// Up to [`Trainer::parts_at_once`] threads take the parts from one queue, costliest first
    /// by `work` (a thread that finishes a short part takes the next one instead of waiting for
    /// its partner, as fixed pairs would), each on a copy of the model whose adapters are fresh
    /// leaves of the autodiff graph (the same parameter ids, so each copy's gradients are the
    /// model's). The gradients are then summed in the order of `parts`, so the step does not
    /// depend on how many ran at once or in which order they finished. A part for which `alone`
    /// holds runs with no other beside it (one whose graph alone needs most of the memory).
    pub fn step_sum<T: Sync, X: Send>(
        &mut self,
        parts: &[T],
        work: impl Fn(&T) -> u64,
        alone: impl Fn(&T) -> bool + Sync,
        loss_fn: impl Fn(&Llama<B>, &T) -> Result<(Tensor<B, 1>, X), TrainerError> + Sync,
    ) -> Result<(StepReport, Vec<X>), TrainerError> {
        if parts.is_empty() {
            return Err(TrainerError::Data("an optimiser step needs data".into()));
        }
        let device = self.model.embed.val().device();
        B::seed(&device, self.seed.wrapping_add(self.step as u64));
        let threads = self.parts_at_once().min(parts.len());
        let step = self.step;
        let gradients =
            |model: &Llama<B>, part: &T| -> Result<(f64, GradientsParams, X), TrainerError> {
                let (loss, kept) = loss_fn(model, part)?;
                let value = f64::from(loss.clone().into_scalar().elem::<f32>());
                if !value.is_finite() {
                    return Err(TrainerError::Diverged {
                        step: step + 1,
                        loss: value,
                    });
                }
                let grads = loss.backward();
                Ok((value, GradientsParams::from_grads(grads, model), kept))
            };
        let results: Vec<Result<(f64, GradientsParams, X), TrainerError>> = if threads <= 1 {
            parts
                .iter()
                .map(|part| gradients(&self.model, part))
                .collect()
        } else {
            let mut queue: Vec<usize> = (0..parts.len()).collect();
            // Stable: equal costs keep the order of `parts`.
            queue.sort_by_key(|&i| std::cmp::Reverse(work(&parts[i])));
            let next = std::sync::atomic::AtomicUsize::new(0);
            // Parts that must run alone take it exclusively, the others shared.
            let running = std::sync::RwLock::new(());
            let model = &self.model;
            type Taken<X> = Vec<(usize, Result<(f64, GradientsParams, X), TrainerError>)>;
            let taken: Vec<Result<Taken<X>, TrainerError>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let (queue, next, gradients) = (&queue, &next, &gradients);
                        let (alone, running) = (&alone, &running);
                        let device = device.clone();
                        scope.spawn(move || {
                            let mut done = Vec::new();
                            loop {
                                let slot = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&index) = queue.get(slot) else { break };
                                // A poisoned lock only means another part panicked; that
                                // thread's join reports it.
                                let exclusive = alone(&parts[index]);
                                let _alone = exclusive
                                    .then(|| running.write().unwrap_or_else(|e| e.into_inner()));
                                let _beside = (!exclusive)
                                    .then(|| running.read().unwrap_or_else(|e| e.into_inner()));
                                let copy = model.clone().fork(&device);
                                done.push((index, gradients(&copy, &parts[index])));
                            }
                            done
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| {
                        worker
                            .join()
                            .map_err(|_| TrainerError::Data("a gradient thread panicked".into()))
                    })
                    .collect()
            });
            let mut ordered: Vec<Option<Result<_, _>>> = (0..parts.len()).map(|_| None).collect();
            for worker in taken {
                for (index, result) in worker? {
                    ordered[index] = Some(result);
                }
            }
            ordered
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|| {
                        Err(TrainerError::Data("a part's gradients went missing".into()))
                    })
                })
                .collect()
        };
        let mut accumulator = GradientsAccumulator::new();
        let mut total = 0.0;
        let mut kept = Vec::with_capacity(parts.len());
        // In the order of `parts`: the failure reported is the earliest part's, as one by one.
        for result in results {
            let (value, grads, part_kept) = result?;
            total += value;
            accumulator.accumulate(&self.model, grads);
            kept.push(part_kept);
        }
        let lr = self.config.lr_at(self.step);
        let model = self.model.clone();
        self.model = self.optimizer.step(lr, model, accumulator.grads());
        self.step += 1;
        Ok((
            StepReport {
                step: self.step,
                loss: total,
                lr,
            },
            kept,
        ))
    }

    /// Counts a step in which there was nothing to learn (GRPO: every group's rewards were
    /// equal): the schedule moves on, the adapters and the optimiser's moments do not.
    pub fn skip_step(&mut self) -> StepReport {
        let lr = self.config.lr_at(self.step);
        self.step += 1;
        StepReport {
            step: self.step,
            loss: 0.0,
            lr,
        }
    }
}
