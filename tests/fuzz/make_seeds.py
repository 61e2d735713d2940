#!/usr/bin/env python3
"""Writes the seed corpora tests/fuzz/corpus/<target>/ from the bundled models and a few
hand-made edge cases. Run from anywhere; rerunning rewrites the same files. Seeds stay small
(the biggest is a few tens of KB) so that every fuzz run starts from them quickly."""
import json, os, struct, glob

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
M = os.path.join(ROOT, "models")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*p):
    with open(os.path.join(M, *p), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- safetensors
def st(header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# A shrunken stories260k: the real header's names and dtypes, every shape cut to 2 per dim.
real = read("stories260k", "model.safetensors")
hlen = struct.unpack("<Q", real[:8])[0]
hdr = json.loads(real[8:8 + hlen])
small, off = {"__metadata__": hdr.get("__metadata__", {})}, 0
for name in sorted(k for k in hdr if k != "__metadata__")[:12]:
    shape = [2 for _ in hdr[name]["shape"]]
    n = 4
    for s in shape:
        n *= s
    small[name] = tensor(hdr[name]["dtype"], shape, off, off + n)
    off += n
put("safetensors", "stories260k_small", st(small, bytes(range(256)) * (off // 256 + 1)))
put("safetensors", "stories260k_header_only", real[:8 + hlen])   # data section missing: refused
put("safetensors", "empty_object", st({}))
put("safetensors", "metadata_only", st({"__metadata__": {"format": "pt", "k": "v"}}))
put("safetensors", "dtypes", st({"a": tensor("F32", [2], 0, 8), "b": tensor("BF16", [2, 2], 8, 16),
                                 "c": tensor("F16", [1, 1, 2], 16, 20)}, b"\x01" * 20))
put("safetensors", "zero_size", st({"e": tensor("F32", [0, 5], 0, 0), "s": tensor("F32", [], 0, 4)}, b"\0" * 4))
put("safetensors", "eight_dims", st({"t": tensor("BF16", [1] * 7 + [2], 0, 4)}, b"\0" * 4))
put("safetensors", "overlap", st({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}, b"\0" * 12))
put("safetensors", "unaligned", st({"a": tensor("F32", [1], 2, 6)}, b"\0" * 8))
put("safetensors", "huge_shape", st({"a": tensor("F32", [4294967296, 4294967296, 16], 0, 16)}, b"\0" * 16))
put("safetensors", "terabytes", st({"a": tensor("BF16", [1 << 20, 1 << 20], 0, 1 << 41)}))
put("safetensors", "hlen_past_end", struct.pack("<Q", 1 << 40) + b"{}")
put("safetensors", "unpadded_nul", struct.pack("<Q", 4) + b"{}\0 ")
put("safetensors", "bad_dtype", st({"a": tensor("I64", [1], 0, 8)}, b"\0" * 8))
put("safetensors", "neg_offset", b'\x38\0\0\0\0\0\0\0{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}')

# ---------------------------------------------------------------- index
put("st_index", "llama31_8b", read("llama-3.1-8b-config", "model.safetensors.index.json"))
put("st_index", "small", json.dumps({"metadata": {"total_size": 16},
                                     "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                    "b": "model-00002-of-00002.safetensors"}}))
put("st_index", "escape", json.dumps({"weight_map": {"a": "../etc/passwd", "b": "x/y"}}))
put("st_index", "empty_map", '{"weight_map": {}}')
put("st_index", "not_string", '{"weight_map": {"a": 1, "b": null}}')
put("st_index", "trailing", '{"weight_map": {"a": "m.safetensors"}} x')

# ---------------------------------------------------------------- config (+ NUL + generation_config)
for d in ("stories260k", "llama-3.1-8b-config"):
    for cfg, gen in (("config.json", "generation_config.json"), ("config-instruct.json", "generation_config-instruct.json")):
        if os.path.exists(os.path.join(M, d, cfg)):
            put("config", f"{d}_{cfg}", read(d, cfg) + b"\0" + read(d, gen))
for p in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "config", "*.json"))):
    with open(p, "rb") as f:
        put("config", "data_" + os.path.basename(p), f.read())
put("config", "gen_list", read("stories260k", "config.json") + b'\0{"eos_token_id": [2, 1, 2], "bos_token_id": 1}')

# ---------------------------------------------------------------- tokenizer (+ NUL + text)
put("tokenizer", "stories260k", read("stories260k", "tokenizer.json"))
put("tokenizer", "stories260k_text", read("stories260k", "tokenizer.json") + b"\0<s>Once upon a time \xe2\x96\x81 \xf0\x9f\x98\x80</s>")
# A Llama 3 tokenizer cut down to its first 300 pieces, the merges among them and the specials.
big = json.loads(read("llama3-tokenizer", "tokenizer.json"))
keep = {k: v for k, v in big["model"]["vocab"].items() if v < 300}
merges = []
for m in big["model"]["merges"]:
    a, b = m.split(" ") if isinstance(m, str) else m
    if a in keep and b in keep and a + b in keep:
        merges.append(m)
big["model"]["vocab"], big["model"]["merges"] = keep, merges
big["added_tokens"] = [t for t in big["added_tokens"] if t["id"] < 128010]
for t in big["added_tokens"]:
    t["id"] = t["id"] - 128000 + 300
def remap(o):
    if isinstance(o, dict):
        return {k: (remap(v) if k != "ids" else [i - 128000 + 300 for i in v]) for k, v in o.items()}
    if isinstance(o, list):
        return [remap(x) for x in o]
    return o
big["post_processor"] = remap(big["post_processor"])
put("tokenizer", "llama3_mini", json.dumps(big, ensure_ascii=False))
tiny = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u2581": 3, "<0x41>": 4}, "merges": ["a b"],
                  "byte_fallback": True, "unk_token": "a", "fuse_unk": True},
        "added_tokens": [{"id": 5, "content": "<x>", "special": True}],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                     {"type": "ByteFallback"}, {"type": "Fuse"},
                                                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}},
                                                                    {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<x>": {"id": "<x>", "ids": [5], "tokens": ["<x>"]}}}}
put("tokenizer", "tiny_metaspace", json.dumps(tiny) + "\0ab ba A\xc3\xa9<x>")
split = {"model": {"type": "BPE", "vocab": {"x": 0, "y": 1, "xy": 2}, "merges": [["x", "y"]], "ignore_merges": True},
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "\\s+|\\d{1,3}"}, "behavior": "Isolated", "invert": False},
             {"type": "Split", "pattern": {"String": "y"}, "behavior": "Removed"},
             {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
         "decoder": {"type": "ByteLevel"}}
put("tokenizer", "tiny_split", json.dumps(split) + "\0xy 12345 yx")
put("tokenizer", "sparse_ids", '{"model": {"type": "BPE", "vocab": {"a": 16777215}, "merges": []}}')

# ---------------------------------------------------------------- prompts files
put("prompts", "text", "Once upon a time\nThe cat sat\n\n  spaces  \r\n")
put("prompts", "ids", "1,403,407\n1 2 3\n\t1,\t2 ,3\r\n")
put("prompts", "mixed", "1,2\nhello 1,2\n-5\n99999999999\n1,,2\n")
put("prompts", "chat", "#chat: a prompt file whose first byte is '#' is encoded with --chat\nhi\n")
put("prompts", "utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n\xc3\x28 bad utf8\n")
put("prompts", "blank", "\n\r\n\n")

# ---------------------------------------------------------------- llamoe-ep command lines (NUL-separated)
def argv(*a):
    return "\0".join(a)
put("cli", "defaults", b"")
put("cli", "ids", argv("--ids", "1,403,407", "-n", "8", "--json"))
put("cli", "text", argv("-p", "Once upon a time", "--temp", "0.8", "--top-p", "0.9", "--seed", "42"))
put("cli", "moe", argv("--moe", "upcycle:8:2", "--drop", "0.25", "--ctx", "128", "--step-tokens", "16"))
put("cli", "moe_bad", argv("--moe", "production:99999999999:1"))
put("cli", "chat", argv("--chat", "-p", "hi", "--bind", "none", "--threads", "2", "--stats", "--verbose"))
put("cli", "exclusive", argv("-p", "x", "--ids", "1", "--prompts", "f"))
put("cli", "missing", argv("-n"))
put("cli", "help", argv("--json", "-h", "--bogus"))
put("cli", "numbers", argv("-n", "-3", "--temp", "nan", "--seed", "-1", "--ctx", "99999999999999999999"))
with open(os.path.join(ROOT, "tests", "data", "cli_errors.txt")) as f:
    for i, line in enumerate(f):
        if "|" in line and not line.startswith("#"):
            args = line.split("|", 1)[1].split()
            put("cli", f"cli_errors_{i:02d}", argv(*args))
