"""Gives a Hugging Face model directory a tokenizer.json of a real model's size, for measuring
memory and encode speed at today's vocabularies (no model's own tokenizer can be downloaded here):

    python3 benches/peers/make_large_tokenizer.py llama3 DIR    # 128,000 + 256 added, 268,243 merges
    python3 benches/peers/make_large_tokenizer.py qwen2 DIR     # 151,643 + 22 added, 151,387 merges

(Llama 3 itself has 280,147 merges; the splits this generator finds stop at 268,243.)

GPT-2's 50,000 real merges (EMBER_DATA/encoder.json and vocab.bpe) come first, then tokens made by
extending a random token by a character that follows its last character in one of GPT-2's
two-character tokens (at most 16 bytes; seeded, so the file is the same every run), each with its
merge, then (Llama 3) other splits of tokens into two tokens as further merges, up to the counts
above. Normalizer, pre-tokenizer, post-processor and decoder
are those of formats/tests/fixtures/hf_tokenizers/{llama3,qwen2}.json (Llama 3's and Qwen2's own).
The result loads in `tokenizers` (checked) and in emberlm. Writes DIR/tokenizer.json only.
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer

SIZES = {
    "llama3": dict(ordinary=128000, merges=280147,
                   added=["<|begin_of_text|>", "<|end_of_text|>"]
                   + [f"<|reserved_special_token_{k}|>" for k in range(253)] + ["<|eot_id|>"]),
    "qwen2": dict(ordinary=151643, merges=151387,
                  added=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
                  + [f"<|extra_{k}|>" for k in range(19)]),
}


def main():
    kind, out = sys.argv[1], sys.argv[2]
    size = SIZES[kind]
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "../../formats/tests/fixtures/hf_tokenizers", kind + ".json")
    doc = json.load(open(fixture, encoding="utf-8"))
    data = os.environ.get("EMBER_DATA", "../shared/data")
    encoder = json.load(open(os.path.join(data, "encoder.json"), encoding="utf-8"))
    gpt2_merges = [tuple(l.split()) for l in open(os.path.join(data, "vocab.bpe"), encoding="utf-8")
                   .read().split("\n")[1:] if l.strip()]
    tokens = [t for t, _ in sorted(encoder.items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = list(gpt2_merges)
    rng = random.Random(0)
    # Two-character tokens by their first character: a new token is a token followed by a
    # character that often follows its last one, so its prefix and its last two characters are
    # tokens too and it splits in several ways (as real vocabularies' tokens do).
    pairs = {}
    for t in tokens:
        if len(t) == 2:
            pairs.setdefault(t[0], []).append(t[1])
    while len(tokens) < size["ordinary"]:
        # Half the time a token made here (its own prefixes are tokens).
        lo = 50256 if rng.random() < 0.5 and len(tokens) > 50256 else 0
        a = tokens[rng.randrange(lo, len(tokens))]
        follow = pairs.get(a[-1])
        if not follow:
            continue
        b = rng.choice(follow)
        s = a + b
        if len(s) > 16 or s in vocab:
            continue
        vocab[s] = len(tokens)
        tokens.append(s)
        merges.append((a, b))
    seen = set(merges)
    for t in tokens:
        if len(merges) >= size["merges"]:
            break
        for k in range(1, len(t)):
            p = (t[:k], t[k:])
            if p[0] in vocab and p[1] in vocab and p not in seen:
                seen.add(p)
                merges.append(p)
    merges = merges[:size["merges"]]
    first = len(tokens)
    doc["model"]["vocab"] = vocab
    doc["model"]["merges"] = [list(m) for m in merges]
    doc["added_tokens"] = [dict(id=first + k, content=c, single_word=False, lstrip=False,
                                rstrip=False, normalized=False, special=True)
                           for k, c in enumerate(size["added"])]
    if kind == "llama3":
        bos = doc["post_processor"]["special_tokens"]["<|begin_of_text|>"]
        bos["ids"] = [first]
    path = os.path.join(out, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    tok = Tokenizer.from_file(path)
    assert tok.get_vocab_size() == first + len(size["added"]), tok.get_vocab_size()
    print(f"{path}: {kind}, {tok.get_vocab_size()} ids, {len(merges)} merges")


if __name__ == "__main__":
    main()
