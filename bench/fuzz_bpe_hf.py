#!/usr/bin/env python3
"""Random strings through moegen's GPT-2 BPE (build/libmoegen.so via ctypes) and HF's.

  python3 bench/fuzz_bpe_hf.py [--n 20000] [--seed 1] [--lib build/libmoegen.so]

Each sample is 1-30 characters drawn from a pool chosen to stress the pre-tokenizer: every
kind of Unicode whitespace (incl. U+001C-1F and U+0085, which Python's isspace has and \\s
does not), contraction letters and apostrophes, letters and numbers outside ASCII (Nl, No),
combining marks, emoji, controls and punctuation. Samples are encoded one by one on both
sides and must agree id for id. Complements check_bpe_hf.py (real text, whole files).
Needs `pip install transformers`; tiktoken, when installed, is checked against HF as well.
"""
import argparse
import ctypes
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import bpe_expected  # noqa: E402  (data_dir, hf_encoder, tiktoken_encoder)

POOL = list(" \n\t\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u205f\u3000\u200b"
            "'sStrelldmvAZaz019\u0663\u096a\xb2\xbd\u216b\xe9\xdf\xf1\u65e5\u672c\ud55c"
            "\U0001f600\U0001f44d\U0001f3fd\u0301\u0308!.,-_\"#$%&()*+/:;<=>?@[\\]^`{|}~"
            "\x00\x07\x7f\ufeff\U0001d7d8\u01c5\u02b0\u3006")


class U32V(ctypes.Structure):
    _fields_ = [("v", ctypes.POINTER(ctypes.c_uint32)), ("n", ctypes.c_size_t), ("cap", ctypes.c_size_t)]


def moegen_encoder(lib_path, d):
    lib = ctypes.CDLL(lib_path)
    tok = ctypes.create_string_buffer(1 << 16)   # mg_tok_bpe, opaque here
    err = ctypes.create_string_buffer(4096)      # mg_err: int code + char msg[1024]
    enc = os.path.join(d, "gpt2", "encoder.json").encode()
    merges = os.path.join(d, "gpt2", "vocab.bpe").encode()
    if lib.mg_tok_bpe_load(tok, enc, merges, err):
        sys.exit("fuzz_bpe_hf: mg_tok_bpe_load: " + err.raw[4:1028].split(b"\0")[0].decode())

    def encode(text):
        b = text.encode("utf-8")
        out = U32V()
        if lib.mg_tok_bpe_encode(tok, b, ctypes.c_size_t(len(b)), ctypes.byref(out), err):
            sys.exit("fuzz_bpe_hf: mg_tok_bpe_encode failed")
        ids = [out.v[i] for i in range(out.n)]
        lib.mg_u32v_free(ctypes.byref(out))
        return ids
    return encode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lib", default="build/libmoegen.so")
    a = ap.parse_args()
    d = bpe_expected.data_dir()
    mine, hf, tk = moegen_encoder(a.lib, d), bpe_expected.hf_encoder(d), bpe_expected.tiktoken_encoder(d)
    rnd = random.Random(a.seed)
    bad = bad_tk = 0
    for _ in range(a.n):
        s = "".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 30)))
        ref = hf(s)
        if tk and tk(s) != ref:
            bad_tk += 1
        got = mine(s)
        if got != ref:
            bad += 1
            if bad <= 5:
                print(f"  MISMATCH {s!r}: moegen {got}, HF {ref}")
    print(f"fuzz_bpe_hf: {a.n} random strings (seed {a.seed}): {bad} mismatches vs HF"
          + (f", {bad_tk} HF/tiktoken disagreements" if tk else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
