#!/usr/bin/env python3
"""The chapter 5 run of a Llama-style model in transformers, as `ember-train pretrain --arch llama`
trains it (issue 18: does ember's Llama plateau at the unigram loss where transformers does not?).

    python3 benches/peers/llama_plateau.py DIR --layers 4 --dim 256 --heads 4 --kv-heads 2 \
        --context 256 --batch 2 --steps 40 --lr 4e-4 --weight-decay 0.1

Makes DIR/model: a random `LlamaForCausalLM` (transformers' own initialisation, N(0, 0.02),
seeded) in f32 safetensors, with the shape ember gives `--arch llama` (SmolLM2's details: tied
head, RoPE theta 1e5, RMSNorm eps 1e-5, SwiGLU of round64(8C/3) units unless --ffn-dim).
DIR/batches.bin: the token windows of each step, u32 little-endian, (steps, B, T + 1), in the
order `ember-train pretrain` draws them: the-verdict split 90/10 by characters, GPT-2 BPE,
windows of T with stride T, a Fisher-Yates shuffle per epoch seeded as ember seeds it
(data.rs `epoch_order` with `mix64(seed ^ 1)`), the incomplete last batch dropped. Then trains
the model on those batches with torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, weight decay on
matrices only, constant lr, no clipping: ember's defaults for the families) and writes the mean
cross-entropy of each step's batch, before its update, to DIR/torch_losses.txt.

`EMBER_PEER_DIR=DIR cargo test --release -p emberlm-trainer --test family_peer_train -- --ignored`
then trains ember's family model from the same weights on the same batches and compares.

Options: --untied (separate head), --emb-std S (embedding drawn N(0, S^2); 1 is the fix README
"Pretraining a modern family from scratch" describes), --init-out-std-scale (o_proj and
down_proj drawn with std 0.02/sqrt(2·layers), as GPT-2's paper), --no-train (write model and
batches only). Issue 18's runs: the defaults (4 x 256, 45 steps), and `--layers 12 --dim 768
--heads 12 --kv-heads 6 --steps 40` with `--untied`, `--init-out-std-scale` or
`--untied --emb-std 1`.
Needs torch, transformers, safetensors; EMBER_DATA for the-verdict.txt, encoder.json, vocab.bpe.
"""
import argparse
import json
import os
import struct

import tokenizers
import tokenizers.models
import tokenizers.pre_tokenizers
import torch
import transformers

MASK = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class SplitMix:
    def __init__(self, s):
        self.s = s

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        return mix64(self.s)

    def below(self, n):
        zone = MASK - MASK % n
        while True:
            r = self.next()
            if r < zone:
                return r % n


def epoch_order(n, seed, epoch):
    order = list(range(n))
    rng = SplitMix(mix64(seed ^ 0x5348_5546_464C_4521) ^ mix64((epoch + 1) & MASK))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def batches(data, t, stride, b, steps, seed):
    text = open(os.path.join(data, "the-verdict.txt"), encoding="utf-8").read()
    # GPT-2's byte-level BPE from the book's files (the `tokenizers` library; transformers'
    # GPT2Tokenizer classes do not load these two files directly).
    bpe = tokenizers.models.BPE.from_file(
        os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe"))
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    train = text[: int(0.9 * len(text))]
    ids = tok.encode(train).ids
    starts = list(range(0, len(ids) - t, stride))
    per_epoch = len(starts) // b
    out, epoch = [], 0
    shuffle_seed = mix64(seed ^ 1)
    while len(out) < steps:
        order = epoch_order(len(starts), shuffle_seed, epoch)
        for k in range(per_epoch):
            if len(out) == steps:
                break
            out.append([ids[starts[w] : starts[w] + t + 1] for w in order[k * b : (k + 1) * b]])
        epoch += 1
    return out, tok.get_vocab_size()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn-dim", type=int)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--init-out-std-scale", action="store_true")
    ap.add_argument("--emb-std", type=float, help="draw the embedding with this std (default 0.02)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = os.environ["EMBER_DATA"]
    os.makedirs(os.path.join(a.dir, "model"), exist_ok=True)

    bs, vocab = batches(data, a.context, a.context, a.batch, a.steps, a.seed)
    with open(os.path.join(a.dir, "batches.bin"), "wb") as f:
        meta = dict(steps=a.steps, batch=a.batch, context=a.context, lr=a.lr,
                    weight_decay=a.weight_decay)
        for step in bs:
            for row in step:
                f.write(struct.pack(f"<{len(row)}I", *row))
    json.dump(meta, open(os.path.join(a.dir, "batches.json"), "w"))

    ffn = a.ffn_dim or ((8 * a.dim + 2) // 3 + 63) // 64 * 64
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=a.dim, intermediate_size=ffn, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.dim // a.heads,
        max_position_embeddings=max(1024, a.context), rope_theta=1e5,
        tie_word_embeddings=not a.untied, rms_norm_eps=1e-5, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )
    torch.manual_seed(a.seed)
    model = transformers.LlamaForCausalLM(cfg).float()
    if a.init_out_std_scale:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                    p.normal_(0.0, 0.02 / (2 * a.layers) ** 0.5)
    if a.emb_std is not None:
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0.0, a.emb_std)
    model.save_pretrained(os.path.join(a.dir, "model"), safe_serialization=True)
    if a.no_train:
        return
    model = transformers.LlamaForCausalLM.from_pretrained(
        os.path.join(a.dir, "model"), attn_implementation="eager", dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=a.weight_decay), dict(params=rest, weight_decay=0.0)],
        lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for i, step in enumerate(bs):
        x = torch.tensor([r[:-1] for r in step])
        y = torch.tensor([r[1:] for r in step])
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        print(f"step {i + 1} loss {float(loss):.4f}", flush=True)
    with open(os.path.join(a.dir, "torch_losses.txt"), "w") as f:
        f.write("".join(f"{v:.6f}\n" for v in losses))


if __name__ == "__main__":
    main()
