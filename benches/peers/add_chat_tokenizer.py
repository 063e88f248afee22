"""Gives a Hugging Face model directory a real tokenizer and a chat template, for measuring
instruction tuning at a published model's shapes (the random directories of make_random_hf.py
have none, and no model's own tokenizer can be downloaded here):

    python3 benches/peers/add_chat_tokenizer.py DIR

Writes DIR/tokenizer.json (GPT-2's byte-level BPE from EMBER_DATA/encoder.json and vocab.bpe, ids
0..50256, plus <|im_start|> = 50257 and <|im_end|> = 50258), DIR/tokenizer_config.json (Qwen's
ChatML template without tools, eos <|im_end|>) and DIR/generation_config.json (eos <|im_end|>).
The model's vocabulary must hold at least 50,259 ids (Qwen's 151,936 does). Needs `tokenizers`.
"""
import json
import os
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def main():
    out = sys.argv[1]
    data = os.environ.get("EMBER_DATA", "../shared/data")
    vocab = json.load(open(os.path.join(data, "encoder.json")))
    merges = [tuple(l.split()) for l in open(os.path.join(data, "vocab.bpe"), encoding="utf-8")
              .read().split("\n")[1:] if l.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True),
                            AddedToken("<|im_end|>", special=True)])
    assert tok.token_to_id("<|im_end|>") == 50258, tok.token_to_id("<|im_end|>")
    tok.save(os.path.join(out, "tokenizer.json"))
    json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None,
               "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"},
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    json.dump({"eos_token_id": 50258}, open(os.path.join(out, "generation_config.json"), "w"))


if __name__ == "__main__":
    main()
