//! Any bytes as a GGUF file: parsing, dequantising every tensor, reading the model configuration
//! and building the tokenizer never panic; errors are values.
#![no_main]

use coe_policy::gguf::Gguf;
use coe_policy::{LlamaConfig, TextTokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = Gguf::parse(data.to_vec()) else {
        return;
    };
    for (name, info) in &gguf.tensors {
        if let Ok((shape, values)) = gguf.dequantize(name) {
            assert_eq!(values.len(), info.len());
            assert_eq!(shape.iter().product::<usize>(), values.len());
        }
    }
    let _ = LlamaConfig::from_gguf(&gguf);
    let _ = TextTokenizer::from_gguf(&gguf);
});
