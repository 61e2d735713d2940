#!/usr/bin/env python3
"""Writes the tiny Llama 3-style model of tests/data/llama3_tiny (see README.md there).

    python3 tests/data/llama3_tiny/make_model.py BUILD_DIR [OUT_DIR]

1. Trains a byte-level BPE tokenizer (Llama 3's pre-tokenizer split, ignore_merges, 382
   tokens + <|begin_of_text|>, <|end_of_text|>) on CORPUS below with the `tokenizers` package.
2. Runs BUILD_DIR/llamoe-mkmodel with fixed dimensions and seed (COMMAND below).
3. Sets three config fields mkmodel has no flag for: bos/eos (the tokenizer's specials) and
   rms_norm_eps = 1e-3, large enough that a wrong epsilon moves the logits far past the test's
   tolerance (with unit-RMS activations, eps 1e-5 would move them by about 1e-4).

Needs the `tokenizers` package (pip install tokenizers). The test never runs this script: it
reads the committed files. llamoe-mkmodel's random numbers may change between versions, so a
rerun can give other weights; make_expected.py must then be rerun too.
"""
import json
import os
import subprocess
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
VOCAB = 384
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama 3's pre-tokenizer split (models/llama3-tokenizer/tokenizer.json).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
The river ran past the mill and under the old stone bridge. In the morning the miller opened
the gates, and the wheel began to turn; by noon the sacks of flour stood in a long row by the
door. Children came to watch the water fall, and the miller told them stories about the river:
how it froze in the hard winter of the storm, how it carried a boat all the way to the sea, how
a heron stood on the bridge for three days and never caught a fish.
There were 12 sacks on Monday, 15 on Tuesday and 9 on Wednesday, when the wheel stopped.
"Something is stuck," said the miller. He walked along the bank, looking into the water.
A branch had fallen into the channel; he pulled it out, and the wheel turned again.
The baker's daughter counted the sacks every evening and wrote the numbers in a book.
She liked numbers, and she liked the sound of the water at night.
Later the town grew, the road was paved, and trucks carried the flour to the city, but the
river still ran past the mill, and the children still came to watch the water fall.
"""


def train_tokenizer(path):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    assert tok.get_vocab_size() == VOCAB - 2, tok.get_vocab_size()
    tok.add_special_tokens([BOS, EOS])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    tok.decoder = decoders.ByteLevel()
    tok.save(path)
    return bos, tok.token_to_id(EOS)


# Model dimensions: GQA (4 query heads, 2 KV heads), head_dim 16, llama3 rope with
# original_max_position_embeddings 64 (mkmodel's tiny preset) and theta 400, so the eight
# frequencies fall in all three bands: wavelengths 6.3 and 13.3 below 64/4 (kept), 28.1 and
# 59.4 between 16 and 64 (smoothed), 126 and above past 64 (divided by the factor 8).
COMMAND = ["--preset", "tiny", "--hidden", "64", "--ffn", "192", "--layers", "3", "--heads", "4",
           "--kv-heads", "2", "--vocab", str(VOCAB), "--max-pos", "512", "--rope-theta", "400",
           "--rope-llama3", "--dtype", "BF16", "--seed", "3"]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    build, out = sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else HERE
    tmp_tok = os.path.join(out, "tokenizer.json.new")
    os.makedirs(out, exist_ok=True)
    bos, eos = train_tokenizer(tmp_tok)
    model_dir = os.path.join(out, "model.new")
    cmd = [os.path.join(build, "llamoe-mkmodel"), "-o", model_dir] + COMMAND + ["--tokenizer", tmp_tok]
    subprocess.run(cmd, check=True)
    os.remove(tmp_tok)
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(model_dir, name)) as f:
            cfg = json.load(f)
        cfg["bos_token_id"], cfg["eos_token_id"] = bos, eos
        if name == "config.json":
            cfg["rms_norm_eps"] = 1e-3
        with open(os.path.join(out, name), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        os.remove(os.path.join(model_dir, name))
    for name in ("model.safetensors", "tokenizer.json"):
        os.replace(os.path.join(model_dir, name), os.path.join(out, name))
    os.rmdir(model_dir)
    print("llamoe-mkmodel -o DIR " + " ".join(COMMAND) + " --tokenizer tokenizer.json")
    print(f"bos {bos}, eos {eos}, rms_norm_eps 1e-3 set in config.json")


if __name__ == "__main__":
    main()
