#!/usr/bin/env python3
"""Does `moegen data --tokenizer gpt2` match Hugging Face's GPT-2 tokenizer id for id?

  python3 bench/check_bpe_hf.py [--moegen build/moegen] [--corpus wikitext-2] [--splits valid,train]

Runs `moegen data --corpus C --tokenizer gpt2` into a temp dir, reads the token files (header
and sha256 checked here too), and compares each split with GPT2TokenizerFast (Rust `tokenizers`)
loaded from the same gpt2/encoder.json + vocab.bpe, on the split's whole text at once. Also
checks that decoding moegen's ids gives back the text byte for byte. Prints one line per split
and exits 1 on the first mismatch (shown with its position and the surrounding tokens).
Needs `pip install transformers` (4.x or 5.x). Data directory: as moegen's (see --data-dir).
"""
import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import time

HDR = 128
SPLIT_FILES = {  # corpus -> split -> file under the data directory
    "wikitext-2": {"train": "wikitext-2/wiki.train.tokens", "valid": "wikitext-2/wiki.valid.tokens"},
    "ptb": {"train": "ptb/ptb.train.txt", "valid": "ptb/ptb.valid.txt"},
    "tinyshakespeare": {"train": "tinyshakespeare/input.txt", "valid": "tinyshakespeare/input.txt"},
}


def split_text(corpus, split, b):
    """The bytes moegen tokenizes for a split: one-file corpora are cut at 90% of the bytes."""
    if corpus != "tinyshakespeare":
        return b
    cut = int(len(b) * 0.9)
    while 0 < cut < len(b) and (b[cut] & 0xC0) == 0x80:
        cut -= 1
    return b[:cut] if split == "train" else b[cut:]


def data_dir(flag):
    for d in (flag, os.environ.get("MOEGEN_DATA_DIR"), "../shared/data", "/work/shared/data"):
        if d and os.path.isdir(d):
            return d
    sys.exit("check_bpe_hf: no data directory (--data-dir, $MOEGEN_DATA_DIR, ../shared/data, /work/shared/data)")


def read_tok(path):
    """The ids of an mg_tokfile (layout: runtime/mg_tokfile.h), checksum verified."""
    b = open(path, "rb").read()
    if b[:8] != b"MGTOK1\0\0":
        sys.exit(f"{path}: bad magic")
    version, hdr, vocab, width, n = struct.unpack_from("<IIIIQ", b, 8)
    if version != 1 or hdr != HDR or len(b) != HDR + n * width:
        sys.exit(f"{path}: bad header or size")
    if hashlib.sha256(b[:48] + b[80:HDR] + b[HDR:]).digest() != b[48:80]:
        sys.exit(f"{path}: checksum mismatch")
    fmt = "<%d%s" % (n, "H" if width == 2 else "I")
    return list(struct.unpack_from(fmt, b, HDR))


def hf_tokenizer(d):
    from transformers import GPT2TokenizerFast
    vocab, merges = os.path.join(d, "gpt2", "encoder.json"), os.path.join(d, "gpt2", "vocab.bpe")
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)          # transformers 5.x
    if len(tok) != 50257:
        tok = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)  # 4.x
    if len(tok) != 50257 or tok("Hello world")["input_ids"] != [15496, 995]:
        sys.exit(f"check_bpe_hf: GPT2TokenizerFast did not load {vocab} ({len(tok)} tokens)")
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moegen", default="build/moegen")
    ap.add_argument("--corpus", default="wikitext-2", choices=sorted(SPLIT_FILES))
    ap.add_argument("--splits", default="valid")
    ap.add_argument("--data-dir")
    a = ap.parse_args()
    d = data_dir(a.data_dir)
    import tokenizers
    import transformers
    tok = hf_tokenizer(d)
    print(f"check_bpe_hf: transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, data {d}")
    ok = True
    with tempfile.TemporaryDirectory() as out:
        cmd = [a.moegen, "data", "--corpus", a.corpus, "--tokenizer", "gpt2", "--data-dir", d, "-o", out]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"check_bpe_hf: {' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
        print(f"  {' '.join(cmd[:6])}: {time.time() - t0:.2f} s")
        for split in a.splits.split(","):
            text_b = split_text(a.corpus, split, open(os.path.join(d, SPLIT_FILES[a.corpus][split]), "rb").read())
            text = text_b.decode("utf-8")
            mine = read_tok(os.path.join(out, f"{split}.tok"))
            t0 = time.time()
            ref = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            t_hf = time.time() - t0
            rt = tok.decode(mine, clean_up_tokenization_spaces=False) == text
            if mine == ref:
                print(f"  {a.corpus} {split}: MATCH: {len(mine)} ids identical to HF "
                      f"({len(text_b)} bytes, HF {t_hf:.2f} s); decode round trip {'ok' if rt else 'FAILED'}")
                ok = ok and rt
                continue
            ok = False
            i = next((k for k, (x, y) in enumerate(zip(mine, ref)) if x != y), min(len(mine), len(ref)))
            print(f"  {a.corpus} {split}: MISMATCH at id {i} of {len(mine)} (HF {len(ref)}): "
                  f"moegen {mine[max(0, i - 3):i + 4]} {tok.convert_ids_to_tokens(mine[max(0, i - 3):i + 4])}, "
                  f"HF {ref[max(0, i - 3):i + 4]} {tok.convert_ids_to_tokens(ref[max(0, i - 3):i + 4])}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
