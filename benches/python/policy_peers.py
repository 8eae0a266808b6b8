"""The policy benchmark's peers: llama.cpp (llama-cpp-python) and transformers on CPU, on the same
GGUF file and the same reference prompt as `policy-bench`. Each engine runs in its own process
(peak memory is its own); each prints one JSON line like policy-bench.

usage: policy_peers.py ENGINE MODEL.gguf PROMPT_IDS.json [--threads N] [--repeats N] [--decode-tokens N]
ENGINE: llama.cpp-q4_1 | llama.cpp-f32 | transformers (| convert-f32, used by llama.cpp-f32)
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def f32_copy(path):
    """The GGUF file with every tensor dequantised to F32 (llama.cpp's F32 row)."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
    from gguf.quants import dequantize

    out = os.path.join(tempfile.gettempdir(), "coe-bench-f32.gguf")
    # A finished copy is at least as large as the F32 weights (a partial one is never renamed).
    if os.path.exists(out) and os.path.getsize(out) > 4 * os.path.getsize(path):
        return out
    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"]
    writer = GGUFWriter(out + ".part", bytes(arch.parts[arch.data[0]]).decode())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value_type = field.types[0]
        if value_type == 9:  # array
            item_type = field.types[1]
            if item_type == 8:
                value = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(field.name, value)
        elif value_type == 8:
            writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode())
        else:
            from gguf import GGUFValueType
            writer.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], GGUFValueType(value_type))
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(tensor.shape.tolist())]
        writer.add_tensor(tensor.name, values.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.rename(out + ".part", out)
    return out


def llama_cpp(path, ids, args, weights):
    import numpy as np
    from llama_cpp import Llama

    def last_logits():
        # Without logits_all, llama-cpp-python keeps no scores: read the context's last row.
        return np.ctypeslib.as_array(model._ctx.get_logits(), shape=(model.n_vocab(),))

    model = Llama(model_path=path, n_ctx=1024, n_threads=args.threads, n_batch=512, verbose=False)
    prefill, decode = [], []
    for round_ in range(args.repeats + 1):
        model.reset()
        start = time.perf_counter()
        model.eval(ids)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        token = int(last_logits().argmax())
        generated = 1
        while generated < args.decode_tokens:
            model.eval([token])
            token = int(last_logits().argmax())
            generated += 1
        decode_s = time.perf_counter() - start
        if round_ > 0:
            prefill.append(len(ids) / prefill_s)
            decode.append((generated - 1) / decode_s)
    return {"engine": "llama.cpp (llama-cpp-python)", "weights": weights,
            "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def transformers_cpu(path, ids, args):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32)
    model.eval()
    input_ids = torch.tensor([ids])
    prefill, decode = [], []
    with torch.inference_mode():
        for round_ in range(args.repeats + 1):
            start = time.perf_counter()
            out = model(input_ids, use_cache=True)
            prefill_s = time.perf_counter() - start
            past = out.past_key_values
            token = out.logits[0, -1].argmax().view(1, 1)
            start = time.perf_counter()
            for _ in range(args.decode_tokens - 1):
                out = model(token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[0, -1].argmax().view(1, 1)
            decode_s = time.perf_counter() - start
            if round_ > 0:
                prefill.append(len(ids) / prefill_s)
                decode.append((args.decode_tokens - 1) / decode_s)
    return {"engine": f"transformers {__import__('transformers').__version__} (torch, eager)",
            "weights": "float32 (from Q4_1)",
            "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("engine")
    parser.add_argument("model")
    parser.add_argument("prompt_ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    args = parser.parse_args()
    ids = json.load(open(args.prompt_ids))
    if args.engine == "llama.cpp-q4_1":
        row = llama_cpp(args.model, ids, args, "Q4_1")
    elif args.engine == "llama.cpp-f32":
        # Convert in another process so the conversion's memory is not counted here.
        import subprocess
        subprocess.run([sys.executable, __file__, "convert-f32", args.model, args.prompt_ids], check=True)
        row = llama_cpp(f32_copy(args.model), ids, args, "F32")
    elif args.engine == "convert-f32":
        f32_copy(args.model)
        return
    elif args.engine == "transformers":
        row = transformers_cpu(args.model, ids, args)
    else:
        sys.exit(f"unknown engine {args.engine}")
    row["prompt_tokens"] = len(ids)
    row["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(row))


if __name__ == "__main__":
    main()
