"""The traffic / time model of bench/scaling.py (everything here is MODELLED, not measured).

Formulas (docs/benchmarks.md explains them; names follow it):

  traffic per rank, per MoE layer and step, exact combine (fp32 rows of d floats):
    dispatch  = n * (r * 4d + 8 * p)        r: remote rows per token, p: remote pairs per token
    combine   = n * p * 4d                  one row per (token, expert) pair
    reduced   = n * r * 4d                  one row per (token, owner rank)
  with uniform top-k routing over E experts placed in contiguous blocks, computed exactly by
  enumerating the C(E, k) expert sets (rank_traffic).

  all-to-all time, P ranks, G ranks per node (node boundary), per collective:
    T = a_coll + a_intra * (min(P, G) - 1) + a_inter * (P - min(P, G))
        + max(bytes_intra / b_intra, bytes_inter / b_inter)
  (intra- and inter-node links work at the same time; bytes split by peer count).
  A layer has three collectives: the counts (latency only), dispatch, combine.

  CPU fit: t_comm(layer, step) = alpha * 3 (P - 1) + bytes / beta, least squares.
"""
import math
import random
from itertools import combinations


# ---------------------------------------------------------------------------- placement
def placement(E, P):
    """Contiguous blocks, the first E % P ranks one more (parallel/placement.c)."""
    base, extra = divmod(E, P)
    owner, first = [], 0
    for r in range(P):
        cnt = base + (1 if r < extra else 0)
        owner += [r] * cnt
        first += cnt
    return owner


def rank_loads(counts, P):
    """Per-rank (token, expert) pairs from per-expert counts."""
    owner = placement(len(counts), P)
    loads = [0] * P
    for e, c in enumerate(counts):
        loads[owner[e]] += c
    return loads


def max_over_mean(xs):
    s = sum(xs)
    return max(xs) * len(xs) / s if s else 0.0


# ---------------------------------------------------------------------------- traffic
def rank_traffic(E, k, P):
    """Expected remote rows and remote pairs per token for each home rank (uniform routing,
    k distinct experts of E). Returns [(rows, pairs)] per rank."""
    owner = placement(E, P)
    sets = list(combinations(range(E), k)) if math.comb(E, k) <= 20000 else None
    out = []
    for h in range(P):
        if sets is not None:
            rows = pairs = 0.0
            for s in sets:
                owners = {owner[e] for e in s}
                rows += len(owners - {h})
                pairs += sum(1 for e in s if owner[e] != h)
            out.append((rows / len(sets), pairs / len(sets)))
        else:   # large E: owners independent enough; closed form per owner block
            rows = 0.0
            for o in range(P):
                if o == h:
                    continue
                e_o = owner.count(o)
                rows += 1 - math.comb(E - e_o, k) / math.comb(E, k)
            pairs = k * (E - owner.count(h)) / E
            out.append((rows, pairs))
    return out


def layer_bytes(n, d, E, k, P):
    """Modelled bytes a rank sends per layer and step (max over ranks): dict of dispatch,
    combine (exact), reduced combine. n: tokens on the busiest rank."""
    if P == 1:
        return {"dispatch": 0.0, "combine": 0.0, "reduced": 0.0, "rows": 0.0, "pairs": 0.0}
    tr = rank_traffic(E, k, P)
    rows = max(t[0] for t in tr)
    pairs = max(t[1] for t in tr)
    return {"dispatch": n * (rows * 4 * d + 8 * pairs), "combine": n * pairs * 4 * d,
            "reduced": n * rows * 4 * d, "rows": n * rows, "pairs": n * pairs}


# ---------------------------------------------------------------------------- links
# Modelled interconnect: NVLink 4 inside an 8-GPU node (450 GB/s per direction per GPU),
# 400 Gb/s InfiniBand across nodes (one NIC per GPU: 50 GB/s). Latencies are assumptions
# (NCCL-like grouped send/recv): a fixed cost per collective plus a cost per peer.
H100_LINKS = {
    "name": "NVLink 4 in 8-GPU nodes + 400 Gb/s IB",
    "gpus_per_node": 8,
    "a_coll": 10e-6,     # launch + synchronisation per collective
    "a_intra": 1e-6,     # per NVLink peer
    "a_inter": 4e-6,     # per InfiniBand peer
    "b_intra": 450e9,    # bytes/s per GPU per direction
    "b_inter": 50e9,
}


def a2a_time(nbytes, P, links, overlapped=False):
    """Modelled time of one all-to-all in which a rank sends nbytes to its P - 1 peers.
    overlapped: the per-peer latencies overlap (all messages in flight at once), so one
    latency of the slowest link class is paid instead of one per peer (the optimistic bound)."""
    if P == 1:
        return 0.0
    G = links["gpus_per_node"]
    Pn = min(P, G)
    intra = nbytes * (Pn - 1) / (P - 1)
    inter = nbytes - intra
    if overlapped:
        lat = links["a_coll"] + (links["a_inter"] if P > Pn else links["a_intra"])
    else:
        lat = links["a_coll"] + links["a_intra"] * (Pn - 1) + links["a_inter"] * (P - Pn)
    return lat + max(intra / links["b_intra"], inter / links["b_inter"])


def layer_comm_time(tb, P, links, reduced=False, overlapped=False):
    """counts + dispatch + combine of one layer; tb from layer_bytes."""
    comb = tb["reduced"] if reduced else tb["combine"]
    return (a2a_time(24.0 * (P - 1), P, links, overlapped) + a2a_time(tb["dispatch"], P, links, overlapped)
            + a2a_time(comb, P, links, overlapped))


# ---------------------------------------------------------------------------- CPU fit
def lstsq2(points):
    """Least squares t = a * x + b * y over (x, y, t) with a, b >= 0 (a coefficient that
    comes out negative is set to 0 and the other refitted alone)."""
    sxx = sum(x * x for x, y, t in points)
    sxy = sum(x * y for x, y, t in points)
    syy = sum(y * y for x, y, t in points)
    sxt = sum(x * t for x, y, t in points)
    syt = sum(y * t for x, y, t in points)
    det = sxx * syy - sxy * sxy
    if det > 0:
        a = (sxt * syy - syt * sxy) / det
        b = (syt * sxx - sxt * sxy) / det
        if a >= 0 and b >= 0:
            return a, b
    fa = max(0.0, sxt / sxx) if sxx else 0.0   # x alone
    fb = max(0.0, syt / syy) if syy else 0.0   # y alone
    ra = sum((t - fa * x) ** 2 for x, y, t in points)
    rb = sum((t - fb * y) ** 2 for x, y, t in points)
    return (fa, 0.0) if ra <= rb else (0.0, fb)


def fit_alpha_beta(points):
    """t = alpha * messages + bytes / beta over (messages, bytes, t): (alpha, beta)."""
    a, g = lstsq2(points)
    return a, (1.0 / g if g > 0 else float("inf"))


def cpu_comm_time(m, nbytes, alpha, beta):
    return alpha * m + (nbytes / beta if beta != float("inf") else 0.0)


# ---------------------------------------------------------------------------- imbalance
def mc_rank_imbalance(N, E, k, P, trials=None, seed=1):
    """Expected max/mean of per-rank (token, expert) pairs in one step: N tokens each picking
    k distinct experts uniformly among E, contiguous placement on P ranks."""
    if N <= 0:
        return 1.0
    trials = trials or max(8, min(400, 40000 // max(1, N)))
    rng = random.Random(seed)
    owner = placement(E, P)
    mean = N * k / P
    acc = 0.0
    for _ in range(trials):
        loads = [0] * P
        for _ in range(N):
            for e in rng.sample(range(E), k):
                loads[owner[e]] += 1
        acc += max(loads) / mean
    return acc / trials


# ---------------------------------------------------------------------------- interpolation
def interp(xs, ys, x):
    """Piecewise linear through the points (xs, ys), extended linearly past both ends."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        return pts[0][1] * x / pts[0][0] if pts[0][0] else pts[0][1]
    for i in range(len(pts) - 1):
        if x <= pts[i + 1][0] or i == len(pts) - 2:
            (x0, y0), (x1, y1) = pts[i], pts[i + 1]
            return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def fit_expert_cost(samples):
    """t_experts = w * experts_touched + c * pairs over (touched, pairs, t): (w, c)."""
    return lstsq2(samples)


def experts_touched(N, k, E, P):
    """Expected local experts on the busiest rank that receive at least one pair in a step."""
    e_local = math.ceil(E / P)
    return e_local * (1 - (1 - k / E) ** N)


# ---------------------------------------------------------------------------- H100 roofline
# For the Llama-3.1-8B shape on H100s (MODELLED: no GPU ran here). Achievable rates, not peaks.
H100 = {"flops": 0.6 * 989e12, "hbm": 0.8 * 3.35e12, "kernel_s": 5e-6}
LLAMA8B = {"d": 4096, "ffn": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128,
           "vocab": 128256, "bytes_per_weight": 2}


def roofline(flops, nbytes, kernels, gpu=H100):
    return max(flops / gpu["flops"], nbytes / gpu["hbm"]) + kernels * gpu["kernel_s"]


def h100_rank_compute(n, ctx, pairs, touched, shape=LLAMA8B):
    """Per-layer roofline time of a rank: attention block for n tokens at context ctx, and
    experts for `pairs` rows over `touched` distinct local experts (each a full FFN)."""
    d, f, w = shape["d"], shape["ffn"], shape["bytes_per_weight"]
    kv = shape["kv_heads"] * shape["head_dim"]
    attn_params = 2 * d * d + 2 * d * kv
    attn = roofline(2 * attn_params * n + 4 * n * ctx * d, attn_params * w + n * ctx * 2 * kv * 2, 8) if n else 0.0
    exp_params = 3 * d * f
    experts = roofline(2 * exp_params * pairs, exp_params * w * touched + pairs * d * 8, 4 + 3 * touched) if pairs else 0.0
    return attn, experts
