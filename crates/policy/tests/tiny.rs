//! Behaviour of the model code on a tiny random Llama (fast, no files needed).

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use coe_policy::generate::{rng, shared_prefix_logprobs, token_logprobs};
use coe_policy::model::Llama;
use coe_policy::{Adapters, CpuBackend, LlamaConfig, LoraConfig, Session};

type B = CpuBackend;
type AD = Autodiff<CpuBackend>;

fn tiny<Bk: Backend>(seed: u64) -> Llama<Bk> {
    Llama::random(LlamaConfig::tiny(), seed, &Default::default())
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// Logits at every position of `tokens`, computed in one pass without a cache.
fn full_logits(model: &Llama<B>, tokens: &[u32], adapters: Adapters) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
            [1, tokens.len()],
        ),
        &Default::default(),
    );
    let hidden = model.forward(input, &mut cache, adapters);
    let d = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    host(model.logits(hidden.reshape([tokens.len(), d])))
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Gives the adapters non-zero B so they change the output.
fn perturb_adapters<Bk: Backend>(mut model: Llama<Bk>) -> Llama<Bk> {
    for linear in model.linears_mut() {
        if let Some(lora) = linear.lora.as_mut() {
            let b = lora.b.val();
            let noise = Tensor::random(
                b.dims(),
                burn::tensor::Distribution::Normal(0.0, 0.5),
                &b.device(),
            );
            lora.b = burn::module::Param::from_tensor(noise);
        }
    }
    model
}

#[test]
fn cached_decode_equals_full_recompute() {
    let model = tiny::<B>(1);
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 % 60) as u32).collect();
    let full = full_logits(&model, &tokens, Adapters::On);
    // Prefill 12 tokens, then 1, then 4, then 3: the logits after each chunk's last token must
    // equal those of one full pass.
    let mut session = Session::new(&model);
    let mut at = 0;
    for chunk in [12, 1, 4, 3] {
        session.push(&tokens[at..at + chunk]);
        at += chunk;
        let logits = session.prefill(&model, Adapters::On).unwrap();
        assert!(max_diff(&logits, &full[at - 1]) < 1e-4, "after {at} tokens");
        assert_eq!(session.cached(), at);
    }
}

#[test]
fn long_prefills_after_a_cache_equal_one_pass() {
    // Longer than the 128 query positions of one causal-attention block: one pass over 340
    // tokens (`forward`: three blocks from position 0) against 40 tokens, then 300 after them
    // (`forward_rows`: three blocks after a cache, the last one short).
    let model = tiny::<B>(5);
    let tokens: Vec<u32> = (0..340).map(|i| (i * 11 % 59 + 1) as u32).collect();
    let full = full_logits(&model, &tokens, Adapters::On);
    let mut session = Session::new(&model);
    let mut at = 0;
    for chunk in [40, 300] {
        session.push(&tokens[at..at + chunk]);
        at += chunk;
        let logits = session.prefill(&model, Adapters::On).unwrap();
        assert!(max_diff(&logits, &full[at - 1]) < 1e-4, "after {at} tokens");
    }
    // The first 200 positions alone agree with the same positions of the longer pass.
    let short = full_logits(&model, &tokens[..200], Adapters::On);
    for (position, logits) in short.iter().enumerate() {
        assert!(
            max_diff(logits, &full[position]) < 1e-4,
            "position {position}"
        );
    }
}

#[test]
fn batched_greedy_samples_equal_single_and_continue_correctly() {
    let model = tiny::<B>(2);
    let tokenizer_free_prompt: Vec<u32> = vec![3, 9, 27, 17, 51];
    let greedy = coe_policy::SamplingConfig {
        stop_at_newline: false,
        ..coe_policy::SamplingConfig::greedy(6)
    };
    let tok = tiny_tokenizer();
    let run = |n| {
        let mut s = Session::new(&model);
        s.push(&tokenizer_free_prompt);
        s.generate(&model, &tok, n, &greedy, &mut rng(0)).unwrap()
    };
    let one = run(1);
    let three = run(3);
    for (generation, session) in &three {
        assert_eq!(generation.tokens, one[0].0.tokens);
        assert_eq!(session.tokens(), one[0].1.tokens());
    }
    // The continued session's cache holds everything but the last generated token, and its next
    // logits equal a full recompute.
    let (generation, mut session) = three.into_iter().nth(1).unwrap();
    assert_eq!(
        session.cached(),
        tokenizer_free_prompt.len() + generation.tokens.len() - 1
    );
    session.push(&[5, 6]);
    let logits = session.prefill(&model, Adapters::On).unwrap();
    let all = session.tokens().to_vec();
    let full = full_logits(&model, &all, Adapters::On);
    assert!(max_diff(&logits, full.last().unwrap()) < 1e-4);
}

/// Rows of different lengths prefilled and decoded as one batch sample exactly what each
/// samples alone, and every recorded log-probability equals a full recompute of the finished
/// sequence, across the cache's tail folding into its bulk.
#[test]
fn batched_rows_of_different_lengths_decode_as_each_alone() {
    use coe_policy::cache::TAIL_POSITIONS;
    use coe_policy::generate::{decode_batch, prefill_batch};
    let model = tiny::<B>(4);
    let tok = tiny_tokenizer();
    let config = coe_policy::SamplingConfig {
        temperature: 1.0,
        top_p: 1.0,
        max_tokens: TAIL_POSITIONS + 40,
        stop_at_newline: false,
        stop_after_code_block: false,
    };
    let prompts: Vec<Vec<u32>> = [5usize, 17, 70]
        .iter()
        .map(|&len| (0..len).map(|i| (i * 13 % 50 + 1) as u32).collect())
        .collect();
    // Rows are prefilled as one packed batch, then decode together.
    let decode = |rows: Vec<usize>| {
        let mut rngs: Vec<_> = rows.iter().map(|&r| rng(100 + r as u64)).collect();
        let mut rngs: Vec<_> = rngs.iter_mut().collect();
        let mut sessions: Vec<Session<B>> = rows
            .iter()
            .map(|&r| {
                let mut session = Session::new(&model);
                session.push(&prompts[r]);
                session
            })
            .collect();
        let mut refs: Vec<_> = sessions.iter_mut().collect();
        let logits = prefill_batch(&model, &mut refs, Adapters::On).unwrap();
        for (&r, logits) in rows.iter().zip(&logits) {
            let full = full_logits(&model, &prompts[r], Adapters::On);
            assert!(
                max_diff(logits, full.last().unwrap()) < 1e-4,
                "prefill of row {r}"
            );
        }
        let rows = sessions.into_iter().zip(logits).collect();
        decode_batch(&model, &tok, rows, &mut rngs, &config).unwrap()
    };
    let together = decode(vec![0, 1, 2]);
    let mut longest = 0;
    for (row, (generation, session)) in together.iter().enumerate() {
        let (alone, _) = decode(vec![row]).pop().unwrap();
        assert_eq!(generation.tokens, alone.tokens, "row {row}");
        assert!(max_diff(&generation.logprobs, &alone.logprobs) < 1e-4);
        let all = session.tokens().to_vec();
        let start = prompts[row].len();
        let targets: Vec<(usize, usize)> = (start..all.len()).map(|p| (0, p)).collect();
        let full = host(
            token_logprobs(&model, std::slice::from_ref(&all), &targets, Adapters::On).unwrap(),
        );
        assert!(max_diff(&generation.logprobs, &full) < 1e-4, "row {row}");
        longest = longest.max(generation.tokens.len());
    }
    assert!(longest > TAIL_POSITIONS, "no row crossed a tail fold");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = tiny::<B>(3);
    let tok = tiny_tokenizer();
    let config = coe_policy::SamplingConfig {
        temperature: 1.0,
        top_p: 0.9,
        max_tokens: 8,
        stop_at_newline: false,
        stop_after_code_block: false,
    };
    let run = |seed| {
        let mut s = Session::new(&model);
        s.push(&[1, 2, 3]);
        s.generate(&model, &tok, 4, &config, &mut rng(seed))
            .unwrap()
            .into_iter()
            .map(|(g, _)| g.tokens)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn adapters_off_is_the_base_and_merge_matches() {
    let base = tiny::<B>(4);
    let tokens = [4u32, 8, 15, 16, 23, 42];
    let base_logits = full_logits(&base, &tokens, Adapters::On);
    let lora = perturb_adapters(base.clone().attach_lora(
        &LoraConfig {
            dropout: 0.0,
            ..LoraConfig::default()
        },
        1,
        &Default::default(),
    ));
    let with = full_logits(&lora, &tokens, Adapters::On);
    let without = full_logits(&lora, &tokens, Adapters::Off);
    assert_eq!(
        without, base_logits,
        "adapters off must give the base model exactly"
    );
    assert!(
        max_diff(&with[5], &base_logits[5]) > 1e-3,
        "the adapters change nothing"
    );
    let merged = full_logits(&lora.merge_lora(), &tokens, Adapters::On);
    assert!(max_diff(&merged[5], &with[5]) < 1e-3);
}

#[test]
fn adapters_round_trip_through_safetensors() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let path = dir.join("adapter.safetensors");
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
    };
    let model = perturb_adapters(tiny::<B>(5).attach_lora(&config, 1, &Default::default()));
    coe_policy::lora::save_adapters(&model, &config, &path).unwrap();
    let (loaded, loaded_config) = coe_policy::lora::load_adapters(tiny::<B>(5), &path).unwrap();
    assert_eq!(loaded_config, config);
    let tokens = [1u32, 2, 3, 4];
    assert_eq!(
        full_logits(&loaded, &tokens, Adapters::On),
        full_logits(&model, &tokens, Adapters::On)
    );
    // A file of another shape is refused, not half-loaded.
    let other = LlamaConfig {
        hidden_size: 64,
        ..LlamaConfig::tiny()
    };
    let err =
        coe_policy::lora::load_adapters(Llama::<B>::random(other, 1, &Default::default()), &path)
            .unwrap_err();
    assert!(err.to_string().contains("expected F32"), "{err}");
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(coe_policy::lora::load_adapters(tiny::<B>(5), &path).is_err());
}

#[test]
fn training_updates_only_the_adapters() {
    let device = Default::default();
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
    };
    let mut model: Llama<AD> = tiny::<AD>(6).attach_lora(&config, 1, &device);
    let base_before: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|l| host(l.weight.val()))
        .collect();
    let embed_before = host(model.embed.val());
    // Dropout masks come from the backend's generator: seed it so the run is reproducible
    // (no other test of this binary draws from it).
    <AD as Backend>::seed(&device, 6);
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(0.1)
        .init::<AD, Llama<AD>>();
    let tokens = vec![vec![5u32, 9, 2, 33, 7, 12, 40, 3]];
    let targets: Vec<(usize, usize)> = (1..8).map(|p| (0, p)).collect();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let logprobs = token_logprobs(&model, &tokens, &targets, Adapters::On).unwrap();
        let loss = logprobs.mean().neg();
        losses.push(host(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(5e-2, model, grads);
    }
    assert!(
        losses[29] < losses[0] * 0.8,
        "the loss did not fall: {losses:?}"
    );
    let base_after: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|l| host(l.weight.val()))
        .collect();
    assert_eq!(base_before, base_after, "a base weight changed");
    assert_eq!(embed_before, host(model.embed.val()));
    // The inference copy of the trained model gives the same log-probs as the training one.
    let valid = model.valid();
    let train_lp = host(token_logprobs(&model, &tokens, &targets, Adapters::Off).unwrap());
    let valid_lp = host(token_logprobs(&valid, &tokens, &targets, Adapters::Off).unwrap());
    assert!(max_diff(&train_lp, &valid_lp) < 1e-5);
}

#[test]
fn bad_targets_are_errors() {
    let model = tiny::<B>(7);
    assert!(token_logprobs(&model, &[vec![1, 2, 3]], &[(0, 0)], Adapters::On).is_err());
    assert!(token_logprobs(&model, &[vec![1, 2, 3]], &[(1, 1)], Adapters::On).is_err());
    assert!(token_logprobs(&model, &[vec![1, 2, 3], vec![1]], &[(0, 1)], Adapters::On).is_err());
    let mut session = Session::new(&model);
    assert!(
        session.prefill(&model, Adapters::On).is_err(),
        "nothing pushed"
    );
    // Ids outside the vocabulary (64) are errors everywhere, not panics, and a failed prefill
    // keeps the tokens pending.
    let vocab = model.config().vocab_size as u32;
    assert!(token_logprobs(&model, &[vec![1, vocab]], &[(0, 1)], Adapters::On).is_err());
    session.push(&[1, vocab]);
    assert!(session.prefill(&model, Adapters::On).is_err());
    assert!(
        session.prefill(&model, Adapters::On).is_err(),
        "still pending"
    );
    let sequences: [&[u32]; 2] = [&[1, 2, vocab], &[1, 2, 3]];
    let targets = vec![vec![2], vec![2]];
    assert!(shared_prefix_logprobs(&model, &sequences, 1, &targets, Adapters::On).is_err());
    assert!(
        shared_prefix_logprobs(&model, &[], 3, &[], Adapters::On)
            .unwrap()
            .is_empty()
    );
    // Decoding: no rows is nothing; logits of the wrong size are an error.
    let tok = tiny_tokenizer();
    let config = coe_policy::SamplingConfig::greedy(4);
    let mut good = Session::new(&model);
    good.push(&[1, 2, 3]);
    let logits = good.prefill(&model, Adapters::On).unwrap();
    let none = good
        .clone()
        .decode(&model, &tok, logits.clone(), 0, &config, &mut rng(0))
        .unwrap();
    assert!(none.is_empty());
    assert!(
        good.decode(&model, &tok, vec![0.0; 3], 1, &config, &mut rng(0))
            .is_err()
    );
}

/// A byte-level tokenizer over the tiny vocabulary, with `<|im_end|>` as id 63.
fn tiny_tokenizer() -> coe_policy::TextTokenizer {
    coe_policy::TextTokenizer::tiny().unwrap()
}

#[test]
fn tiny_tokenizer_round_trips_commands() {
    let tok = tiny_tokenizer();
    assert!(tok.vocab_size() <= LlamaConfig::tiny().vocab_size);
    let text = "<|im_start|>assistant\nREPL 3 'x = 1'<|im_end|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(tok.is_stop(*ids.last().unwrap()));
    assert!(tok.has_newline(tok.encode("\n").unwrap()[0]));
}

/// A Hugging Face folder (config.json, two safetensors shards, tokenizer.json) written from a
/// tiny random model loads back into the same model: same logits.
#[test]
fn loads_a_sharded_hugging_face_folder() {
    use safetensors::tensor::TensorView;
    let model = tiny::<B>(11);
    let config = model.config().clone();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let bytes = |v: Vec<f32>| {
        v.into_iter()
            .flat_map(f32::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    // burn keeps projections [in, out]; the files hold PyTorch's [out, in].
    let torch = |t: Tensor<B, 2>| {
        let [d_in, d_out] = t.dims();
        (vec![d_out, d_in], bytes(host(t.transpose())))
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, linear) in model.named_linears() {
        let (shape, data) = torch(linear.weight.val());
        tensors.push((format!("{name}.weight"), shape, data));
    }
    for (i, layer) in model.layers.iter().enumerate() {
        let d = config.hidden_size;
        tensors.push((
            format!("model.layers.{i}.input_layernorm.weight"),
            vec![d],
            bytes(host(layer.attn_norm.weight.val())),
        ));
        tensors.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            vec![d],
            bytes(host(layer.mlp_norm.weight.val())),
        ));
    }
    tensors.push((
        "model.norm.weight".into(),
        vec![config.hidden_size],
        bytes(host(model.norm.weight.val())),
    ));
    tensors.push((
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, config.hidden_size],
        bytes(host(model.embed.val())),
    ));
    let half = tensors.len() / 2;
    for (index, shard) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let views: Vec<(String, TensorView<'_>)> = shard
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let file = safetensors::serialize(views, None).unwrap();
        std::fs::write(
            dir.join(format!("model-0000{}-of-00002.safetensors", index + 1)),
            file,
        )
        .unwrap();
    }
    let config_json = serde_json::json!({
        "model_type": "llama", "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "tie_word_embeddings": true, "max_position_embeddings": config.max_position_embeddings,
    });
    std::fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
    tiny_tokenizer().save(&dir.join("tokenizer.json")).unwrap();

    let loaded = coe_policy::Policy::<B>::load(dir, &Default::default()).unwrap();
    let tokens = [3u32, 14, 15, 9, 26];
    assert_eq!(
        full_logits(&loaded.model, &tokens, Adapters::On),
        full_logits(&model, &tokens, Adapters::On)
    );
    assert_eq!(
        loaded.tokenizer.encode("REPL 1").unwrap(),
        tiny_tokenizer().encode("REPL 1").unwrap()
    );
    // A missing shard is an error naming the tensor, not a panic.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = coe_policy::Policy::<B>::load(dir, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("no tensor"), "{err}");
}
