"""The training benchmark's peer: transformers + PEFT LoRA SFT steps on CPU, on the same GGUF
file and the same token sequences and loss masks as `train-bench` (which writes them), and a
GEMM probe of the machine. Prints one JSON line.

usage: train_peer.py step MODEL.gguf SEQUENCES.json [--threads N] [--repeats N] [--device cuda]
                         [--random-1b]
       train_peer.py gemm [--threads N] [--repeats N]

`step`: a fresh LoRA (rank 16, alpha 32, no dropout, on q/k/v/o/gate/up/down, as coe's) on the
float32 model; one optimiser step is every sequence's mean next-token loss over its target
positions, averaged over the sequences (coe's SFT step with one demonstration per micro-batch),
backward, AdamW. One untimed warm-up step, then `repeats` timed ones. `gemm`: float32
[1024, 576] x [576, 1536] products (a training step's most common shape), the machine's rate.
"""
import argparse
import json
import os
import statistics
import time


def step_bench(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.random_1b:
        from transformers import LlamaConfig
        # Llama-3.2-1B's shape (coe's `LlamaConfig::llama_3_2_1b`), random weights.
        config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                             num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                             tie_word_embeddings=True, max_position_embeddings=131072)
        # Made on the device itself: 1.2B parameters initialised by the CPU's threads took
        # longer than a GPU check's time limit.
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(args.model), gguf_file=os.path.basename(args.model),
            torch_dtype=torch.float32)
    device = torch.device(args.device)
    model = model.to(device)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()
    sequences = json.load(open(args.sequences))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                                  weight_decay=0.0)

    def one_step():
        total = 0.0
        for seq in sequences:
            ids = torch.tensor([seq["ids"]], device=device)
            # Position p predicts token p + 1; coe's targets mark the predicted tokens.
            labels = torch.tensor([[t if m else -100 for t, m in zip(seq["ids"], seq["targets"])]],
                                  device=device)
            labels[0, 0] = -100
            logits = model(input_ids=ids).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100)
            (loss / len(sequences)).backward()
            total += loss.item() / len(sequences)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return total

    first_loss = one_step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    import peft
    import transformers
    return {"engine": f"transformers {transformers.__version__} + peft {peft.__version__} "
                      f"(torch {torch.__version__}, eager, {args.device})",
            "first_loss": first_loss, "step_s": times}


def gemm_bench(args):
    import torch

    torch.set_num_threads(args.threads)
    a = torch.randn(1024, 576)
    b = torch.randn(576, 1536)
    for _ in range(5):
        a @ b
    rates = []
    for _ in range(args.repeats):
        n = 50
        start = time.perf_counter()
        for _ in range(n):
            a @ b
        seconds = time.perf_counter() - start
        rates.append(2 * 1024 * 576 * 1536 * n / seconds / 1e9)
    return {"engine": f"torch {torch.__version__} matmul", "gflops": statistics.median(rates)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["step", "gemm"])
    parser.add_argument("model", nargs="?")
    parser.add_argument("sequences", nargs="?")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--random-1b", action="store_true",
                        help="a Llama-3.2-1B-shaped model with random weights instead of MODEL")
    args = parser.parse_args()
    if args.mode == "step":
        if not (args.model and args.sequences):
            parser.error("step needs MODEL.gguf and SEQUENCES.json")
        print(json.dumps(step_bench(args)))
    else:
        print(json.dumps(gemm_bench(args)))


if __name__ == "__main__":
    main()
