#!/usr/bin/env python3
"""The client of tests/test_serve.sh (python3's standard library only).

    serve_client.py refs EP MODEL OUT          llamoe-ep's tokens for the cases below
    serve_client.py chat-refs EP MODEL OUT     the same for the chat cases (--moe dense)
    serve_client.py CHECK PORT [ARGS]          one group of checks against a running llamoe-serve

Each check prints "ok ..." or "FAIL ..."; the exit status is 1 when any failed. Every network
call has a timeout, so a hung server fails the check instead of hanging the test.
"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

SEED = 1234          # the server's --seed: the router seed, as llamoe-ep's --seed
TIMEOUT = 60
failures = 0


def ok(msg):
    print("ok   " + msg, flush=True)


def bad(msg):
    global failures
    failures += 1
    print("FAIL " + msg, flush=True)


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        bad(msg + (": " + detail if detail else ""))
    return cond


# ---------------------------------------------------------------------------- HTTP
def request(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    """Returns (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def post(port, path, obj, timeout=TIMEOUT):
    status, _, data = request(port, "POST", path, obj, timeout=timeout)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, {"unparsed": data[:200].decode(errors="replace")}


def stream(port, path, obj, on_event=None, timeout=TIMEOUT):
    """A streamed request: returns (status, [(arrival time, event dict)], saw [DONE], raw bytes).
    on_event(i, event) may return False to stop reading (the socket is then closed)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    events, done, raw = [], False, b""
    try:
        c.request("POST", path, body=json.dumps(dict(obj, stream=True)).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, [], False, r.read()
        if not r.getheader("Content-Type", "").startswith("text/event-stream"):
            return -1, [], False, b"Content-Type " + r.getheader("Content-Type", "").encode()
        for line in r:
            raw += line
            line = line.strip()
            if not line:
                continue
            if not line.startswith(b"data: "):
                return -2, events, False, raw
            if line == b"data: [DONE]":
                done = True
                break
            ev = json.loads(line[6:])
            events.append((time.monotonic(), ev))
            if on_event and on_event(len(events) - 1, ev) is False:
                break
        return 200, events, done, raw
    finally:
        c.close()


def metrics(port):
    _, _, data = request(port, "GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def is_error(status, body, want):
    e = body.get("error") if isinstance(body, dict) else None
    return status == want and isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"] \
        and isinstance(e.get("type"), str)


# ---------------------------------------------------------------------------- cases
# Eight requests for the bundled model: greedy and sampled, text and token-id prompts. Each
# must give what llamoe-ep gives for its prompt alone with the same seed.
PROMPTS = ["Once upon a time", "The cat sat", "Lily and Ben went to the park", [1, 403, 407, 261, 378],
           "One day, a little dog", "Tom had a red ball", "The sun was hot", "Mia wanted to fly"]
SAMPLING = [(0.0, 1.0), (0.8, 0.9), (0.0, 1.0), (1.0, 1.0), (0.0, 1.0), (0.6, 0.5), (0.0, 1.0), (1.3, 0.95)]
MAX_TOKENS = 40


def ep_run(ep, model, args):
    cmd = ["mpirun", "--oversubscribe", "-np", "1", ep, "-m", model, "--json", "-n", str(MAX_TOKENS),
           "--seed", str(SEED)] + args
    out = subprocess.run(cmd, capture_output=True, timeout=300, check=True).stdout
    return json.loads(out)


def make_refs(ep, model, out_path):
    refs = [None] * len(PROMPTS)
    # The greedy ones in one batch (their tokens do not depend on the batch: tests/test_ep.sh).
    greedy = [i for i, (t, _) in enumerate(SAMPLING) if t == 0]
    lines = "".join((p if isinstance(p, str) else ",".join(map(str, p))) + "\n" for p in (PROMPTS[i] for i in greedy))
    path = out_path + ".prompts"
    with open(path, "w") as f:
        f.write(lines)
    for i, r in zip(greedy, ep_run(ep, model, ["--prompts", path])["results"]):
        refs[i] = r["generated_ids"]
    # Sampled ones alone: the server samples every request as llamoe-ep's first sequence.
    for i, (t, p) in enumerate(SAMPLING):
        if t == 0:
            continue
        prompt = PROMPTS[i]
        src = ["-p", prompt] if isinstance(prompt, str) else ["--ids", ",".join(map(str, prompt))]
        refs[i] = ep_run(ep, model, src + ["--temp", str(t), "--top-p", str(p)])["generated_ids"]
    json.dump(refs, open(out_path, "w"))


CHAT = [[{"role": "user", "content": "Hello! Who are you?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]]


def make_chat_refs(ep, model, out_path):
    # llamoe-ep --chat wraps one user turn; the system-message case is checked for its prompt.
    r = ep_run(ep, model, ["--chat", "-p", CHAT[0][0]["content"], "--temp", "0.7", "--moe", "dense"])
    json.dump({"prompt_ids": r["prompt_ids"], "generated_ids": r["generated_ids"]}, open(out_path, "w"))


# ---------------------------------------------------------------------------- checks
def check_basics(port):
    s, _, b = request(port, "GET", "/health")
    check(s == 200 and json.loads(b).get("status") == "ok", "GET /health: 200 ok", f"{s} {b[:100]}")
    s, _, b = request(port, "GET", "/v1/models")
    models = json.loads(b) if s == 200 else {}
    check(s == 200 and models.get("object") == "list" and models["data"][0]["id"], "GET /v1/models lists the model",
          f"{s} {b[:200]}")
    s, _, b = request(port, "GET", "/metrics")
    check(s == 200 and b"llamoe_queue_depth" in b and b"llamoe_step_seconds_bucket" in b
          and b"llamoe_expert_load_imbalance" in b, "GET /metrics: Prometheus text with queue, steps and experts")
    return models["data"][0]["id"] if models else None


def check_errors(port, ctx):
    cases = [
        ("malformed JSON", "/v1/completions", '{"prompt": "x",', 400),
        ("trailing text after the JSON", "/v1/completions", '{"prompt": "x"} x', 400),
        ("empty body", "/v1/completions", "", 400),
        ("body not an object", "/v1/completions", [1, 2], 400),
        ("prompt of the wrong type", "/v1/completions", {"prompt": 5}, 400),
        ("max_tokens of the wrong type", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400),
        ("max_tokens 0", "/v1/completions", {"prompt": "x", "max_tokens": 0}, 400),
        ("temperature of the wrong type", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400),
        ("top_p 0", "/v1/completions", {"prompt": "x", "top_p": 0}, 400),
        ("stream of the wrong type", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400),
        ("stop of the wrong type", "/v1/completions", {"prompt": "x", "stop": [1]}, 400),
        ("negative seed", "/v1/completions", {"prompt": "x", "seed": -1}, 400),
        ("n = 2", "/v1/completions", {"prompt": "x", "n": 2}, 400),
        ("token id out of range", "/v1/completions", {"prompt": [1, 10 ** 9]}, 400),
        ("prompt longer than the context", "/v1/completions", {"prompt": [1] * (ctx + 1)}, 400),
        ("unknown model", "/v1/completions", {"prompt": "x", "model": "no-such-model"}, 404),
        ("messages of the wrong type", "/v1/chat/completions", {"messages": "hi"}, 400),
        ("message without content", "/v1/chat/completions", {"messages": [{"role": "user"}]}, 400),
        ("unknown role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ]
    for name, path, body, want in cases:
        s, _, b = request(port, "POST", path, body)
        try:
            body_json = json.loads(b)
        except ValueError:
            body_json = None
        check(is_error(s, body_json, want), f"{name}: {want} with an OpenAI-style error", f"{s} {b[:200]}")
    s, _, b = request(port, "POST", "/v1/completions", b'{"prompt": "\xff\xfe"}')
    check(s == 400, "invalid UTF-8 in the body: 400", f"{s} {b[:200]}")
    s, _, b = request(port, "GET", "/v1/no-such-route")
    check(is_error(s, json.loads(b), 404), "unknown route: 404", f"{s} {b[:200]}")
    s, _, b = request(port, "POST", "/v1/no-such-route", {"prompt": "x"})
    check(is_error(s, json.loads(b), 404), "POST to an unknown route: 404", f"{s} {b[:200]}")
    s, h, b = request(port, "GET", "/v1/completions")
    check(is_error(s, json.loads(b), 405) and h.get("allow") == "POST", "GET /v1/completions: 405 with Allow: POST",
          f"{s} {h} {b[:200]}")
    s, h, b = request(port, "DELETE", "/health")
    check(s == 405 and h.get("allow") == "GET", "DELETE /health: 405 with Allow: GET", f"{s} {h}")
    # A body over --max-body (1 MiB): read and refused.
    big = json.dumps({"prompt": "x" * (2 << 20)})
    s, _, b = request(port, "POST", "/v1/completions", big)
    check(is_error(s, json.loads(b), 413), "2 MiB body: 413", f"{s} {b[:200]}")
    # A huge one announced with Expect: 100-continue is refused before it is sent.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sk:
        sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            part = sk.recv(4096)
            if not part:
                break
            reply += part
        check(reply.startswith(b"HTTP/1.1 413"), "10 GB body with Expect: 100-continue: 413 before the body is sent",
              reply[:80].decode(errors="replace"))


def check_completion(port):
    req = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 99,
           "return_token_ids": True}
    s, whole = post(port, "/v1/completions", req)
    if not check(s == 200 and whole.get("object") == "text_completion", "completion: 200", f"{s} {whole}"):
        return
    c = whole["choices"][0]
    u = whole["usage"]
    check(u["completion_tokens"] == len(c["token_ids"]) and u["prompt_tokens"] == len(c["prompt_token_ids"]) == 5
          and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "completion: usage counts the tokens", str(u))
    s, events, done, raw = stream(port, "/v1/completions", dict(req, stream_options={"include_usage": True}))
    if not check(s == 200 and done, "streamed completion: 200, ends with [DONE]", f"{s} {raw[:200]}"):
        return
    token_events = [e for _, e in events if e["choices"]]
    text = "".join(e["choices"][0]["text"] for e in token_events)
    ids = [i for e in token_events for i in e["choices"][0]["token_ids"]]
    check(text == c["text"] and ids == c["token_ids"], "streamed completion: same text and tokens as unstreamed",
          f"{text!r} vs {c['text']!r}")
    check(len(token_events) == u["completion_tokens"] and all(len(e["choices"][0]["token_ids"]) == 1 for e in token_events),
          "streamed completion: one chunk per token")
    check(token_events[-1]["choices"][0]["finish_reason"] == c["finish_reason"]
          and all(e["choices"][0]["finish_reason"] is None for e in token_events[:-1]),
          "streamed completion: finish_reason on the last chunk only")
    check(events[-1][1]["usage"] == u and events[-1][1]["choices"] == [], "streamed completion: usage chunk at the end")
    try:
        raw.decode("utf-8")
        ok("streamed completion: the stream is valid UTF-8")
    except UnicodeDecodeError as e:
        bad(f"streamed completion: invalid UTF-8 in the stream: {e}")
    # A hot sampler: a long, unlikely text; streamed and whole must still agree.
    s, events, done, raw = stream(port, "/v1/completions", {"prompt": "Once", "max_tokens": 120, "temperature": 2.0,
                                                            "seed": 5, "return_token_ids": True})
    s2, whole = post(port, "/v1/completions", {"prompt": "Once", "max_tokens": 120, "temperature": 2.0, "seed": 5})
    text = "".join(e["choices"][0]["text"] for _, e in events)
    check(s == 200 and done and s2 == 200 and text == whole["choices"][0]["text"],
          "hot sampler: streamed chunks join to the unstreamed text", f"{text[:80]!r}")
    # Chat needs a Llama 3 tokenizer; the bundled model has a Llama 2 one.
    s, b = post(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    check(is_error(s, b, 400) and "chat" in b["error"]["message"], "chat on a tokenizer without Llama 3 chat tokens: 400",
          f"{s} {b}")


def check_stop(port):
    base = {"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}
    s, full = post(port, "/v1/completions", base)
    text = full["choices"][0]["text"]
    cut = text.index("Lily") if "Lily" in text else None
    if not check(cut is not None, "stop: the greedy text contains the stop string", text):
        return
    s, b = post(port, "/v1/completions", dict(base, stop=["zzz", "Lily"]))
    check(s == 200 and b["choices"][0]["text"] == text[:cut] and b["choices"][0]["finish_reason"] == "stop",
          "stop string: the text ends before it, finish_reason stop", f"{b}")
    s, events, done, _ = stream(port, "/v1/completions", dict(base, stop="Lily"))
    st = "".join(e["choices"][0]["text"] for _, e in events)
    check(done and st == text[:cut] and events[-1][1]["choices"][0]["finish_reason"] == "stop",
          "stop string, streamed: no text of the stop string is sent", f"{st!r}")


def check_match(port, refs_path, label):
    """Eight requests at once (four streamed): each must get llamoe-ep's tokens."""
    refs = json.load(open(refs_path))
    results = [None] * len(PROMPTS)

    def one(i):
        t, p = SAMPLING[i]
        req = {"prompt": PROMPTS[i], "max_tokens": MAX_TOKENS, "temperature": t, "top_p": p, "seed": SEED,
               "return_token_ids": True}
        try:
            if i % 2:
                s, events, done, _ = stream(port, "/v1/completions", req)
                ids = [x for _, e in events for x in e["choices"][0]["token_ids"]]
                span = (events[0][0], events[-1][0]) if events else None
                results[i] = (s == 200 and done, ids, span)
            else:
                s, b = post(port, "/v1/completions", req)
                results[i] = (s == 200, b["choices"][0]["token_ids"] if s == 200 else b, None)
        except Exception as e:   # reported below
            results[i] = (False, repr(e), None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for th in threads:
        th.start()
        time.sleep(0.003)   # arrivals spread a little: requests join while others decode
    for th in threads:
        th.join(TIMEOUT)
    same = [r is not None and r[0] and r[1] == refs[i] for i, r in enumerate(results)]
    check(all(same), f"{label}: 8 concurrent requests get llamoe-ep's tokens (greedy and sampled, 4 streamed)",
          "; ".join(f"request {i}: {results[i] and results[i][1]!s:.120} vs {refs[i][:12]}" for i in range(len(same)) if not same[i]))
    spans = sorted(r[2] for r in results if r and r[2])
    pairs = sum(a2 < b1 for i, (a1, b1) in enumerate(spans) for a2, _ in spans[i + 1:])
    check(len(spans) == 4 and pairs > 0,
          f"{label}: streamed requests were generated in the same steps ({pairs} of 6 pairs overlap in time)")


def check_disconnect(port):
    before = metrics(port)

    def stop_after_three(i, ev):
        return i < 2

    s, events, done, _ = stream(port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 400,
                                                          "temperature": 0.8, "ignore_eos": True}, on_event=stop_after_three)
    check(s == 200 and len(events) == 3 and not done, "disconnect: the client closes after 3 chunks of 400")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = metrics(port)
        if m["llamoe_running_sequences"] == 0 and m['llamoe_requests_finished_total{reason="cancelled"}'] > \
                before['llamoe_requests_finished_total{reason="cancelled"}']:
            break
        time.sleep(0.05)
    m = metrics(port)
    gen = m["llamoe_generation_tokens_total"] - before["llamoe_generation_tokens_total"]
    check(m["llamoe_running_sequences"] == 0 and gen < 400,
          f"disconnect: the slot is free again and generation stopped early ({gen:.0f} of 400 tokens)", str(gen))
    s, b = post(port, "/v1/completions", {"prompt": "The cat sat", "max_tokens": 8})
    check(s == 200 and b["usage"]["completion_tokens"] >= 1, "disconnect: the next request completes")


def check_flood(port, n, capacity):
    """n requests at once against `capacity` running + queued: the rest get 429, every
    accepted one completes."""
    statuses = [None] * n
    bodies = [None] * n

    def one(i):
        try:
            statuses[i], bodies[i] = post(port, "/v1/completions", {"prompt": PROMPTS[i % 8], "max_tokens": 48,
                                                                    "temperature": 0, "ignore_eos": True})
        except Exception as e:
            statuses[i], bodies[i] = -1, repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT)
    accepted = [b for s, b in zip(statuses, bodies) if s == 200]
    rejected = [b for s, b in zip(statuses, bodies) if s == 429]
    check(len(accepted) + len(rejected) == n and len(rejected) > 0 and len(accepted) >= capacity,
          f"flood of {n}: {len(accepted)} accepted, {len(rejected)} refused with 429 (capacity {capacity})",
          f"statuses {statuses}")
    check(all(b["usage"]["completion_tokens"] == 48 and b["choices"][0]["finish_reason"] == "length" for b in accepted),
          "flood: every accepted request completed with its 48 tokens")
    check(all(is_error(429, b, 429) for b in rejected), "flood: the 429s are OpenAI-style errors")
    m = metrics(port)
    check(m["llamoe_queue_depth"] == 0 and m["llamoe_running_sequences"] == 0, "flood: queue and slots empty afterwards")


def check_alive(port):
    s, b = post(port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4})
    check(s == 200 and b["usage"]["completion_tokens"] == 4, "the server runs on after all of the above", f"{s} {b}")


def check_chat(port, refs_path):
    ref = json.load(open(refs_path))
    req = {"messages": CHAT[0], "max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": SEED, "return_token_ids": True}
    s, b = post(port, "/v1/chat/completions", req)
    if not check(s == 200 and b.get("object") == "chat.completion", "chat: 200", f"{s} {b}"):
        return
    c = b["choices"][0]
    check(c["prompt_token_ids"] == ref["prompt_ids"] and c["token_ids"] == ref["generated_ids"],
          "chat: the Llama 3 template's prompt and llamoe-ep --chat's tokens",
          f"{c['prompt_token_ids'][:12]} / {ref['prompt_ids'][:12]}")
    check(c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str), "chat: an assistant message")
    s, events, done, _ = stream(port, "/v1/chat/completions", req)
    deltas = [e["choices"][0]["delta"] for _, e in events]
    check(done and deltas[0].get("role") == "assistant" and "".join(d.get("content", "") for d in deltas) == c["message"]["content"]
          and events[0][1]["object"] == "chat.completion.chunk", "chat, streamed: role first, the same content")
    s, b = post(port, "/v1/chat/completions", {"messages": CHAT[1], "max_tokens": 4, "return_token_ids": True})
    # <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>...
    ids = b["choices"][0]["prompt_token_ids"] if s == 200 else []
    check(s == 200 and ids[:3] == [128000, 128006, 9125] and ids.count(128009) == 2 and ids[-4:-1] == [128006, 78191, 128007],
          "chat: system and user turns, then the assistant header", str(ids))


def check_utf8(port):
    """A random model with the Llama 3 tokenizer samples all scripts; byte-level tokens often
    end inside a character. Every chunk must be whole characters (the raw stream strict UTF-8)
    and some must have held bytes back."""
    req = {"prompt": "Hello", "max_tokens": 80, "temperature": 1.0, "seed": 5, "ignore_eos": True, "return_token_ids": True}
    s, events, done, raw = stream(port, "/v1/completions", req)
    s2, whole = post(port, "/v1/completions", req)
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    chunks = [e["choices"][0] for _, e in events]
    text = "".join(c["text"] for c in chunks)
    held = [c["token_ids"][0] for c in chunks if c["text"] == "" and c["token_ids"][0] < 128000]
    multibyte = sum(ord(ch) > 127 for ch in text)
    check(s == 200 and done and valid and s2 == 200 and text == whole["choices"][0]["text"],
          f"multi-byte text ({multibyte} non-ASCII characters): the stream is valid UTF-8 and joins to the whole text")
    check(len(held) > 0, f"multi-byte text: {len(held)} tokens ended inside a character and their chunks waited for the rest",
          "no token split a character: the check proved nothing")


def check_sigterm(port, pid, max_tokens, want_finish):
    """SIGTERM to rank 0 while a stream runs: the stream ends properly (finish_reason, [DONE])."""
    result = {}

    def run():
        result["r"] = stream(port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": max_tokens,
                                                       "temperature": 0.8, "ignore_eos": True})

    th = threading.Thread(target=run)
    th.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metrics(port)["llamoe_running_sequences"] == 0:
        time.sleep(0.01)
    os.kill(pid, 15)
    th.join(TIMEOUT)
    s, events, done, raw = result.get("r", (None, [], False, b""))
    finish = events[-1][1]["choices"][0]["finish_reason"] if events else None
    check(s == 200 and done and finish == want_finish,
          f"SIGTERM during a stream: it ends with finish_reason {want_finish} and [DONE]", f"{s} {finish} {raw[-200:]}")


def main():
    what = sys.argv[1]
    if what == "refs":
        make_refs(*sys.argv[2:5])
        return 0
    if what == "chat-refs":
        make_chat_refs(*sys.argv[2:5])
        return 0
    port = int(sys.argv[2])
    args = sys.argv[3:]
    if what == "basics":
        check_basics(port)
    elif what == "errors":
        check_errors(port, int(args[0]))
    elif what == "completion":
        check_completion(port)
        check_stop(port)
    elif what == "match":
        check_match(port, args[0], args[1])
    elif what == "disconnect":
        check_disconnect(port)
    elif what == "flood":
        check_flood(port, int(args[0]), int(args[1]))
    elif what == "alive":
        check_alive(port)
    elif what == "chat":
        check_chat(port, args[0])
        check_utf8(port)
    elif what == "sigterm":
        check_sigterm(port, int(args[0]), int(args[1]), args[2])
    else:
        print(f"serve_client.py: unknown check {what}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
