#!/usr/bin/env python3
"""Training speed of PyTorch + transformers at the shapes `ember-train` trains, for side-by-side
tables: tokens/s of full training (forward, backward, AdamW) or of LoRA (adapters on every linear
layer of a frozen model, written here by hand as the book's appendix E does; PEFT is not needed),
and the peak resident memory.

    python3 benches/peers/torch_train.py --shape llama-124m --mode full --threads 1
    python3 benches/peers/torch_train.py --shape qwen3-0.6b --mode lora --rank 16 --threads 2

Random weights and random tokens (speed does not depend on them); the first step is a warm-up
and is not timed. Prints one JSON line: tokens_per_s, step_seconds (each timed step),
peak_rss_bytes, parameters, trainable_params.
"""
import argparse, json, resource, sys, time

import torch
import transformers

SHAPES = {
    # The book's chapter-5 Llama-style model (`ember-train pretrain --arch llama --layers 12
    # --heads 12 --dim 768`): 6 kv heads, SwiGLU 2048, tied head, RoPE theta 1e5, GPT-2's vocabulary.
    "llama-124m": dict(cls="LlamaForCausalLM", cfg=dict(
        vocab_size=50257, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=6, max_position_embeddings=1024,
        rope_theta=1e5, tie_word_embeddings=True, rms_norm_eps=1e-5)),
    # Qwen3-0.6B's configuration.
    "qwen3-0.6b": dict(cls="Qwen3ForCausalLM", cfg=dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)),
}


class LoRALinear(torch.nn.Module):
    """W x + (alpha / r) B A x with W frozen, A ~ U(±1/sqrt(in)), B = 0."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = torch.nn.Parameter(torch.empty(rank, base.in_features).uniform_(
            -1 / base.in_features ** 0.5, 1 / base.in_features ** 0.5))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * ((x @ self.A.t()) @ self.B.t())


def add_lora(model, rank, alpha):
    for p in model.parameters():
        p.requires_grad_(False)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for module in list(model.modules()):
        for name in names:
            child = getattr(module, name, None)
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--mode", choices=["full", "lora"], default="full")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = SHAPES[a.shape]
    cfg = getattr(transformers, s["cls"].replace("ForCausalLM", "Config"))(**s["cfg"])
    cfg._attn_implementation = "sdpa"
    model = getattr(transformers, s["cls"])(cfg)
    model.train()
    if a.mode == "lora":
        add_lora(model, a.rank, a.alpha)
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=4e-4, weight_decay=0.1)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.context))
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:
            times.append(time.perf_counter() - t0)
    tokens = a.batch * a.context
    print(json.dumps({
        "shape": a.shape, "mode": a.mode, "threads": a.threads, "batch": a.batch,
        "context": a.context, "torch": torch.__version__, "transformers": transformers.__version__,
        "tokens_per_s": tokens * len(times) / sum(times),
        "step_seconds": times,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "parameters": params,
        "trainable_params": sum(p.numel() for p in trainable),
    }))


if __name__ == "__main__":
    sys.exit(main())
