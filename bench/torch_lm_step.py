#!/usr/bin/env python3
"""torch_lm_step: an independent PyTorch implementation of moegen's language model
(runtime/TRAINING.md: pre-norm, RMSNorm, RoPE rotate-half, causal GQA attention, MoE with the
same routing and aux/z losses, tied head, counter-based dropout) that recomputes the first
training step from what `moegen train SPEC --check-step --dump DIR` wrote and compares its
loss and gradients against moegen's CPU (grads_cpu.safetensors) and GPU (grads_gpu.safetensors).

    build/moegen train specs/tiny.lua --check-step --dump /tmp/chk
    python3 bench/torch_lm_step.py /tmp/chk            # fp64 by default; --dtype float32

Reads DIR/config.json (architecture, grad_accum, dropout, seed), model.safetensors (the
init, HF names), batch.npy (int32 [A, B, T+1]). Bounds: CPU grads rel L2 <= 1e-5 (fp64 torch)
or 1e-4 (fp32), GPU grads per the dtype (2e-2 bf16, 1e-4 fp32). Supports the routers
softmax_topk (renormalize or not) and switch, dropless (capacity_factor 0) only; sigmoid_topk
and capacity drops exit 2 with a message. Exit 0 when all pass, 1 otherwise.
"""
import argparse, json, math, os, sys

import numpy as np
import torch
from safetensors.torch import load_file

M64 = (1 << 64) - 1


def mix64(z):  # splitmix64 finalizer with the increment, on numpy uint64 (wraps)
    z = (z + np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix64_int(z):
    with np.errstate(over="ignore"):
        return int(mix64(np.array([z & M64], dtype=np.uint64))[0])


def drop_stream(seed, step, micro, site):
    return mix64_int(mix64_int(mix64_int(mix64_int(seed) ^ step) ^ micro) ^ site)


def dropout_mask(stream, n, p):
    """keep(i) iff (mix64(S ^ i) >> 40) >= ceil(p·2^24); kept scaled by float32(1/(1-p))."""
    thr = math.ceil(p * 16777216.0)
    with np.errstate(over="ignore"):
        u = mix64(np.uint64(stream) ^ np.arange(n, dtype=np.uint64)) >> np.uint64(40)
    keep = (u >= np.uint64(thr)).astype(np.float64)
    return torch.from_numpy(keep) * float(np.float32(1.0 / (1.0 - p)))


def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):  # x [B, T, h, hd], rotate-half pairs (i, i + hd/2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def act_fn(name, a, ff):
    if name in ("swiglu", "geglu"):
        g, u = a[..., :ff], a[..., ff:]
        f = torch.nn.functional.silu(g) if name == "swiglu" else torch.nn.functional.gelu(g)
        return f * u
    return torch.nn.functional.gelu(a) if name == "gelu" else torch.relu(a)


def expert_up(W, L, e, glu, pre="experts"):
    up = W[f"model.layers.{L}.mlp.{pre}.{e}.up_proj.weight"]
    return torch.cat([W[f"model.layers.{L}.mlp.{pre}.{e}.gate_proj.weight"], up], 0) if glu else up


def moe(cfg, W, L, x, scale, forced=None):
    """x [N, d] → y, aux, z (aux/z already times the coefficient·scale). forced: [N, k] top-k
    choices to replay (routing.npy, the GPU's, where near-ties broke the other way) or None."""
    E, k, ff, act = cfg["experts"], cfg["top_k"], cfg["d_ff"], cfg["activation"]
    glu = act in ("swiglu", "geglu")
    if cfg["router"] == "sigmoid_topk" or cfg["capacity_factor"] > 0:
        print("torch_lm_step: sigmoid_topk / capacity_factor > 0: not implemented here", file=sys.stderr)
        sys.exit(2)
    N = x.shape[0]
    logits = x @ W[f"model.layers.{L}.mlp.gate.weight"].T
    p = torch.softmax(logits, -1)
    # top-k by p, ties to the lower id (torch.topk is not guaranteed stable: sort by (-p, id))
    order = torch.argsort(-p.detach(), dim=-1, stable=True)[:, :k] if forced is None else forced
    w = torch.gather(p, 1, order)
    if cfg["renormalize"] and cfg["router"] != "switch":
        w = w / w.sum(-1, keepdim=True)
    y = torch.zeros_like(x)
    for e in range(E):
        rows, slot = (order == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = act_fn(act, x[rows] @ expert_up(W, L, e, glu).T, ff)
        out = h @ W[f"model.layers.{L}.mlp.experts.{e}.down_proj.weight"].T
        y = y.index_add(0, rows, out * w[rows, slot].unsqueeze(-1))
    for s in range(cfg["shared_experts"]):
        h = act_fn(act, x @ expert_up(W, L, s, glu, "shared_experts").T, ff)
        y = y + h @ W[f"model.layers.{L}.mlp.shared_experts.{s}.down_proj.weight"].T
    counts = torch.bincount(order.flatten(), minlength=E).to(x.dtype)
    f = counts / (N * k)
    P = p.mean(0)
    aux = cfg["aux_loss"] * scale * E * (f * P).sum()
    lse = torch.logsumexp(logits, -1)
    z = cfg["z_loss"] * scale * (lse * lse).mean()
    return y, aux, z


def dense_ffn(cfg, W, L, x):
    act, ffd = cfg["activation"], cfg["d_ff_dense"]
    glu = act in ("swiglu", "geglu")
    up = W[f"model.layers.{L}.mlp.up_proj.weight"]
    if glu:
        up = torch.cat([W[f"model.layers.{L}.mlp.gate_proj.weight"], up], 0)
    return act_fn(act, x @ up.T, ffd) @ W[f"model.layers.{L}.mlp.down_proj.weight"].T


def forward(cfg, W, tok, micro, A, routing=None):
    """(CE + aux + z)/A of one micro-batch, as moegen's step weights it."""
    B, T1 = tok.shape
    T, d, H, KV, hd = T1 - 1, cfg["d_model"], cfg["n_head"], cfg["n_kv_head"], cfg["head_dim"]
    p, seed, eps = cfg["dropout"], cfg["seed"], cfg["norm_eps"]
    inp, tgt = tok[:, :T], tok[:, 1:]
    dt = W["model.embed_tokens.weight"].dtype
    # RoPE tables in fp64, rounded to fp32 (as moegen)
    i = torch.arange(hd // 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * cfg["rope_theta"] ** (-2 * i / hd)
    cos = ang.cos().float().to(dt)[None, :, None, :]
    sin = ang.sin().float().to(dt)[None, :, None, :]
    x = W["model.embed_tokens.weight"][inp].reshape(B * T, d)
    aux_t = z_t = 0.0
    n_moe = sum(1 for L in range(cfg["n_layer"]) if cfg["every"] > 0 and (L + 1) % cfg["every"] == 0)
    moe_i = 0
    for L in range(cfg["n_layer"]):
        pre = f"model.layers.{L}."
        n1 = rmsnorm(x, W[pre + "input_layernorm.weight"], eps)
        q = (n1 @ W[pre + "self_attn.q_proj.weight"].T).view(B, T, H, hd)
        k = (n1 @ W[pre + "self_attn.k_proj.weight"].T).view(B, T, KV, hd)
        v = (n1 @ W[pre + "self_attn.v_proj.weight"].T).view(B, T, KV, hd)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = H // KV
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        att = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), is_causal=True)
        o = att.transpose(1, 2).reshape(B * T, H * hd) @ W[pre + "self_attn.o_proj.weight"].T
        if p > 0:
            o = o * dropout_mask(drop_stream(seed, 0, micro, 2 * L), o.numel(), p).view_as(o).to(dt)
        x = x + o
        n2 = rmsnorm(x, W[pre + "post_attention_layernorm.weight"], eps)
        is_moe = cfg["every"] > 0 and (L + 1) % cfg["every"] == 0
        if is_moe:
            forced = None if routing is None else routing[micro * n_moe + moe_i]
            moe_i += 1
            f, a, z = moe(cfg, W, L, n2, 1.0 / A, forced)
            aux_t, z_t = aux_t + a, z_t + z
        else:
            f = dense_ffn(cfg, W, L, n2)
        if p > 0:
            f = f * dropout_mask(drop_stream(seed, 0, micro, 2 * L + 1), f.numel(), p).view_as(f).to(dt)
        x = x + f
    nf = rmsnorm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_embeddings"] else W["lm_head.weight"]
    ce = torch.nn.functional.cross_entropy(nf @ head.T, tgt.reshape(-1))
    return ce / A + aux_t + z_t, ce.detach(), aux_t, z_t


def rel_l2(x, ref):
    return float((x - ref).norm() / max(float(ref.norm()), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    cfg = json.load(open(os.path.join(a.dir, "config.json")))
    W = {k: v.to(dt).requires_grad_(True) for k, v in load_file(os.path.join(a.dir, "model.safetensors")).items()
         if not k.endswith("e_score_correction_bias")}
    batch = torch.from_numpy(np.load(os.path.join(a.dir, "batch.npy")).astype(np.int64))
    A = batch.shape[0]
    rpath = os.path.join(a.dir, "routing.npy")   # written when moegen replayed the GPU's routing
    routing = torch.from_numpy(np.load(rpath).astype(np.int64)) if os.path.exists(rpath) else None
    if routing is not None:
        print("torch_lm_step: replaying the GPU's routing from routing.npy (near-ties broke differently)")
    total, ce_s, aux_s, z_s = 0.0, 0.0, 0.0, 0.0
    for m in range(A):
        loss, ce, aux, z = forward(cfg, W, batch[m], m, A, routing)
        loss.backward()
        total += float(loss.detach())
        ce_s += float(ce) / A
        aux_s += float(aux)
        z_s += float(z)
    print(f"torch ({a.dtype}): loss {total:.8f} (ce {ce_s:.8f} aux {aux_s:.3e} z {z_s:.3e})")
    fails = 0
    tol_cpu = 1e-5 if a.dtype == "float64" else 1e-4
    tol_gpu = 1e-4 if cfg["dtype"] == "fp32" else 2e-2
    for side, tol in (("cpu", tol_cpu), ("gpu", tol_gpu)):
        if side in cfg:
            r = abs(total - cfg[side]["loss"]) / abs(total)
            bad = r > (tol if side == "cpu" else (1e-4 if cfg["dtype"] == "fp32" else 1e-2))
            fails += bad
            print(f"  loss vs moegen {side}: {cfg[side]['loss']:.8f}  rel {r:.3e}  {'FAIL' if bad else 'ok'}")
        path = os.path.join(a.dir, f"grads_{side}.safetensors")
        if not os.path.exists(path):
            print(f"  grads_{side}: not in {a.dir} (skipped)")
            continue
        G = load_file(path)
        worst = 0.0
        gtot = math.sqrt(sum(float((W[n].grad.double() ** 2).sum()) for n in W))
        for name in W:
            ref = W[name].grad.double()
            r = rel_l2(G[name].double(), ref)
            small = float(ref.norm()) < 1e-6 * gtot
            bad = (not small) and not (r <= tol)
            fails += bad
            worst = max(worst, r if not small else 0)
            if bad or os.environ.get("VERBOSE"):
                print(f"    {name:58s} |torch| {float(ref.norm()):.4e}  rel L2 {r:.3e}  {'FAIL' if bad else 'ok'}")
        print(f"  grads vs moegen {side}: worst rel L2 {worst:.3e} over {len(W)} tensors (bound {tol:.0e})")
    print("torch_lm_step:", "PASS" if fails == 0 else f"FAIL ({fails})")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
