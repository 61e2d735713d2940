#!/usr/bin/env python3
"""Load generator for OpenAI-compatible /v1/completions servers (llamoe-serve, llama-server).

    loadgen.py --port P --concurrency C --requests N --time-limit S --prompt-tokens L
               --max-tokens T [--seed K] [--label NAME] [--out FILE.jsonl]

C client threads send streamed requests back to back until N requests have been sent or S
seconds have passed (requests in flight then finish). Every request has its own prompt of L
token ids (pseudo-random, distinct from the first token on, so no server can reuse a cached
prefix), greedy sampling, ignore_eos and max_tokens T, so every request generates exactly T
tokens. Loopback only. Prints one JSON line (and appends it to --out): requests/s, output
tokens/s, time to first token and inter-token latency (p50, p99). Standard library only.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(port, body, timeout):
    """Returns (ok, t_send, [chunk arrival times], completion tokens or None, error)."""
    t_send = time.monotonic()
    times, usage, err = [], None, None
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return False, t_send, [], None, f"HTTP {r.status}: {r.read()[:200]!r}"
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                break
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"].get("completion_tokens")
            if ev.get("choices"):
                times.append(time.monotonic())
        return True, t_send, times, usage, None
    except Exception as e:   # counted as an error, the run goes on
        err = repr(e)
        return False, t_send, times, usage, err
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--time-limit", type=float, default=120)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--vocab-low", type=int, default=1000, help="prompt ids are drawn from [low, high)")
    ap.add_argument("--vocab-high", type=int, default=100000)
    ap.add_argument("--bos", type=int, default=128000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    bodies = []
    for i in range(a.requests):
        ids = [a.bos] + [rng.randrange(a.vocab_low, a.vocab_high) for _ in range(a.prompt_tokens - 1)]
        bodies.append(json.dumps({"prompt": ids, "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True,
                                  "stream": True, "stream_options": {"include_usage": True},
                                  "cache_prompt": False}).encode())
    lock = threading.Lock()
    state = {"next": 0}
    results = []
    t0 = time.monotonic()
    deadline = t0 + a.time_limit

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= len(bodies) or time.monotonic() >= deadline:
                    return
                state["next"] += 1
            r = one_request(a.port, bodies[i], timeout=max(60.0, a.time_limit * 4))
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0

    good = [r for r in results if r[0] and r[2]]
    ttft = [r[2][0] - r[1] for r in good]
    itl = [b - a_ for r in good for a_, b in zip(r[2], r[2][1:])]
    # Tokens: the server's usage count; without one, the chunks (one per token on both servers).
    tokens = sum(r[3] if r[3] is not None else len(r[2]) for r in good)
    out = {
        "label": a.label, "concurrency": a.concurrency, "requests": len(good), "errors": len(results) - len(good),
        "first_error": next((r[4] for r in results if not r[0]), None),
        "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens, "wall_s": round(wall, 3),
        "requests_per_s": round(len(good) / wall, 4), "output_tokens_per_s": round(tokens / wall, 3),
        "output_tokens": tokens,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "itl_p50_s": percentile(itl, 50), "itl_p99_s": percentile(itl, 99),
    }
    line = json.dumps(out)
    print(line, flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
