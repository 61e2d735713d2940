#!/usr/bin/env python3
"""Writes tests/data/rope_llama3/inv_freq.json: the llama3-scaled RoPE inverse frequencies that
Hugging Face transformers computes (ROPE_INIT_FUNCTIONS["llama3"], float32), the reference of
tests/test_rope_llama3.c.

    python3 tests/data/rope_llama3/make_expected.py

Needs torch and transformers. Each case names a config (a file of this repository, or the
fields inline); the test parses the same config with llamoe's config parser. band[i] says which
branch of the llama3 rule frequency i takes, from transformers' own float32 wavelength:
"kept" (wavelength < original / high_freq_factor), "divided" (> original / low_freq_factor,
divided by factor) or "smoothed" (between: blended).
"""
import json
import math
import os
import platform
import re

import torch
import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

# Llama 3.2 1B/3B's rope (factor 32, head_dim 64), written inline: the factor is not always 8.
LLAMA32 = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001,
}
CASES = [
    ("llama-3.1-8b", "models/llama-3.1-8b-config/config.json", None),
    ("llama-3.2-rope", None, LLAMA32),
    ("llama3-tiny", "tests/data/llama3_tiny/config.json", None),
]


def bands(cfg):
    rs = cfg["rope_scaling"]
    low = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    high = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    wavelen = (2 * math.pi / inv_freq_base(cfg)).tolist()
    out = []
    for w in wavelen:
        # The test's values must not sit on a band edge, where float32 and float64 could disagree.
        assert min(abs(w - low) / low, abs(w - high) / high) > 1e-4, (w, low, high)
        out.append("kept" if w < high else "divided" if w > low else "smoothed")
    return out


def inv_freq_base(cfg):   # the unscaled frequencies, as transformers computes them (float32)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).to(dtype=torch.float) / hd))


def main():
    out = []
    for name, path, inline in CASES:
        cfg = inline
        if path:
            with open(os.path.join(SRC, path)) as f:
                cfg = json.load(f)
        inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**cfg), "cpu")
        assert inv_freq.dtype == torch.float32
        b = bands(cfg)
        assert {"kept", "smoothed", "divided"} <= set(b), (name, b)
        case = {"name": name}
        if path:
            case["config_path"] = path
        else:
            case["config"] = cfg
        case.update({"band": b, "inv_freq": [float(v) for v in inv_freq.tolist()]})
        out.append(case)
        print("%-16s head_dim %3d: %d kept, %d smoothed, %d divided" % (
            name, 2 * len(b), b.count("kept"), b.count("smoothed"), b.count("divided")))
    doc = {
        "made_by": "python3 tests/data/rope_llama3/make_expected.py",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "licence": "Numbers computed by transformers from the configs named here (the Llama 3.1 config is "
                   "Meta's, see models/llama-3.1-8b-config); the file itself is under the llamoe sources' terms.",
        "source": "transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS['llama3'](LlamaConfig(**config)), float32",
        "cases": out,
    }
    text = re.sub(r"\[\n\s+([-0-9\"][^\[\]{}]*?)\n\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(doc, indent=1))
    assert json.loads(text) == doc
    with open(os.path.join(HERE, "inv_freq.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
