#!/usr/bin/env python3
"""Writes the reference GPT-2 token ids of a text, for test_data's BPE check.

  python3 tests/bpe_expected.py tests/data/bpe_sample.txt > tests/data/bpe_sample.ids

The reference is Hugging Face's GPT2TokenizerFast (Rust `tokenizers`) loaded from the shared
encoder.json + vocab.bpe; when tiktoken is installed too, its "gpt2" encoding built from the
same two files must agree, or the script fails. Needs `pip install transformers` (tiktoken
optional). The data directory is $MOEGEN_DATA_DIR, else ../shared/data, else /work/shared/data.
Output: the ids, 16 per line.
"""
import os
import sys


def data_dir():
    for d in (os.environ.get("MOEGEN_DATA_DIR"), "../shared/data", "/work/shared/data"):
        if d and os.path.isfile(os.path.join(d, "gpt2", "encoder.json")):
            return d
    sys.exit("bpe_expected: no gpt2/encoder.json under $MOEGEN_DATA_DIR, ../shared/data or /work/shared/data")


def hf_encoder(d):
    """GPT2TokenizerFast over the two files. transformers 5 takes vocab=/merges= and silently
    builds an empty tokenizer from 4.x's vocab_file=/merges_file=, so try both and check."""
    from transformers import GPT2TokenizerFast
    vocab, merges = os.path.join(d, "gpt2", "encoder.json"), os.path.join(d, "gpt2", "vocab.bpe")
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    if len(tok) != 50257:
        tok = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    probe = tok("Hello world", add_special_tokens=False)["input_ids"]
    if len(tok) != 50257 or probe != [15496, 995]:
        sys.exit("bpe_expected: GPT2TokenizerFast did not load %s (%d tokens, 'Hello world' -> %s)"
                 % (vocab, len(tok), probe))
    # split_special_tokens: "<|endoftext|>" in the text is plain text, as in moegen.
    return lambda text: tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def tiktoken_encoder(d):
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        return None
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(d, "gpt2", "vocab.bpe"),
                                            os.path.join(d, "gpt2", "encoder.json"))
    enc = tiktoken.Encoding("gpt2-local",
                            pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    return lambda text: enc.encode_ordinary(text)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    text = open(sys.argv[1], encoding="utf-8", newline="").read()
    d = data_dir()
    ids = hf_encoder(d)(text)
    tk = tiktoken_encoder(d)
    if tk is not None and tk(text) != ids:
        sys.exit("bpe_expected: HF and tiktoken disagree on %s" % sys.argv[1])
    for i in range(0, len(ids), 16):
        print(" ".join(str(x) for x in ids[i:i + 16]))
    print("bpe_expected: %d ids%s" % (len(ids), ", tiktoken agrees" if tk else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
