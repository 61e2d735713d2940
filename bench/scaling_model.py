"""The traffic / time model of bench/scaling.py (everything here is MODELLED, not measured).

Formulas (docs/benchmarks.md explains them; names follow it):

  traffic per rank, per MoE layer and step, exact combine (rows of d elements, 4 bytes in
  fp32 (the wire format), 2 in bf16):
    dispatch  = n * (r * row + 8 * p)       r: remote rows per token, p: remote pairs per token
    combine   = n * p * row                 one row per (token, expert) pair
    reduced   = n * r * row                 one row per (token, owner rank)
  with uniform top-k routing over E experts placed in contiguous blocks, computed exactly by
  enumerating the C(E, k) expert sets (rank_traffic).

  all-to-all time, P ranks, G = 8 ranks per node, a rank sending `bytes` evenly to its peers:
    T = a(P) + max(bytes_intra / b_intra, bytes_inter / b_inter)
  a(P) = a_node for P <= G, a_net beyond; bandwidths are achievable NCCL bus bandwidths.
  Constants come from bench/published_a2a.json (fit_links), checked by validate().

  a layer on the busiest rank (layer_comm), its pairs imb times the mean:
    device  T_counts + copy + T(dispatch * imb) + T(combine * imb)
    host    the same collectives + ten host <-> device copies (previous release)

  CPU fit: t_comm(layer, step) = alpha * 3 (P - 1) + bytes / beta, least squares.
"""
import json
import math
import os
import random
from functools import lru_cache
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
@lru_cache(maxsize=None)
def rank_traffic(E, k, P):
    """Expected remote rows and remote pairs per token for each home rank (uniform routing,
    k distinct experts of E). Returns ((rows, pairs), ...), one per rank (cached)."""
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
    return tuple(out)


def layer_bytes(n, d, E, k, P, elem_bytes=4):
    """Modelled bytes a rank sends per layer and step (max over ranks, uniform routing): dict
    of dispatch, combine (exact), reduced combine. n: tokens on the busiest rank; rows of d
    elements of elem_bytes (4: fp32, the wire format; 2: bf16), 8 bytes of metadata per pair."""
    if P == 1:
        return {"dispatch": 0.0, "combine": 0.0, "reduced": 0.0, "rows": 0.0, "pairs": 0.0}
    tr = rank_traffic(E, k, P)
    rows = max(t[0] for t in tr)
    pairs = max(t[1] for t in tr)
    row = elem_bytes * d
    return {"dispatch": n * (rows * row + 8 * pairs), "combine": n * pairs * row,
            "reduced": n * rows * row, "rows": n * rows, "pairs": n * pairs}


# ---------------------------------------------------------------------------- links
# Interconnect of the modelled GPU cluster: 8 GPUs per node on NVSwitch, one 400 Gb/s NIC per
# GPU. Bandwidths are achievable NCCL bus bandwidths and latencies are fitted to published
# all-to-all measurements (bench/published_a2a.json names every source, hardware and message
# size); fit_links derives the constants from that file, so changing a figure there changes
# the model and its validation table together.
PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_a2a.json")
GPUS_PER_NODE = 8

# The data path the docs headline. The code this page describes keeps the MoE layer on the
# device ("device"); "host" is the previous release's host-staged exchange, computed beside it.
HEADLINE_PATH = "device"
DATA_PATHS = {
    "device": "device-resident: route plan, pack, NCCL all-to-all on device buffers, grouped expert "
              "FFN and combine on the GPU; per MoE layer one small copy of the counts to the host "
              "and one host synchronisation",
    "host": "as in the previous release: host-staged (activations copied through pageable host "
            "memory around both exchanges, a host synchronisation after every copy)",
}
FIT_ROLES = ("fit", "check")
CONSTANTS = ("b_intra_h100", "b_intra_h800", "b_inter", "pcie_pinned", "pageable_over_pinned", "copy_call_s")
HARDWARE = ("H100", "H800")


def load_published(path=PUBLISHED):
    """Reads the published measurements; a malformed file is a one-line ValueError naming the
    file and the field."""
    try:
        pub = json.load(open(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    for key in ("sources", "constants", "points"):
        if not isinstance(pub, dict) or key not in pub:
            raise ValueError(f"{path}: missing top-level field '{key}'")
    for name in CONSTANTS:
        if name not in pub["constants"]:
            raise ValueError(f"{path}: constants: missing '{name}'")
    for name, c in pub["constants"].items():
        for f in ("value", "unit", "source", "hardware", "message", "measured"):
            if f not in c:
                raise ValueError(f"{path}: constants.{name}: missing field '{f}'")
        if not isinstance(c["value"], (int, float)) or c["value"] <= 0:
            raise ValueError(f"{path}: constants.{name}.value: {c['value']!r}, expected a positive number")
        if c["source"] not in pub["sources"]:
            raise ValueError(f"{path}: constants.{name}.source: unknown source '{c['source']}'")
    for i, pt in enumerate(pub["points"]):
        if not isinstance(pt, dict):
            raise ValueError(f"{path}: points[{i}]: expected an object")
        where = f"{path}: points[{i}] ({pt.get('id', '?')})"
        for f in ("id", "source", "library", "hardware", "ranks", "published", "role"):
            if f not in pt:
                raise ValueError(f"{where}: missing field '{f}'")
        if pt["source"] not in pub["sources"]:
            raise ValueError(f"{where}.source: unknown source '{pt['source']}'")
        if pt["hardware"] not in HARDWARE:
            raise ValueError(f"{where}.hardware: '{pt['hardware']}', expected one of {', '.join(HARDWARE)}")
        if pt["role"] not in FIT_ROLES:
            raise ValueError(f"{where}.role: '{pt['role']}', expected one of {', '.join(FIT_ROLES)}")
        if not isinstance(pt["ranks"], int) or pt["ranks"] < 2:
            raise ValueError(f"{where}.ranks: {pt['ranks']!r}, expected an integer >= 2")
        if ("bytes_per_rank" in pt) == ("bytes_on_link" in pt):
            raise ValueError(f"{where}: give exactly one of bytes_per_rank (with pattern even) and bytes_on_link (with link)")
        if "bytes_on_link" in pt and pt.get("link") not in ("intra", "inter"):
            raise ValueError(f"{where}.link: {pt.get('link')!r}, expected intra or inter")
        if "bytes_per_rank" in pt and pt.get("pattern") != "even":
            raise ValueError(f"{where}.pattern: {pt.get('pattern')!r}, expected even")
        nbytes = pt.get("bytes_per_rank", pt.get("bytes_on_link"))
        if not isinstance(nbytes, (int, float)) or nbytes <= 0:
            raise ValueError(f"{where}: bytes {nbytes!r}, expected a positive number")
        if (not isinstance(pt["published"], dict) or set(pt["published"]) - {"time_us", "bandwidth_GBps"}
                or len(pt["published"]) != 1):
            raise ValueError(f"{where}.published: expected exactly one of time_us, bandwidth_GBps")
        v = next(iter(pt["published"].values()))
        if not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"{where}.published: {v!r}, expected a positive number")
        if pt["role"] == "fit" and "time_us" not in pt["published"]:
            raise ValueError(f"{where}: a fit point needs published.time_us")
    return pub


def _split(nbytes, P, G):
    """Bytes a rank sends to its node and to other nodes, spread evenly over the P - 1 peers."""
    Pn = min(P, G)
    intra = nbytes * (Pn - 1) / (P - 1)
    return intra, nbytes - intra


def fit_links(pub=None):
    """The modelled links: published bandwidths, and one fixed cost per all-to-all for P within
    a node (a_node) and one across nodes (a_net), each the median over the published NCCL fit
    points of (measured time - bandwidth time)."""
    pub = pub or load_published()
    c = {k: v["value"] for k, v in pub["constants"].items()}
    links = {
        "name": "8 GPUs per node on NVLink 4 (NVSwitch) + one 400 Gb/s NIC per GPU",
        "gpus_per_node": GPUS_PER_NODE,
        "b_intra": c["b_intra_h100"], "b_inter": c["b_inter"],
        "b_intra_by_hw": {"H100": c["b_intra_h100"], "H800": c["b_intra_h800"]},
        "pcie": {"pinned": c["pcie_pinned"], "pageable": c["pcie_pinned"] * c["pageable_over_pinned"]},
        "copy_call_s": c["copy_call_s"],
    }
    resid = {"node": [], "net": []}
    for pt in pub["points"]:
        if pt["role"] != "fit":
            continue
        P = pt["ranks"]
        intra, inter = _split(pt["bytes_per_rank"] * (P - 1) / P, P, GPUS_PER_NODE)
        bw = max(intra / links["b_intra_by_hw"][pt["hardware"]], inter / links["b_inter"])
        resid["node" if P <= GPUS_PER_NODE else "net"].append(1e-6 * pt["published"]["time_us"] - bw)
    for k, xs in resid.items():
        if not xs:
            raise ValueError(f"{PUBLISHED}: no fit point for the {k} latency")
        xs = sorted(xs)
        m = len(xs) // 2
        links["a_" + k] = max(0.0, xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m]))
        links["a_" + k + "_fit_points"] = len(xs)
    return links


_LINKS = None


def links():
    """fit_links() of the bundled file, computed once."""
    global _LINKS
    if _LINKS is None:
        _LINKS = fit_links()
    return _LINKS


def a2a_time(nbytes, P, links, hardware="H100"):
    """Modelled time of one all-to-all in which a rank sends nbytes to its P - 1 peers (spread
    evenly): the fixed cost of its scale plus the slower of the NVLink and network shares,
    which move at the same time."""
    if P == 1:
        return 0.0
    G = links["gpus_per_node"]
    intra, inter = _split(nbytes, P, G)
    lat = links["a_node"] if P <= G else links["a_net"]
    return lat + max(intra / links["b_intra_by_hw"][hardware], inter / links["b_inter"])


def validate(pub, links):
    """The model fed each published case's message size, against the published figure."""
    rows = []
    for pt in pub["points"]:
        P, hw = pt["ranks"], pt["hardware"]
        if "bytes_per_rank" in pt:
            nbytes = pt["bytes_per_rank"]
            t = a2a_time(nbytes * (P - 1) / P, P, links, hw)   # own share stays local
        else:
            nbytes = pt["bytes_on_link"]
            lat = links["a_node"] if P <= links["gpus_per_node"] else links["a_net"]
            b = links["b_intra_by_hw"][hw] if pt["link"] == "intra" else links["b_inter"]
            t = lat + nbytes / b
        if "time_us" in pt["published"]:
            pub_t = 1e-6 * pt["published"]["time_us"]
        else:
            pub_t = nbytes / (1e9 * pt["published"]["bandwidth_GBps"])
        # the error is stated in the published quantity: time, or bandwidth for the same bytes
        err = t / pub_t - 1 if "time_us" in pt["published"] else pub_t / t - 1
        rows.append({"id": pt["id"], "source": pt["source"], "url": pub["sources"][pt["source"]]["url"],
                     "library": pt["library"], "hardware": hw, "ranks": P, "bytes": nbytes,
                     "bytes_kind": "per rank" if "bytes_per_rank" in pt else f"on the {pt['link']}-node link",
                     "published": pt["published"], "published_s": pub_t, "modelled_s": t,
                     "modelled_GBps": nbytes / t / 1e9, "rel_err": err, "role": pt["role"],
                     "within_25": abs(err) <= 0.25, "gap": pt.get("gap", "")})
    return rows


# ---------------------------------------------------------------------------- data paths
@lru_cache(maxsize=None)
def rows_per_token_all(E, k, P):
    """Distinct owner ranks of a token's k experts, its home included (uniform routing)."""
    owner = placement(E, P)
    return sum(1 - math.comb(E - owner.count(o), k) / math.comb(E, k) for o in range(P))


def layer_comm(n, d, E, k, P, links, path=HEADLINE_PATH, imb=1.0, elem_bytes=4, reduced=False,
               host_memory="pageable"):
    """One MoE layer's exchange on the busiest rank, n tokens per rank, rows of d elements of
    elem_bytes (4: fp32, today's wire format; 2: bf16). imb: the busiest rank's share of the
    (token, expert) pairs over the mean; it scales what that rank receives in dispatch and
    sends back in combine. Returns {"total", "a2a", "host", "crossings": [(what, bytes, s)]}.

    device: counts all-to-all, one device-to-host copy of the counts and a synchronisation,
            dispatch and combine all-to-alls on device buffers.
    fixed:  device-resident with fixed-capacity buffers (decode): no counts round and no host
            synchronisation, but every peer gets its worst case (all n tokens).
    host:   the previous release (runtime/moe.c with comm_staged): the device path's three
            collectives plus ten host <-> device copies, each followed by a synchronisation."""
    if P == 1:
        return {"total": 0.0, "a2a": 0.0, "host": 0.0, "crossings": []}
    row = d * elem_bytes
    tb = layer_bytes(n, d, E, k, P, elem_bytes)
    comb = tb["reduced"] if reduced else tb["combine"]
    if path == "fixed":
        per_peer_pairs = min(k, math.ceil(E / P))
        disp = (P - 1) * n * (row + 8 * per_peer_pairs)
        comb = (P - 1) * n * (per_peer_pairs * row if not reduced else row)
        a2a = a2a_time(disp, P, links) + a2a_time(comb, P, links)
        return {"total": a2a, "a2a": a2a, "host": 0.0, "crossings": []}
    a2a = (a2a_time(24.0 * (P - 1), P, links) + a2a_time(tb["dispatch"] * imb, P, links)
           + a2a_time(comb * imb, P, links))
    call = links["copy_call_s"]
    if path == "device":
        counts = 8.0 * (P + E)    # per-peer and per-expert counts
        crossings = [("counts to host", counts, call + counts / links["pcie"]["pinned"])]
    elif path == "host":
        rate = links["pcie"][host_memory]
        r_all = rows_per_token_all(E, k, P)
        pairs = n * k
        q = pairs * imb                                  # pairs owned by the busiest rank
        send = n * (r_all * row + 8 * k)                 # the staged extent includes the own rows
        parts = [("activations down", n * row), ("counts up", 24.0 * P), ("counts down", 24.0 * P),
                 ("dispatch send up", send), ("dispatch receive down", send * imb),
                 ("expert rows up", q * row), ("expert outputs down", q * row),
                 ("combine send up", q * row), ("combine receive down", pairs * row),
                 ("pair outputs up", pairs * row)]
        crossings = [(w, b, call + b / rate) for w, b in parts]
    else:
        raise ValueError(f"data path {path!r}: expected device, fixed or host")
    host = sum(c[2] for c in crossings)
    return {"total": a2a + host, "a2a": a2a, "host": host, "crossings": crossings}


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
