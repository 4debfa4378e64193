/* mg_moe: the generated MoE layer on the GPU: build, workspace, forward and backward.
 *
 * Kernels come from the templates (templates/moe_*.cu), generated for the plan, compiled by
 * NVRTC through the cache and loaded with cudaLibraryLoadData (CUDA runtime only). Kernel
 * lookup, workspace carving, grid rules and launch order live in mg_launch.c, which bundles
 * (`moegen gen --bundle`) ship verbatim. */
#include "mg_moe.h"
#include "mg_cuda.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "mg_launch.h"   /* kernel sequence shared with bundles */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)MG_FAM_ROUTER == MG_LAUNCH_ROUTER && (int)MG_FAM_DISPATCH == MG_LAUNCH_DISPATCH &&
               (int)MG_FAM_UP == MG_LAUNCH_UP && (int)MG_FAM_DOWN == MG_LAUNCH_DOWN &&
               (int)MG_FAM_COMBINE == MG_LAUNCH_COMBINE && MG_FAM_MOE_COUNT == MG_LAUNCH_FAMILIES,
               "mg_launch.h and mg_plan.h disagree on the family order");

struct mg_moe {
    mg_plan plan;
    int max_T;
    cudaLibrary_t lib[MG_FAM_COUNT];
    mg_launch L;       /* dims, kernels, shared memory per launch */
    mg_launch_ws w;    /* pointers into ws, carved for max_T */
    void *ws;
    size_t ws_bytes;
};

/* ------------------------------------------------------------------ host conversions */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* IEEE binary16, round to nearest even (matches cvt.rn.f16.f32). */
static uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);               /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);              /* overflow (>= 65520) -> inf */
    if (a < 0x38800000u) {                                                /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;                      /* < 2^-25: rounds to 0 */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23);                                 /* 14 + (113 - e) ... */
        /* value = m * 2^(e-150); subnormal unit 2^-24 -> q = m >> (126 - e) with e = a>>23 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u;   /* rebias exponent 127 -> 15, keep 23-bit mantissa */
    uint32_t q = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}
static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        if (m == 0) u = sign;
        else {   /* subnormal: normalize */
            int sh = 0;
            while (!(m & 0x400u)) { m <<= 1; sh++; }
            m &= 0x3ffu;
            u = sign | ((uint32_t)(113 - sh) << 23) | (m << 13);
        }
    } else if (e == 31) u = sign | 0x7f800000u | (m << 13);
    else u = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void mg_host_to_dtype(int dtype, const float *src, void *dst, long n)
{
    if (dtype == MG_DTYPE_FP32) { memcpy(dst, src, (size_t)n * 4); return; }
    uint16_t *o = dst;
    for (long i = 0; i < n; i++) o[i] = dtype == MG_DTYPE_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
}
void mg_host_from_dtype(int dtype, const void *src, float *dst, long n)
{
    if (dtype == MG_DTYPE_FP32) { memcpy(dst, src, (size_t)n * 4); return; }
    const uint16_t *s = src;
    for (long i = 0; i < n; i++) dst[i] = dtype == MG_DTYPE_BF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

/* ------------------------------------------------------------------ build */
static int compile_and_load(mg_moe *m, const mg_moe_opts *o, mg_err *err)
{
    char arch[32];
    if (o && o->arch) snprintf(arch, sizeof arch, "%s", o->arch);
    else {
        int dev = 0;
        MG_CUDA_TRY(cudaGetDevice(&dev), err);
        if (mg_cuda_arch(dev, arch, sizeof arch))
            return mg_err_set(err, MG_EINTERNAL, "cannot read the compute capability of device %d", dev);
    }
    mg_genout gen;
    memset(&gen, 0, sizeof gen);
    int rc = mg_gen_sources(&m->plan, &gen, err);
    if (rc) return rc;
    const char *names[MG_FAM_COUNT], *srcs[MG_FAM_COUNT];
    size_t lens[MG_FAM_COUNT];
    int n = MG_FAM_MOE_COUNT;   /* the MoE layer's families only (runtime/mg_lm.c builds the rest) */
    for (int i = 0; i < n; i++) {
        names[i] = m->plan.fam[i].name;
        srcs[i] = gen.src[i].text;
        lens[i] = gen.src[i].len;
    }
    mg_jit_opts jo = {.arch = arch, .no_cache = o ? o->no_cache : 0};
    mg_jit_result res[MG_FAM_COUNT];
    memset(res, 0, sizeof res);
    rc = mg_jit_compile_many(n, names, srcs, lens, &jo, o ? o->jobs : 0, res, err);
    mg_genout_free(&gen);
    if (rc) return rc;
    for (int i = 0; i < n && !rc; i++) {
        if (o && o->verbose)
            printf("  %-64s %s %8.1f ms\n", m->plan.fam[i].name, res[i].cache_hit ? "cached " : "compiled",
                   res[i].compile_ms);
        cudaError_t e = cudaLibraryLoadData(&m->lib[m->plan.fam[i].id], res[i].cubin.data, NULL, NULL, 0,
                                            NULL, NULL, 0);
        if (e != cudaSuccess)
            rc = mg_err_set(err, MG_EINTERNAL, "cudaLibraryLoadData(%s, %s): %s", m->plan.fam[i].name, arch,
                            cudaGetErrorString(e));
    }
    for (int i = 0; i < n; i++) mg_jit_result_free(&res[i]);
    if (rc) return rc;
    const char *fam_name[MG_FAM_COUNT];
    for (int i = 0; i < MG_FAM_COUNT; i++) fam_name[i] = m->plan.fam[i].name;
    char msg[512];
    m->L.wg = !strcmp(arch, "sm_90a");   /* the GEMM families' Hopper path (mg_wgmma.cuh) */
    rc = mg_launch_load(&m->L, &m->L.dim, m->lib, fam_name, msg, sizeof msg);
    return rc ? mg_err_set(err, rc, "%s", msg) : MG_OK;
}

/* The launch dims of a plan. */
static void plan_dims(const mg_plan *plan, mg_launch_dims *dim)
{
    const mg_spec *s = &plan->spec;
    const mg_tile *tu = &plan->fam[MG_FAM_UP].tile, *td = &plan->fam[MG_FAM_DOWN].tile;
    dim->d = s->model.d_model;
    dim->ff = s->moe.d_ff;
    dim->f2 = dim->ff * (mg_act_is_glu(s->moe.activation) ? 2 : 1);
    dim->E = s->moe.experts;
    dim->k = s->moe.top_k;
    dim->S = s->moe.shared_experts;
    dim->esz = mg_dtype_size(s->dtype);
    dim->cf = s->moe.capacity_factor;
    dim->drop_prob = s->moe.drop_policy == MG_DROP_PROBABILITY;
    dim->up = (mg_launch_tile){tu->bm, tu->bn, tu->bk, tu->stages, tu->warps};
    dim->dn = (mg_launch_tile){td->bm, td->bn, td->bk, td->stages, td->warps};
}

int mg_moe_create(const mg_plan *plan, const mg_moe_opts *o, int max_tokens, mg_moe **out, mg_err *err)
{
    *out = NULL;
    if (max_tokens < 1) return mg_err_set(err, MG_EUSER, "mg_moe_create: max_tokens = %d: must be >= 1", max_tokens);
    mg_moe *m = calloc(1, sizeof *m);
    if (!m) return mg_err_set(err, MG_EINTERNAL, "mg_moe_create: out of memory");
    m->plan = *plan;
    m->max_T = max_tokens;
    plan_dims(plan, &m->L.dim);
    int rc = compile_and_load(m, o, err);
    if (!rc) {
        m->ws_bytes = mg_launch_carve(&m->L.dim, max_tokens, NULL, NULL);
        cudaError_t e = cudaMalloc(&m->ws, m->ws_bytes);
        if (e != cudaSuccess)
            rc = mg_err_set(err, MG_EUSER, "workspace of %.1f MiB for %d tokens: %s", m->ws_bytes / 1048576.0,
                            max_tokens, cudaGetErrorString(e));
        else mg_launch_carve(&m->L.dim, max_tokens, m->ws, &m->w);
    }
    if (rc) { mg_moe_destroy(m); return rc; }
    *out = m;
    return MG_OK;
}

void mg_moe_destroy(mg_moe *m)
{
    if (!m) return;
    if (m->ws) cudaFree(m->ws);
    for (int i = 0; i < MG_FAM_COUNT; i++)
        if (m->lib[i]) cudaLibraryUnload(m->lib[i]);
    free(m);
}

size_t mg_moe_workspace_bytes(const mg_moe *m) { return m->ws_bytes; }

int mg_moe_poison(mg_moe *m, cudaStream_t stream, mg_err *err)
{
    MG_CUDA_TRY(cudaMemsetAsync(m->ws, 0xFF, m->ws_bytes, stream), err);
    return MG_OK;
}

int mg_moe_capacity(const mg_moe *m, int T) { return mg_launch_capacity(&m->L.dim, T); }

void mg_moe_get_state(const mg_moe *m, mg_moe_state *s)
{
    s->logits = m->w.logits;
    s->probs = m->w.probs;
    s->topk_idx = m->w.topk_idx;
    s->topk_w = m->w.topk_w;
    s->counts = m->w.counts;
    s->counts_all = m->w.counts_all;
    s->offsets = m->w.offsets;
    s->perm = m->w.perm;
    s->slot_of = m->w.slot_of;
    s->n_dropped = m->w.n_dropped;
    s->loss = m->w.loss;
    s->dlogits = m->w.dlogits;
}

/* ------------------------------------------------------------------ launch */
static mg_launch_weights launch_weights(const mg_moe_weights *w)
{
    mg_launch_weights lw = {w->wg, w->w_up, w->w_dn, w->ws_up, w->ws_dn, w->bias};
    return lw;
}

int mg_moe_forward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, void *y, int T,
                   mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    char msg[512];
    int rc = mg_launch_forward(&m->L, &m->w, stream, &lw, x, y, T, msg, sizeof msg);
    return rc ? mg_err_set(err, rc, "%s", msg) : MG_OK;
}

int mg_moe_backward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, const void *dy,
                    void *dx, const mg_moe_grads *g, int T, mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    mg_launch_grads lg = {g->dwg, g->dw_up, g->dw_dn, g->dws_up, g->dws_dn};
    char msg[512];
    int rc = mg_launch_backward(&m->L, &m->w, stream, &lw, x, dy, dx, &lg, T, msg, sizeof msg);
    return rc ? mg_err_set(err, rc, "%s", msg) : MG_OK;
}

/* ------------------------------------------------------------------ expert-parallel phases */
#define MG_MOE_RET(call) do { char msg_[512]; int rc_ = (call); \
        return rc_ ? mg_err_set(err, rc_, "%s", msg_) : MG_OK; } while (0)

int mg_moe_route(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, int T, mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    MG_MOE_RET(mg_launch_route(&m->L, &m->w, stream, &lw, x, T, msg_, sizeof msg_));
}

int mg_moe_shared_fwd(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, int T, mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    MG_MOE_RET(mg_launch_shared_fwd(&m->L, &m->w, stream, &lw, x, T, msg_, sizeof msg_));
}

int mg_moe_shared_bwd(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, const void *dy,
                      const mg_moe_grads *g, int T, mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    mg_launch_grads lg = {g->dwg, g->dw_up, g->dw_dn, g->dws_up, g->dws_dn};
    MG_MOE_RET(mg_launch_shared_bwd(&m->L, &m->w, stream, &lw, x, dy, &lg, T, msg_, sizeof msg_));
}

int mg_moe_combine(mg_moe *m, cudaStream_t stream, void *y, int T, mg_err *err)
{
    MG_MOE_RET(mg_launch_combine(&m->L, &m->w, stream, y, T, msg_, sizeof msg_));
}

int mg_moe_route_bwd(mg_moe *m, cudaStream_t stream, const void *dy, int T, mg_err *err)
{
    MG_MOE_RET(mg_launch_route_bwd(&m->L, &m->w, stream, dy, T, msg_, sizeof msg_));
}

int mg_moe_router_dx(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, void *dx, float *dwg,
                     int T, mg_err *err)
{
    mg_launch_weights lw = launch_weights(w);
    MG_MOE_RET(mg_launch_router_dx(&m->L, &m->w, stream, &lw, x, dx, dwg, T, msg_, sizeof msg_));
}

int mg_moe_expert_fwd(mg_moe *m, cudaStream_t stream, const void *w_up, const void *w_dn, const void *x, void *a,
                      void *h, void *z, int R, mg_err *err)
{
    MG_MOE_RET(mg_launch_expert_fwd(&m->L, stream, w_up, w_dn, x, a, h, z, R, msg_, sizeof msg_));
}

int mg_moe_expert_bwd(mg_moe *m, cudaStream_t stream, const void *w_up, const void *w_dn, const void *x, const void *a,
                      const void *h, const void *dz, void *da, void *dx, float *g_up, float *g_dn, int R,
                      mg_err *err)
{
    MG_MOE_RET(mg_launch_expert_bwd(&m->L, stream, w_up, w_dn, x, a, h, dz, da, dx, g_up, g_dn, R, msg_,
                                    sizeof msg_));
}

void mg_moe_ep_bufs(const mg_moe *m, void **z, void **dz, void **dxs)
{
    *z = m->w.z;
    *dz = m->w.dz;
    *dxs = m->w.dxs;
}
