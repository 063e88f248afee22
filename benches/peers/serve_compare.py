#!/usr/bin/env python3
"""Aggregate decode tokens/s and time to first token of `ember serve` and llama.cpp's
`llama-server` at 1, 2, 4, 8 and 16 concurrent streaming clients, in alternating runs.

    python3 benches/peers/serve_compare.py --ember target/release/ember --model M.ember \
        --llama-server /path/to/llama-server --gguf M.gguf [--clients 1,2,4,8,16] \
        [--pairs 3] [--threads 2] [--max-tokens 64] [--context 256]
    python3 benches/peers/serve_compare.py --ember NEW --model M.ember --ember-b OLD ...

For each client count N and each pair, each server is started with N slots (`ember serve MODEL
--parallel N`, `llama-server -m GGUF --parallel N -c N·context`; `-c` is split among llama's
slots), warmed up with one request, then N clients send one streaming `/v1/completions`
request each at the same moment: the same N prompts for both servers, greedy, the same
`max_tokens` (`ignore_eos` for llama-server, which honours it; ember counts the tokens it
actually sent). The two servers alternate (ember, llama, ember, llama, ...), so a noisy
neighbour hurts both alike. Per stream: the time to the first token (from sending the request)
and its decode rate, (tokens − 1) / (last token − first token); the aggregate decode rate of a
run is the sum of its streams' rates (the streams start together and run side by side); the
"wall" rate is all streams' tokens after their first over the window from the earliest first
token to the latest last one (robust to streams whose tokens arrive in bursts). The table gives,
per N, the median over pairs of each run's aggregate rate, median time to first token and wall
rate, and the medians of the per-pair ratios ember / llama (of the aggregate rates). Standard library only;
loopback only. `--ember-b OLD` runs a second `ember` binary in llama-server's place (same model,
same flags as the first), to compare two builds (before / after a change) the same way.

`--ember-logprobs` asks ember for `logprobs: 1`, so that every token arrives as its own chunk.
Without it, a token whose text is an incomplete UTF-8 character (random weights with a large
byte-level vocabulary, such as the Qwen3 stand-in, produce many) is held back until the
character is whole, so the first chunk can come several tokens late and a stream's rate is
taken over too short a window. With it, ember does more work than llama-server (a log-softmax
over the vocabulary per token) and every token is timed.

llama-server's threads spin while they wait: its figures mean something only on a quiet host
(a smoke run at load ~13 gave it 5 tokens/s, against ~200 at load 1).
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

# Short English prompts; both servers tokenize them with GPT-2's BPE.
PROMPTS = [
    "The history of the city begins with a small village on the river",
    "In the morning the market opens and the first traders arrive with",
    "A recipe for bread needs flour, water, salt and a little time to",
    "The committee met on Tuesday to discuss the budget for the new",
    "When the storm reached the coast, the fishermen pulled their boats",
    "Scientists measured the temperature of the lake every hour during",
    "The old library kept its maps in a room at the top of the tower",
    "After the final whistle the players walked slowly back to the",
    "Her first letter from the mountains described the snow and the",
    "The engine of the train was repaired in a workshop near the station",
    "On the second day of the festival the musicians played songs from",
    "The report explains how the company plans to reduce its costs by",
    "Children in the school learn to read with books that tell stories",
    "The bridge was built in stone and it still carries the road over",
    "A small garden behind the house grew tomatoes, beans and herbs for",
    "The museum opened a new exhibition about ships and the sailors who",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("server not ready in time")


# Set by --ember-logprobs: ember's streams carry a top-1 logprob, one chunk per token.
EMBER_LOGPROBS = False


def stream(port, prompt, max_tokens, llama, out):
    """One streaming completion; appends (ttft_s, tokens, decode_s, first_at, last_at) to out."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if llama:
        body["ignore_eos"] = True
    else:
        body["stream_options"] = {"include_usage": True}
        if EMBER_LOGPROBS:
            body["logprobs"] = 1
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        out.append(("error", r.status, r.read()[:200]))
        return
    first = last = None
    chunks = 0
    usage = None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        j = json.loads(data)
        if j.get("usage") and not j.get("choices"):
            usage = j["usage"].get("completion_tokens")
            continue
        if j.get("choices"):
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            chunks += 1
            if j.get("usage"):
                usage = j["usage"].get("completion_tokens", usage)
    tokens = usage if usage else chunks
    out.append((first - t0, tokens, last - first, first, last))


def run_clients(port, n, max_tokens, llama):
    out = []
    threads = [threading.Thread(target=stream, args=(port, PROMPTS[i % len(PROMPTS)],
                                                     max_tokens, llama, out))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in out if o[0] == "error"]
    if errors:
        sys.exit(f"request failed: {errors[0]}")
    ttft = statistics.median(o[0] for o in out)
    agg = sum((o[1] - 1) / o[2] for o in out if o[1] > 1 and o[2] > 0)
    # The same tokens over the wall-clock window from the first stream's first token to the
    # last stream's last: not inflated by a stream whose tokens arrive in bursts (a server
    # holding back a partial UTF-8 character, say), which the per-stream sum counts as fast.
    span = max(o[4] for o in out) - min(o[3] for o in out)
    wall = sum(o[1] - 1 for o in out) / span if span > 0 else 0.0
    tokens = sum(o[1] for o in out)
    return agg, ttft, tokens, wall


def no_mmap(server):
    """llama-server's flag to read the weights into memory instead of mapping them: `--no-mmap`
    until 2025, `--load-mode none` in newer builds (which reject `--no-mmap`)."""
    help_text = subprocess.run([server, "--help"], capture_output=True, text=True).stdout
    return ["--load-mode", "none"] if "--load-mode" in help_text else ["--no-mmap"]


def start(a, which, n, port):
    if which == "ember" or a.ember_b:
        exe = a.ember if which == "ember" else a.ember_b
        cmd = [exe, "serve", a.model, "--port", str(port), "--parallel", str(n),
               "--context", str(a.context), "--threads", str(a.threads)]
        env = dict(os.environ)
    else:
        cmd = [a.llama_server, "-m", a.gguf, "--port", str(port), "--parallel", str(n),
               "-c", str(n * a.context), "-t", str(a.threads), "-tb", str(a.threads),
               "--cont-batching"] + no_mmap(a.llama_server)
        # Weights in 2 MiB pages, llama.cpp's best setting on this host (MACHINE.md).
        env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ember", default="target/release/ember")
    p.add_argument("--model", required=True, help="the .ember model")
    p.add_argument("--llama-server")
    p.add_argument("--gguf", help="the same weights as GGUF")
    p.add_argument("--ember-b", help="a second ember binary in llama-server's place")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--context", type=int, default=256, help="tokens per slot")
    p.add_argument("--ember-logprobs", action="store_true",
                   help="ask ember for logprobs: every token its own chunk (see above)")
    a = p.parse_args()
    global EMBER_LOGPROBS
    EMBER_LOGPROBS = a.ember_logprobs
    if not a.ember_b and not (a.llama_server and a.gguf):
        p.error("give --llama-server and --gguf, or --ember-b")
    other = "ember-b" if a.ember_b else "llama"
    rows = []
    for n in [int(x) for x in a.clients.split(",")]:
        runs = {"ember": [], "llama": []}
        for i in range(a.pairs):
            for which in ("ember", "llama"):
                port = free_port()
                proc = start(a, which, n, port)
                try:
                    wait_ready(port, proc)
                    llama = which == "llama" and not a.ember_b
                    run_clients(port, 1, 8, llama)  # warm-up
                    agg, ttft, tokens, wall = run_clients(port, n, a.max_tokens, llama)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                load = os.getloadavg()[0]
                runs[which].append((agg, ttft, wall))
                name = which if which == "ember" else other
                print(f"N={n:2} pair {i + 1} {name:7} aggregate {agg:8.1f} tok/s  wall {wall:8.1f} "
                      f"tok/s  median TTFT {ttft * 1000:7.1f} ms  tokens {tokens}  load {load:.2f}",
                      flush=True)
        med = {k: tuple(statistics.median(r[j] for r in v) for j in range(3))
               for k, v in runs.items()}
        ratio = statistics.median(e[0] / l[0] for e, l in zip(runs["ember"], runs["llama"]))
        rows.append((n, med, ratio))
    print()
    print(f"| streams | ember tok/s | {other} tok/s | ember / {other} | ember TTFT ms | "
          f"{other} TTFT ms | ember wall tok/s | {other} wall tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, med, ratio in rows:
        print(f"| {n} | {med['ember'][0]:.1f} | {med['llama'][0]:.1f} | {ratio:.2f}x | "
              f"{med['ember'][1] * 1000:.0f} | {med['llama'][1] * 1000:.0f} | "
              f"{med['ember'][2]:.1f} | {med['llama'][2]:.1f} |")


if __name__ == "__main__":
    main()
