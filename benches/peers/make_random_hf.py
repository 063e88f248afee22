"""Writes a Hugging Face model directory with random weights at a published model's shapes, for
speed comparisons of emberlm and llama.cpp on the same weights (nothing can be downloaded here).

    python3 benches/peers/make_random_hf.py qwen3-0.6b /tmp/qwen3-0.6b [--dtype bf16] \
        [--gpt2-tokenizer DIR]

Presets: smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b (their config.json values), and
qwen3-0.6b-llama: a Llama-architecture model with Qwen3-0.6B's matrix shapes (no q/k norms), for
llama.cpp snapshots that predate qwen3. The
weights are N(0, 0.02) (norm scales 1), in bf16 by default as the real checkpoints ship, split
into shards of at most 2 GB with model.safetensors.index.json. A SentencePiece tokenizer.model
trained on the book's data (EMBER_DATA/the-verdict.txt) lets llama.cpp's convert_hf_to_gguf.py
write a vocabulary (it pads the rest of the ids); the speed of decoding does not depend on it.
`--gpt2-tokenizer DIR` copies GPT-2's tokenizer files from DIR (tokenizer.json, vocab.json,
merges.txt) instead, so that both `ember serve` and `llama-server` read text prompts the same way.
Needs torch, safetensors and sentencepiece.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

PRESETS = {
    "smollm2-135m": dict(model_type="llama", arch="LlamaForCausalLM", vocab=49152, hidden=576,
                         layers=30, heads=9, kv=3, head_dim=64, ffn=1536, theta=100000.0,
                         eps=1e-5, ctx=8192, bias=False, qk_norm=False),
    "qwen2.5-0.5b": dict(model_type="qwen2", arch="Qwen2ForCausalLM", vocab=151936, hidden=896,
                         layers=24, heads=14, kv=2, head_dim=64, ffn=4864, theta=1000000.0,
                         eps=1e-6, ctx=32768, bias=True, qk_norm=False),
    "qwen3-0.6b": dict(model_type="qwen3", arch="Qwen3ForCausalLM", vocab=151936, hidden=1024,
                       layers=28, heads=16, kv=8, head_dim=128, ffn=3072, theta=1000000.0,
                       eps=1e-6, ctx=40960, bias=False, qk_norm=True),
    "qwen3-0.6b-llama": dict(model_type="llama", arch="LlamaForCausalLM", vocab=151936,
                             hidden=1024, layers=28, heads=16, kv=8, head_dim=128, ffn=3072,
                             theta=1000000.0, eps=1e-6, ctx=40960, bias=False, qk_norm=False),
    "llama3.2-1b": dict(model_type="llama", arch="LlamaForCausalLM", vocab=128256, hidden=2048,
                        layers=16, heads=32, kv=8, head_dim=64, ffn=8192, theta=500000.0,
                        eps=1e-5, ctx=131072, bias=False, qk_norm=False,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
}

SHARD_BYTES = 2 << 30


def tensors(p):
    c, d, f = p["hidden"], p["head_dim"], p["ffn"]
    yield "model.embed_tokens.weight", (p["vocab"], c)
    for i in range(p["layers"]):
        b = f"model.layers.{i}."
        yield b + "input_layernorm.weight", (c,)
        yield b + "self_attn.q_proj.weight", (p["heads"] * d, c)
        yield b + "self_attn.k_proj.weight", (p["kv"] * d, c)
        yield b + "self_attn.v_proj.weight", (p["kv"] * d, c)
        if p["bias"]:
            yield b + "self_attn.q_proj.bias", (p["heads"] * d,)
            yield b + "self_attn.k_proj.bias", (p["kv"] * d,)
            yield b + "self_attn.v_proj.bias", (p["kv"] * d,)
        if p["qk_norm"]:
            yield b + "self_attn.q_norm.weight", (d,)
            yield b + "self_attn.k_norm.weight", (d,)
        yield b + "self_attn.o_proj.weight", (c, p["heads"] * d)
        yield b + "post_attention_layernorm.weight", (c,)
        yield b + "mlp.gate_proj.weight", (f, c)
        yield b + "mlp.up_proj.weight", (f, c)
        yield b + "mlp.down_proj.weight", (c, f)
    yield "model.norm.weight", (c,)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--gpt2-tokenizer", help="copy GPT-2's tokenizer files from this directory")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    os.makedirs(a.out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shards, current, size, weight_map = [], {}, 0, {}
    for name, shape in tensors(p):
        if len(shape) == 1 and name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=dtype)
        else:
            t = (torch.randn(shape, generator=g) * 0.02).to(dtype)
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    total = 0
    for i, s in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(s, os.path.join(a.out, fname), metadata={"format": "pt"})
        for n, t in s.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    cfg = {
        "architectures": [p["arch"]], "model_type": p["model_type"],
        "vocab_size": p["vocab"], "hidden_size": p["hidden"], "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"], "num_key_value_heads": p["kv"],
        "head_dim": p["head_dim"], "intermediate_size": p["ffn"], "rope_theta": p["theta"],
        "rope_scaling": p.get("rope_scaling"), "rms_norm_eps": p["eps"],
        "max_position_embeddings": p["ctx"], "tie_word_embeddings": True, "hidden_act": "silu",
        "attention_bias": p["bias"] and p["model_type"] != "qwen2", "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    if a.gpt2_tokenizer:
        # GPT-2's <|endoftext|> ends a text; no chat template.
        cfg["bos_token_id"] = cfg["eos_token_id"] = 50256
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if a.gpt2_tokenizer:
        import shutil
        for name in ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"]:
            shutil.copy(os.path.join(a.gpt2_tokenizer, name), os.path.join(a.out, name))
        print(f"{a.out}: {a.preset}, {total / 1e9:.2f} GB in {len(shards)} shard(s), GPT-2 tokenizer")
        return
    import sentencepiece as spm
    data = os.path.join(os.environ.get("EMBER_DATA", "../shared/data"), "the-verdict.txt")
    spm.SentencePieceTrainer.train(input=data, model_prefix=os.path.join(a.out, "tokenizer"),
                                   vocab_size=1000, model_type="bpe", byte_fallback=True,
                                   minloglevel=2)
    os.remove(os.path.join(a.out, "tokenizer.vocab"))
    print(f"{a.out}: {a.preset}, {total / 1e9:.2f} GB in {len(shards)} shard(s)")


if __name__ == "__main__":
    main()
