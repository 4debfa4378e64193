#!/usr/bin/env python3
"""peer_torch_train: the PyTorch training peer of `moegen train` for throughput: the same
architecture (pre-norm RMSNorm, RoPE rotate-half, causal GQA attention via SDPA/flash, MoE
with softmax top-k (+ renormalize), aux + z losses, SwiGLU experts as torch._grouped_mm, tied
head), bf16 autocast on fp32 master weights, fused AdamW, torch.compile on the layer stack.
Reports tokens/s over timed steps after warm-up, the same way moegen prints it (tokens of a
step = batch·seq_len·grad_accum); reads the architecture from a spec's canonical dump or
from moegen --check-step's config.json.

    python3 bench/peer_torch_train.py --config DIR/config.json --batch 64 --steps 30
    python3 bench/peer_torch_train.py --spec-json '{"vocab":33278,...}'     # ad hoc

Random tokens (throughput only; the loss is printed so a broken model shows). Dense layers
(every = 0, wt2-dense) are a plain SwiGLU MLP of d_ff_dense. Prints one JSON line at the end.
"""
import argparse, json, math, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.w, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.w.to(x.dtype)


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, E, ff = c["d_model"], c["experts"], c["d_ff"]
        self.E, self.k, self.ff, self.c = E, c["top_k"], ff, c
        self.gate = nn.Linear(d, E, bias=False)
        self.w_up = nn.Parameter(torch.randn(E, 2 * ff, d) * 0.02)
        self.w_dn = nn.Parameter(torch.randn(E, d, ff) * 0.02)

    def forward(self, x):
        T, d = x.shape
        logits = self.gate(x).float()
        p = logits.softmax(-1)
        w, idx = p.topk(self.k, -1)
        if self.c.get("renormalize", 1):
            w = w / w.sum(-1, keepdim=True)
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.E)
        offs = counts.cumsum(0).to(torch.int32)
        xs = x[order // self.k]
        h = torch._grouped_mm(xs, self.w_up.to(x.dtype).transpose(-2, -1), offs=offs)
        h = F.silu(h[:, :self.ff]) * h[:, self.ff:]
        o = torch._grouped_mm(h, self.w_dn.to(x.dtype).transpose(-2, -1), offs=offs)
        o = o * w.flatten()[order].unsqueeze(-1).to(o.dtype)
        y = torch.zeros_like(x).index_add_(0, order // self.k, o)
        f = counts.float() / (T * self.k)
        aux = self.c["aux_loss"] * self.E * (f * p.mean(0)).sum()
        z = self.c["z_loss"] * torch.logsumexp(logits, -1).pow(2).mean()
        return y, aux + z


class Dense(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["d_model"], c["d_ff_dense"]
        self.up, self.dn, self.f = nn.Linear(d, 2 * f, bias=False), nn.Linear(f, d, bias=False), f

    def forward(self, x):
        h = self.up(x)
        return self.dn(F.silu(h[:, :self.f]) * h[:, self.f:]), x.new_zeros((), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, c, i):
        super().__init__()
        d, H, KV, hd = c["d_model"], c["n_head"], c["n_kv_head"], c["head_dim"]
        self.H, self.KV, self.hd, self.p = H, KV, hd, c.get("dropout", 0.0)
        self.n1, self.n2 = RMSNorm(d, c["norm_eps"]), RMSNorm(d, c["norm_eps"])
        self.qkv = nn.Linear(d, (H + 2 * KV) * hd, bias=False)
        self.o = nn.Linear(H * hd, d, bias=False)
        self.ffn = MoE(c) if c["every"] > 0 and (i + 1) % c["every"] == 0 else Dense(c)

    def forward(self, x, cos, sin, B, T):
        H, KV, hd = self.H, self.KV, self.hd
        q, k, v = self.qkv(self.n1(x)).view(B, T, H + 2 * KV, hd).split([H, KV, KV], 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=H != KV)
        x = x + F.dropout(self.o(a.transpose(1, 2).reshape(B * T, H * hd)), self.p, self.training)
        f, l = self.ffn(self.n2(x))
        return x + F.dropout(f, self.p, self.training), l


class LM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["d_model"])
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c["n_layer"]))
        self.nf = RMSNorm(c["d_model"], c["norm_eps"])
        T, hd = c["seq_len"], c["head_dim"]
        i = torch.arange(hd // 2, dtype=torch.float64)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * c["rope_theta"] ** (-2 * i / hd)
        self.register_buffer("cos", ang.cos().float()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin().float()[None, :, None, :], persistent=False)

    def forward(self, inp, tgt):
        B, T = inp.shape
        x = self.emb(inp).reshape(B * T, -1)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        extra = 0.0
        for b in self.blocks:
            x, l = b(x, cos, sin, B, T)
            extra = extra + l
        logits = self.nf(x) @ self.emb.weight.to(x.dtype).T
        return F.cross_entropy(logits.float(), tgt.reshape(-1)) + extra


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="config.json from moegen train --check-step --dump")
    ap.add_argument("--spec-json", help="the same fields inline")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    c = json.load(open(a.config)) if a.config else json.loads(a.spec_json)
    c.setdefault("head_dim", c["d_model"] // c["n_head"])
    c.setdefault("d_ff_dense", c["d_ff"] * c["top_k"])
    B = a.batch or c["batch"]
    A = a.grad_accum or c.get("grad_accum", 1)
    T, V = c["seq_len"], c["vocab"]
    dev = "cuda"
    torch.manual_seed(0)
    model = LM(c).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    fwd = model if a.no_compile else torch.compile(model)
    tok = torch.randint(0, V, (a.steps + a.warmup, A, B, T + 1), device=dev)

    def step(s):
        for m in range(A):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(tok[s, m, :, :T], tok[s, m, :, 1:]) / A
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    mode = "torch eager+_grouped_mm" if a.no_compile else "torch.compile+_grouped_mm"
    try:
        for s in range(a.warmup):
            step(s)
    except Exception as e:   # torch.compile cannot take every graph: say so, then take the next best
        if a.no_compile:
            raise
        msg = str(e).strip().splitlines()
        print(f"peer_torch_train: torch.compile failed ({type(e).__name__}: {msg[0] if msg else ''}); "
              "compiling again with the MoE blocks left eager", file=sys.stderr)
        torch._dynamo.reset()
        MoE.forward = torch.compiler.disable(MoE.forward)   # a graph break around the data-dependent part
        fwd, mode = torch.compile(model), "torch.compile (MoE blocks eager)+_grouped_mm"
        opt.zero_grad(set_to_none=True)
        try:
            for s in range(a.warmup):
                step(s)
        except Exception as e2:
            msg = str(e2).strip().splitlines()
            print(f"peer_torch_train: that failed too ({type(e2).__name__}: {msg[0] if msg else ''}); eager",
                  file=sys.stderr)
            torch._dynamo.reset()
            fwd, mode = model, "torch eager+_grouped_mm (compile failed)"
            opt.zero_grad(set_to_none=True)
            for s in range(a.warmup):
                step(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(a.warmup, a.warmup + a.steps):
        loss = step(s)
    torch.cuda.synchronize()
    el = time.perf_counter() - t0
    tps = a.steps * A * B * T / el
    n = sum(p.numel() for p in model.parameters())
    out = {"peer": mode,
           "name": c.get("name"), "tok_per_s": round(tps, 1), "step_ms": round(1e3 * el / a.steps, 3),
           "batch": B, "grad_accum": A, "seq_len": T, "params": n, "last_loss": float(loss) * A,
           "mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
