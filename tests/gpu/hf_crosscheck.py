#!/usr/bin/env python3
"""Hugging Face transformers against llamoe: the same prompt through LlamaForCausalLM on a
dense model directory and MixtralForCausalLM on llamoe-convert's identity and upcycle
checkpoints of it, compared with llamoe-ep's --dump-logits rows (max |logit difference|,
relative to the largest logit, and whether the greedy tokens agree).

llamoe generates N tokens greedily and dumps N rows of logits: row j predicts the token after
position n_prompt - 1 + j. transformers then runs once over prompt + generated[:N-1] and the
same rows are compared.

    hf_crosscheck.py --build BUILD_DIR --model DIR --work DIR --json OUT.json
                     [--backend cuda|cpu] [--device cuda|cpu] [-n 16] [--ids 1,403,...]
                     [--modes dense,identity:8,upcycle:8:2] [--mpirun "mpirun -np 1"]

Exit status: 0 when every mode agrees within --tol (default 1e-2 relative) with identical
greedy tokens, 1 otherwise, 77 when torch/transformers are not installed (skipped). Works
with transformers 4.x (models loaded with torch_dtype=) and 5.x (dtype=); a Mixtral mode
whose config the installed transformers would misread (rope_scaling before 4.48, a head_dim
other than hidden_size / num_attention_heads before 4.47) is reported as skipped, not failed.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def run(cmd, timeout):
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return p.stdout, time.time() - t


def load_model(cls, path, torch, device):
    """from_pretrained in float32: transformers from about 4.56 on takes dtype=, earlier
    versions only torch_dtype= (they pass an unknown dtype= on to the model and fail)."""
    try:
        model = cls.from_pretrained(path, dtype=torch.float32)
    except TypeError as e:
        if "dtype" not in str(e):
            raise
        model = cls.from_pretrained(path, torch_dtype=torch.float32)
    return model.to(device).eval()


def version_tuple(v):
    """"4.47.1" -> (4, 47, 1); "4.48.0rc1" and "4.56.0.dev0" -> their first three numbers."""
    out = []
    for part in v.split(".")[:3]:
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        out.append(int(digits or 0))
    return tuple(out + [0] * (3 - len(out)))


def mixtral_misread(config, version):
    """What MixtralForCausalLM of this transformers version misreads in config.json: before
    4.48 it ignores rope_scaling (always plain RoPE, no warning); before 4.47 it also takes
    head_dim as hidden_size / num_attention_heads (a checkpoint with another head_dim then
    fails to load)."""
    why = []
    if version < (4, 48, 0) and config.get("rope_scaling"):
        why.append("rope_scaling")
    hd = config.get("head_dim")
    if version < (4, 47, 0) and hd and hd * config["num_attention_heads"] != config["hidden_size"]:
        why.append("head_dim")
    return why


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="llamoe build directory (llamoe-ep, llamoe-convert)")
    ap.add_argument("--model", required=True, help="dense Hugging Face Llama directory")
    ap.add_argument("--work", required=True, help="scratch directory for converted checkpoints and dumps")
    ap.add_argument("--json", required=True, help="result file")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--ids", default="1,403,407,261,378,100,37,290,500,18,400")   # within stories260k's 512
    ap.add_argument("--modes", default="dense,identity:8,upcycle:8:2")
    ap.add_argument("--mpirun", default="", help="launcher prefix for llamoe-ep, e.g. 'mpirun -np 1'")
    ap.add_argument("--tol", type=float, default=1e-2)
    a = ap.parse_args()

    result = {"model": a.model, "backend": a.backend, "n": a.n, "modes": []}
    try:
        import numpy as np
        import torch
        import transformers
        from transformers import LlamaForCausalLM, MixtralForCausalLM
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run here"
        result["skipped"] = f"torch/transformers not importable: {e}"
        json.dump(result, open(a.json, "w"), indent=1)
        print(f"hf_crosscheck: skipped: {result['skipped']}")
        return 77
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result.update(torch=torch.__version__, transformers=transformers.__version__, torch_device=device)
    print(f"hf_crosscheck: transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"device {device}", flush=True)
    hf_version = version_tuple(transformers.__version__)
    os.makedirs(a.work, exist_ok=True)
    prompt = [int(x) for x in a.ids.split(",")]
    launcher = shlex.split(a.mpirun)
    ok_all = True
    for mode in a.modes.split(","):
        entry = {"mode": mode}
        result["modes"].append(entry)
        try:
            if mode == "dense":
                mdir, cls, moe_args = a.model, LlamaForCausalLM, ["--moe", "dense"]
            else:
                mdir = os.path.join(a.work, "hf_" + mode.replace(":", "_"))
                _, dt = run([os.path.join(a.build, "llamoe-convert"), "-m", a.model, "--moe", mode, "-o", mdir, "--force"], 300)
                entry["convert_s"] = round(dt, 3)
                cls, moe_args = MixtralForCausalLM, []   # the checkpoint's own experts and router
            dump = os.path.join(a.work, "logits_" + mode.replace(":", "_") + ".f32")
            out, dt = run(launcher + [os.path.join(a.build, "llamoe-ep"), "-m", mdir, "--backend", a.backend, "--ids", a.ids,
                                      "-n", str(a.n), "--json", "--dump-logits", dump] + moe_args, 300)
            entry["llamoe_s"] = round(dt, 3)
            ll = json.loads(out.strip().splitlines()[-1])
            gen = ll["generated_ids"]
            config = json.load(open(os.path.join(mdir, "config.json")))
            misread = mixtral_misread(config, hf_version) if cls is MixtralForCausalLM else []
            if misread:
                entry["skipped"] = (f"transformers {transformers.__version__} misreads a Mixtral config's "
                                    f"{' and '.join(misread)} (4.48 is the first to read both)")
                entry["ok"] = True
                print(f"hf_crosscheck {mode:14s} skipped: {entry['skipped']}", flush=True)
                continue
            V = config["vocab_size"]
            if max(prompt) >= V:
                raise ValueError(f"--ids: token id {max(prompt)} is past the model's vocabulary ({V})")
            got = np.fromfile(dump, dtype=np.float32).reshape(-1, V)
            rows = got.shape[0]
            t = time.time()
            model = load_model(cls, mdir, torch, device)
            with torch.no_grad():
                seq = torch.tensor([prompt + gen[: rows - 1]], device=device)
                ref = model(seq).logits[0, len(prompt) - 1:].float().cpu().numpy()
            entry["hf_s"] = round(time.time() - t, 3)
            diff = float(np.abs(ref - got).max())
            rel = diff / float(np.abs(ref).max())
            hf_greedy = [int(x) for x in ref.argmax(axis=1)]
            agree = hf_greedy == gen[:rows]
            entry.update(rows=rows, max_abs_diff=diff, max_rel_diff=rel, greedy_agree=agree,
                         llamoe_ids=gen, hf_greedy_ids=hf_greedy, class_name=cls.__name__)
            entry["ok"] = bool(rel <= a.tol and agree)
            del model
        except Exception as e:  # noqa: BLE001 - record and go on to the next mode
            entry["error"] = str(e)[-1000:]
            entry["ok"] = False
        ok_all = ok_all and entry["ok"]
        print(f"hf_crosscheck {mode:14s} {entry.get('class_name', '-'):20s} max|diff| {entry.get('max_abs_diff', float('nan')):.3e} "
              f"rel {entry.get('max_rel_diff', float('nan')):.3e} greedy {'agree' if entry.get('greedy_agree') else 'DIFFER'} "
              f"{'ok' if entry['ok'] else 'FAIL ' + entry.get('error', '')}", flush=True)
    result["ok"] = ok_all
    json.dump(result, open(a.json, "w"), indent=1)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
