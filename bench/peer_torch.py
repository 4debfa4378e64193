#!/usr/bin/env python3
"""peer_torch: the PyTorch peers of a moegen MoE layer, timed fwd+bwd on the bench shapes.

Two peers, both bf16, both the whole layer (routing included), both with autograd backward
from a fixed random dy:

  grouped  router logits -> softmax (fp32) -> top-k -> renormalize; argsort the T·k
           assignments by expert; gather x; torch._grouped_mm up-projection [T·k,d]x[E,d,2ff]
           with int32 cumulative offsets; SwiGLU; torch._grouped_mm down-projection; scale by
           the routing weights; index_add back to [T,d].
  hf_loop  the eager loop of transformers' MixtralSparseMoeBlock: the same routing, then for
           each expert that got tokens: idx, top_x = where(mask[e]); x[top_x] -> MLP ->
           * weight -> index_add_. The MLP uses the fused gate_up weight [2ff,d] as
           transformers v5's MixtralExperts does (v4 used two separate linears).

Weights: w_up [E, 2ff, d] (rows [0,ff) gate, [ff,2ff) up), w_dn [E, d, ff], router wg [E, d]:
the layout of moegen's CPU reference (runtime/mg_ref.h). Renormalized top-k on every shape.

torch._grouped_mm(mat_a, mat_b, offs=None, bias=None, out_dtype=None): for 2D x 3D, mat_a is
[M_total, K], mat_b is [E, K, N] (we pass w.transpose(-2, -1), a column-major view, which is
what its autograd formulas expect), offs[i] is the int32 end row of group i. Alignment, as
read in PyTorch's source (GroupedMMUtils.h, cuda/GroupMMCommon.cuh): base pointers and the
non-unit stride must be 16-byte aligned (d, ff multiples of 8: true for every shape here); the
per-group row counts along the jagged dimension need 16-byte alignment only where that
dimension is the contiguous one, which is not the case for the 2D x 3D forward nor for the
transposed views autograd uses in the backward. So no padding by default. --align N pads
every expert group to a multiple of N rows (zero rows) should a build insist; the padding
rows cost FLOPs that are not counted, and the JSON records the setting.

Expert-GEMM FLOPs (fwd+bwd) = 3·(2·T·k·d·2ff + 2·T·k·ff·d); the router GEMM is not counted.

Timing: CUDA events around each fwd+bwd, warm-up first, median of >= 20 runs (a per-case time
budget may cap a very slow case at fewer runs; the count is printed and recorded).

usage: python3 bench/peer_torch.py [--json FILE] [--shapes mixtral,olmoe] [--runs 20]
                                   [--warmup 3] [--seed 0] [--align 1] [--skip-hf]
"""

import argparse
import json
import math
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # this machine may have no torch: main() says so and exits 0
    torch = F = None

SHAPES = [
    # name          T      d      ff     E    k
    ("mixtral",     8192,  4096,  14336, 8,   2),
    ("olmoe",       16384, 2048,  1024,  64,  8),
    ("finegrained", 16384, 2048,  768,   128, 8),
    ("small",       16384, 768,   3072,  8,   2),
]

RTOL = 3e-2  # bf16 peers with different summation orders; rel-norm agreement expected ~1e-3


def expert_flop(T, d, ff, k):
    Tk = T * k
    return 3.0 * (2.0 * Tk * d * 2 * ff + 2.0 * Tk * ff * d)


def log(*a):
    print(*a, flush=True)


# ---- the two peers ------------------------------------------------------------------------

def route(x, wg, k):
    """Mixtral routing: bf16 logits, fp32 softmax, top-k, renormalize, back to x's dtype."""
    logits = x @ wg.t()
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, sel = torch.topk(probs, k, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    return w.to(x.dtype), sel


def moe_grouped(x, wg, w_up, w_dn, k, align=1):
    T, d = x.shape
    E, ff = w_up.shape[0], w_dn.shape[2]
    w, sel = route(x, wg, k)
    flat = sel.reshape(-1)                                   # [T·k], slot t·k + j
    order = torch.argsort(flat, stable=True)                 # expert-sorted slots
    tok = order // k                                         # token of each sorted slot
    # Counts without a host sync (bincount would sync to size its output).
    counts = torch.zeros(E, dtype=torch.int64, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat))
    xs = x.index_select(0, tok)                              # gather [T·k, d]
    pos = None
    if align > 1:
        # Pad each group to a multiple of `align` rows. The padded total is bounded by
        # T·k + E·(align-1) statically, so again no sync; rows past offs[-1] are never read.
        Tk = xs.shape[0]
        padded = (counts + align - 1) // align * align
        pend = torch.cumsum(padded, 0)
        start = torch.cumsum(counts, 0) - counts
        e_sorted = flat.index_select(0, order)
        rank = torch.arange(Tk, device=x.device) - start.index_select(0, e_sorted)
        pos = (pend - padded).index_select(0, e_sorted) + rank
        xs = xs.new_zeros(Tk + E * (align - 1), d).index_copy(0, pos, xs)
        offs = pend.to(torch.int32)
    else:
        offs = torch.cumsum(counts, 0).to(torch.int32)
    h = torch._grouped_mm(xs, w_up.transpose(-2, -1), offs=offs)      # [rows, 2ff]
    a = F.silu(h[:, :ff]) * h[:, ff:]                                  # SwiGLU
    z = torch._grouped_mm(a, w_dn.transpose(-2, -1), offs=offs)       # [rows, d]
    if pos is not None:
        z = z.index_select(0, pos)
    z = z * w.reshape(-1).index_select(0, order).unsqueeze(-1)
    return x.new_zeros(T, d).index_add(0, tok, z)


def moe_hf_loop(x, wg, w_up, w_dn, k):
    T, d = x.shape
    E = w_up.shape[0]
    w, sel = route(x, wg, k)
    y = x.new_zeros(T, d)
    expert_mask = F.one_hot(sel, num_classes=E).permute(2, 1, 0)     # [E, k, T]
    expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for e in expert_hit.flatten().tolist():
        idx, top_x = torch.where(expert_mask[e])
        cur = x[top_x]
        gate, up = F.linear(cur, w_up[e]).chunk(2, dim=-1)
        out = F.linear(F.silu(gate) * up, w_dn[e]) * w[top_x, idx, None]
        y.index_add_(0, top_x, out.to(x.dtype))
    return y


# ---- checking and timing ------------------------------------------------------------------

def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def fwd_bwd(fn, params, dy):
    for p in params:
        p.grad = None
    y = fn()
    y.backward(dy)
    return y


def check(fa, fb, params, dy):
    """Runs both peers once; returns {tensor: rel err of a vs b} over y and every gradient."""
    ya = fwd_bwd(fa, params, dy).detach()
    ga = [p.grad.detach().clone() for p in params]
    yb = fwd_bwd(fb, params, dy).detach()
    gb = [p.grad.detach() for p in params]
    names = ["y", "dx", "dwg", "dw_up", "dw_dn"]
    errs = [rel_err(ya, yb)] + [rel_err(a, b) for a, b in zip(ga, gb)]
    for p in params:
        p.grad = None
    return dict(zip(names, errs))


def time_events(step, warmup, runs, budget_s, deadline, min_runs=5):
    """Median ms of step() over `runs` event-bracketed calls; stops early (>= min_runs) once
    the host has spent budget_s in this case or the whole script is past `deadline`
    (perf_counter seconds), so it always ends in bounded time. Returns (median, min, runs)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    ev = []
    t0 = time.perf_counter()
    for i in range(runs):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        ev.append((s, e))
        now = time.perf_counter()
        if i + 1 >= min_runs and (now - t0 > budget_s or now > deadline):
            break
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in ev)
    n = len(ms)
    med = ms[n // 2] if n % 2 else 0.5 * (ms[n // 2 - 1] + ms[n // 2])
    return med, ms[0], n


def bench_shape(name, T, d, ff, E, k, args):
    dev = torch.device("cuda")
    bf = torch.bfloat16
    g = torch.Generator(device=dev)
    g.manual_seed(args.seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, dtype=torch.float32, generator=g) * scale).to(bf)

    x = randn(T, d).requires_grad_()
    wg = randn(E, d, scale=d ** -0.5).requires_grad_()
    w_up = randn(E, 2 * ff, d, scale=d ** -0.5).requires_grad_()
    w_dn = randn(E, d, ff, scale=ff ** -0.5).requires_grad_()
    dy = randn(T, d)
    params = [x, wg, w_up, w_dn]

    fa = lambda: moe_grouped(x, wg, w_up, w_dn, k, args.align)   # noqa: E731
    fb = lambda: moe_hf_loop(x, wg, w_up, w_dn, k)                 # noqa: E731
    flop = expert_flop(T, d, ff, k)
    row = dict(name=name, T=T, d=d, ff=ff, E=E, k=k, expert_flop=flop, align=args.align)

    if not args.skip_hf:
        errs = check(fa, fb, params, dy)
        ok = all(v <= RTOL and math.isfinite(v) for v in errs.values())
        row["check"] = dict(rel_err=errs, rtol=RTOL, ok=ok)
        log(f"  check grouped vs hf_loop: " +
            " ".join(f"{n}={v:.2e}" for n, v in errs.items()) + ("  ok" if ok else "  MISMATCH"))

    peers = [("grouped", fa)] + ([] if args.skip_hf else [("hf_loop", fb)])
    for peer, fn in peers:
        # The HF loop syncs the host per expert; the budget caps a slow case (Mixtral's loop).
        med, mn, n = time_events(lambda: fwd_bwd(fn, params, dy), args.warmup, args.runs,
                                 args.budget_s, args.deadline)
        with torch.no_grad():   # forward alone, inference style: no graph, no saved tensors
            fmed, _, fn_runs = time_events(fn, args.warmup, args.runs, args.budget_s,
                                           args.deadline)
        row[peer] = dict(fwd_bwd_ms=med, fwd_bwd_min_ms=mn, runs=n, fwd_nograd_ms=fmed,
                         fwd_runs=fn_runs, expert_tflops=flop / (med * 1e-3) / 1e12)
        log(f"  {peer:8s} fwd+bwd {med:9.3f} ms  ({flop / (med * 1e-3) / 1e12:6.1f} TFLOP/s, "
            f"{n} runs)   fwd(no_grad) {fmed:8.3f} ms")
        for p in params:
            p.grad = None

    del x, wg, w_up, w_dn, dy, params
    torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES),
                    help="comma-separated subset of: " + ", ".join(s[0] for s in SHAPES))
    ap.add_argument("--runs", type=int, default=20, help="timed runs per case (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--align", type=int, default=1,
                    help="pad each expert group to a multiple of this many rows (1 = none)")
    ap.add_argument("--budget-s", type=float, default=8.0,
                    help="host seconds per timed case before runs are capped (min 5 runs)")
    ap.add_argument("--deadline-s", type=float, default=150.0,
                    help="after this many seconds every remaining case runs only 5 times")
    ap.add_argument("--skip-hf", action="store_true", help="time only the grouped peer")
    args = ap.parse_args()

    known = {s[0]: s for s in SHAPES}
    want = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in want:
        if s not in known:
            sys.exit(f"peer_torch: --shapes {s}: unknown (known: {', '.join(known)})")
    if args.runs < 1 or args.warmup < 0 or args.align < 1:
        sys.exit("peer_torch: --runs >= 1, --warmup >= 0, --align >= 1")

    if torch is None:
        print("skipped: torch not installed", flush=True)
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device", flush=True)
        return 0
    if not hasattr(torch, "_grouped_mm"):
        sys.exit(f"peer_torch: torch {torch.__version__} has no torch._grouped_mm "
                 "(needs >= 2.8; the bench expects 2.11)")

    torch.manual_seed(args.seed)
    dev = torch.cuda.get_device_name()
    log(f"peer_torch: torch {torch.__version__}, CUDA {torch.version.cuda}, {dev}, "
        f"seed {args.seed}, median of {args.runs} runs after {args.warmup} warm-ups, "
        f"align {args.align}")
    t_start = time.perf_counter()
    args.deadline = t_start + args.deadline_s
    rows = []
    for s in want:
        name, T, d, ff, E, k = known[s]
        log(f"\n{name}: T={T} d={d} ff={ff} E={E} k={k}  "
            f"(expert GEMMs {expert_flop(T, d, ff, k) / 1e12:.2f} TFLOP fwd+bwd)")
        rows.append(bench_shape(name, T, d, ff, E, k, args))

    log("\n%-12s %6s %5s %6s %4s %2s | %12s %8s | %12s %8s | %s" %
        ("shape", "T", "d", "ff", "E", "k", "grouped ms", "TFLOP/s", "hf_loop ms", "TFLOP/s",
         "check"))
    for r in rows:
        hf = r.get("hf_loop")
        log("%-12s %6d %5d %6d %4d %2d | %12.3f %8.1f | %12s %8s | %s" % (
            r["name"], r["T"], r["d"], r["ff"], r["E"], r["k"],
            r["grouped"]["fwd_bwd_ms"], r["grouped"]["expert_tflops"],
            "%.3f" % hf["fwd_bwd_ms"] if hf else "-", "%.1f" % hf["expert_tflops"] if hf else "-",
            ("ok" if r["check"]["ok"] else "MISMATCH") if "check" in r else "-"))
    elapsed = time.perf_counter() - t_start
    log(f"\ntotal {elapsed:.1f} s")

    if args.json:
        out = dict(tool="peer_torch", torch=torch.__version__, cuda=torch.version.cuda,
                   device=dev, seed=args.seed, runs=args.runs, warmup=args.warmup,
                   align=args.align, flop_formula="3*(2*T*k*d*2ff + 2*T*k*ff*d)",
                   elapsed_s=elapsed, shapes=rows)
        d = os.path.dirname(args.json)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        log(f"json: {args.json}")

    bad = [r["name"] for r in rows if "check" in r and not r["check"]["ok"]]
    if bad:
        print(f"peer_torch: grouped and hf_loop disagree on: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
