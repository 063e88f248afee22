#!/usr/bin/env python3
"""Runs every shell command of README.md, as written, in order, and fails on the first error.

The commands come from the README's ```sh blocks (a line ending in a backslash continues on the
next). They run in one bash session (so `T=target/release` carries over), in a scratch directory
whose crate folders and `target/` are links to this checkout's (so `cargo build --release` reuses
the build, and `runs/`, `*.ember` land in the scratch directory, not in the checkout).

A few commands cannot run as written on a CI machine in reasonable time or without a person at the
keyboard. Each is rewritten by one rule of REWRITES below, and README.md § CI lists them. A rule
that matches no README line fails the run: the README and this script cannot drift apart silently.

Usage: python3 .ci/readme.py [--list] [--from N]
  --list    prints the rewritten commands without running them
  --from N  (while editing the README) skips the commands before README line N, except variable
            assignments such as `T=target/release`
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, pattern, replacement). Patterns are regular expressions applied to each logical line.
REWRITES = [
    # `.ci/run` has just run the test command; running it twice would double CI's longest step.
    ("tests already run", r"^cargo test --workspace$", ":  # cargo test --workspace: run by .ci/run"),
    # The book's chapter 5 run is 10 epochs of the 124M model: 1 epoch proves the command.
    ("chapter 5 run: 1 epoch", r"(pretrain --data \$EMBER_DATA/the-verdict\.txt .*)--epochs 10", r"\1--epochs 1"),
    # No GPT-2 weights can be downloaded here: a tiny GPT-2 with OpenAI's vocabulary, pretrained
    # for a few steps and written in Hugging Face's layout by export-safetensors, stands in.
    ("GPT-2 directory", r"path/to/gpt2", "$README_GPT2_DIR"),
    # Nor Qwen3: the tiny Qwen3 that transformers made for the parity tests stands in.
    ("Qwen3 directory", r"path/to/Qwen3-0\.6B", "tests/fixtures/families/qwen3"),
    # A Llama 3 tokenizer.json: the small one the formats tests trained with `tokenizers`.
    ("Llama 3 tokenizer", r"path/to/Llama-3\.2-1B/tokenizer\.json", "formats/tests/fixtures/hf_tokenizers/llama3.json"),
    # A text in "my language": tinyshakespeare.
    ("tokenizer corpus", r"my-language\.txt", "$EMBER_DATA/tinyshakespeare.txt"),
    # Chat reads a person's lines from stdin: give it one question.
    ("chat input", r"^(\$T/ember chat .*)$", r"printf 'What is the capital of France?\\n' | \1"),
    # CI runs as root, which Open MPI refuses unless told.
    ("mpirun as root", r"^mpirun -np", "mpirun --allow-run-as-root --oversubscribe -np"),
    # A server runs until stopped: the README starts it in the background; wait until it answers
    # before the next command speaks to it (the README's `kill $!` then stops it).
    ("serve in the background", r"^(\$T/ember serve .*) &$",
     r"\1 & for i in $(seq 150); do curl -sf http://127.0.0.1:8080/health > /dev/null && break; sleep 0.2; done"),
    # The kernel sets' A/B runs 18 benchmarks: CI runs one pair of one case (and the script
    # skips, saying so, a set the CI host cannot run).
    ("kernels A/B: one pair", r"^(python3 benches/peers/kernels_ab\.py) --pairs 3", r"\1 --pairs 1 --dtypes int8 --threads 1"),
    # Criterion benchmarks run for minutes each: CI compiles them.
    ("benches compiled", r"^(cargo bench -p emberlm-benches --bench \S+)", r"\1 --no-run"),
]


# Runs before the README's commands, in the scratch directory (after `cargo build --release`).
PREPARE = """
cargo build --release -q -p emberlm-trainer --bin ember-train
echo "---- (prepare) a tiny GPT-2 in Hugging Face's layout for path/to/gpt2"
target/release/ember-train pretrain --data "$EMBER_DATA/the-verdict.txt" --layers 1 --heads 2 \\
    --dim 32 --context 64 --batch 4 --steps 5 --out readme-prep/run > /dev/null
target/release/ember-train export-safetensors readme-prep/run --out readme-prep/gpt2
export README_GPT2_DIR="$PWD/readme-prep/gpt2"
"""


def logical_lines(text):
    """Yields (line number, command) for each command line of the ```sh blocks."""
    in_sh = False
    pending, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if in_sh and pending:
                raise SystemExit(f"README.md:{start}: a command ends its block with a backslash")
            in_sh = stripped == "```sh"
            continue
        if not in_sh:
            continue
        if not pending:
            start = n
            if not stripped or stripped.startswith("#"):
                continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        yield start, pending + stripped
        pending = ""


def main():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        commands = list(logical_lines(f.read()))
    if not commands:
        raise SystemExit("README.md has no ```sh commands")
    used = {name: 0 for name, _, _ in REWRITES}
    script = []
    for n, cmd in commands:
        for name, pattern, repl in REWRITES:
            new = re.sub(pattern, repl, cmd)
            if new != cmd:
                used[name] += 1
                cmd = new
        script.append((n, cmd))
    unused = [name for name, count in used.items() if count == 0]
    if unused:
        raise SystemExit(f"README drifted from .ci/readme.py: no README line matches the rules {unused}")
    if "--from" in sys.argv:
        first = int(sys.argv[sys.argv.index("--from") + 1])
        script = [(n, c) for n, c in script if n >= first or re.match(r"^[A-Za-z_]+=\S*$", c)]
    if "--list" in sys.argv:
        for n, cmd in script:
            print(f"README.md:{n}: {cmd}")
        return
    if not os.environ.get("EMBER_DATA"):
        raise SystemExit("EMBER_DATA is not set: the README's commands read the book's data from it")

    work = tempfile.mkdtemp(prefix="emberlm-readme.")
    try:
        for entry in ["Cargo.toml", "Cargo.lock", "formats", "trainer", "runtime", "tests", "benches",
                      "testkit", "fuzz", "target", "README.md"]:
            src = os.path.join(ROOT, entry)
            if os.path.exists(src):
                os.symlink(src, os.path.join(work, entry))
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        body = ["set -euo pipefail", PREPARE]
        for n, cmd in script:
            body.append(f"echo {shquote(f'---- README.md:{n}: {cmd}')}")
            body.append(cmd)
        path = os.path.join(work, "readme-commands.sh")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(body) + "\n")
        r = subprocess.run(["bash", path], cwd=work)
        if r.returncode != 0:
            raise SystemExit(f"a README command failed (exit {r.returncode}): see the last '----' line above")
        print(f"all {len(script)} README commands ran")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def shquote(s):
    return "'" + s.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    main()
