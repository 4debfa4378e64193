/* mg_moe: the generated MoE layer on the GPU: build, workspace, forward and backward.
 *
 * Kernels come from the templates (templates/moe_*.cu), generated for the plan, compiled by
 * NVRTC through the cache, loaded with cudaLibraryLoadData and launched with
 * cudaLaunchKernel (CUDA runtime only). The grid rules below mirror the comments above each
 * kernel entry in the templates. */
#include "mg_moe.h"
#include "mg_cuda.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "../templates/moe_params.h"   /* the kernels' parameter structs, shared with the device */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ kernel table */
enum {
    K_ROUTER_FWD, K_ROUTER_STATS, K_ROUTER_LOSS, K_ROUTER_BWD, K_ROUTER_DWG, K_ROUTER_DWGSUM, K_ROUTER_DX,
    K_DISPATCH_COUNT, K_DISPATCH_SCAN, K_DISPATCH_PLACE,
    K_UP_FWD, K_UP_DGRAD, K_UP_WGRAD,
    K_DOWN_FWD, K_DOWN_DGRAD, K_DOWN_WGRAD,
    K_COMBINE_FWD, K_COMBINE_BWD, K_COMBINE_DX,
    K_COUNT
};
static const struct { mg_family_id fam; const char *entry; } kernel_defs[K_COUNT] = {
    {MG_FAM_ROUTER, "fwd"}, {MG_FAM_ROUTER, "stats"}, {MG_FAM_ROUTER, "loss"}, {MG_FAM_ROUTER, "bwd"},
    {MG_FAM_ROUTER, "dwg"}, {MG_FAM_ROUTER, "dwgsum"}, {MG_FAM_ROUTER, "dx"},
    {MG_FAM_DISPATCH, "count"}, {MG_FAM_DISPATCH, "scan"}, {MG_FAM_DISPATCH, "place"},
    {MG_FAM_UP, "fwd"}, {MG_FAM_UP, "dgrad"}, {MG_FAM_UP, "wgrad"},
    {MG_FAM_DOWN, "fwd"}, {MG_FAM_DOWN, "dgrad"}, {MG_FAM_DOWN, "wgrad"},
    {MG_FAM_COMBINE, "fwd"}, {MG_FAM_COMBINE, "bwd"}, {MG_FAM_COMBINE, "dx"},
};
/* Operand layouts of the GEMM entries (K contiguous for A, for B), for the smem size. */
static const int gemm_layout[3][2] = {{1, 1}, {1, 0}, {0, 0}};   /* fwd, dgrad, wgrad */

struct mg_moe {
    mg_plan plan;
    int d, ff, f2, E, k, S, dtype, esz, max_T;
    double cf;
    mg_tile tup, tdn;
    cudaLibrary_t lib[MG_FAM_COUNT];
    cudaKernel_t kern[K_COUNT];
    char sym[K_COUNT][192];
    size_t smem[K_COUNT];
    /* workspace */
    void *ws;
    size_t ws_bytes;
    float *logits, *probs, *lse, *topk_w, *psum, *lse2, *loss, *z, *z_sh, *dw, *dlogits, *dxs, *dxs_sh,
        *dxr, *dwg_part;
    int *topk_idx, *hist, *counts_all, *counts, *offsets, *n_dropped, *tile_off_up, *tile_off_dn, *perm,
        *slot_of;
    void *a, *h, *a_sh, *h_sh, *dz, *da, *da_sh;
};

static int cdiv(long long a, long long b) { return (int)((a + b - 1) / b); }

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
static size_t gemm_smem(const mg_tile *t, int esz, int which)
{
    return (size_t)MG_GEMM_SMEM_BYTES(t->bm, t->bn, t->bk, t->stages, esz, gemm_layout[which][0],
                                      gemm_layout[which][1]);
}

static int load_kernels(mg_moe *m, mg_err *err);

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
    int n = m->plan.n_families;
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
    return load_kernels(m, err);
}

static int load_kernels(mg_moe *m, mg_err *err)
{
    int dev = 0, optin = 0;
    MG_CUDA_TRY(cudaGetDevice(&dev), err);
    MG_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), err);
    for (int k = 0; k < K_COUNT; k++) {
        const mg_family *f = &m->plan.fam[kernel_defs[k].fam];
        int ei = mg_family_entry_index(f, kernel_defs[k].entry);
        if (ei < 0)
            return mg_err_set(err, MG_EINTERNAL, "family %s has no entry '%s' (templates and runtime disagree)",
                              f->name, kernel_defs[k].entry);
        mg_plan_entry_symbol(f, ei, m->sym[k], sizeof m->sym[k]);
        cudaError_t e = cudaLibraryGetKernel(&m->kern[k], m->lib[f->id], m->sym[k]);
        if (e != cudaSuccess)
            return mg_err_set(err, MG_EINTERNAL, "cudaLibraryGetKernel(%s): %s", m->sym[k], cudaGetErrorString(e));
        m->smem[k] = 0;
        if (k >= K_UP_FWD && k <= K_DOWN_WGRAD) {
            const mg_tile *t = k <= K_UP_WGRAD ? &m->tup : &m->tdn;
            m->smem[k] = gemm_smem(t, m->esz, (k - K_UP_FWD) % 3);
            if (m->smem[k] > (size_t)optin)
                return mg_err_set(err, MG_EUSER,
                                  "%s needs %zu bytes of shared memory, the device allows %d: use a smaller "
                                  "tile (bk or stages)", m->sym[k], m->smem[k], optin);
            if (m->smem[k] > 48 * 1024)
                MG_CUDA_TRY(cudaFuncSetAttribute((const void *)m->kern[k], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)m->smem[k]), err);
        }
    }
    return MG_OK;
}

/* Carves the workspace: pass 1 (base NULL) only sums sizes. */
static size_t carve(mg_moe *m, char *base)
{
    size_t off = 0;
#define TAKE(ptr, bytes) do { size_t b_ = (size_t)(bytes); \
        if (base) *(void **)&(ptr) = b_ ? base + off : NULL; \
        off += (b_ + 255) & ~(size_t)255; } while (0)
    const size_t Tm = (size_t)m->max_T, TK = Tm * (size_t)m->k, E = (size_t)m->E, d = (size_t)m->d;
    const size_t ff = (size_t)m->ff, f2 = (size_t)m->f2, S = (size_t)m->S, es = (size_t)m->esz;
    const size_t n_chunks = (TK + MG_DISPATCH_CHUNK - 1) / MG_DISPATCH_CHUNK;
    const size_t n_split = (Tm + MG_DWG_SPLIT - 1) / MG_DWG_SPLIT;
    TAKE(m->logits, Tm * E * 4);
    TAKE(m->probs, Tm * E * 4);
    TAKE(m->dlogits, Tm * E * 4);
    TAKE(m->lse, Tm * 4);
    TAKE(m->topk_idx, TK * 4);
    TAKE(m->topk_w, TK * 4);
    TAKE(m->dw, TK * 4);
    TAKE(m->perm, TK * 4);
    TAKE(m->slot_of, TK * 4);
    TAKE(m->hist, n_chunks * E * 4);
    TAKE(m->counts_all, E * 4);
    TAKE(m->counts, E * 4);
    TAKE(m->offsets, (E + 1) * 4);
    TAKE(m->tile_off_up, (E + 1) * 4);
    TAKE(m->tile_off_dn, (E + 1) * 4);
    TAKE(m->n_dropped, 4);
    TAKE(m->psum, E * 4);
    TAKE(m->lse2, 4);
    TAKE(m->loss, 8);
    TAKE(m->a, TK * f2 * es);
    TAKE(m->h, TK * ff * es);
    TAKE(m->z, TK * d * 4);
    TAKE(m->dz, TK * d * es);
    TAKE(m->da, TK * f2 * es);
    TAKE(m->dxs, TK * d * 4);
    TAKE(m->dxr, Tm * d * 4);
    TAKE(m->dwg_part, n_split > 1 ? n_split * E * d * 4 : 0);
    TAKE(m->a_sh, S * Tm * f2 * es);
    TAKE(m->h_sh, S * Tm * ff * es);
    TAKE(m->z_sh, S * Tm * d * 4);
    TAKE(m->da_sh, S ? Tm * f2 * es : 0);
    TAKE(m->dxs_sh, S * Tm * d * 4);
#undef TAKE
    return off;
}

int mg_moe_create(const mg_plan *plan, const mg_moe_opts *o, int max_tokens, mg_moe **out, mg_err *err)
{
    *out = NULL;
    if (max_tokens < 1) return mg_err_set(err, MG_EUSER, "mg_moe_create: max_tokens = %d: must be >= 1", max_tokens);
    mg_moe *m = calloc(1, sizeof *m);
    if (!m) return mg_err_set(err, MG_EINTERNAL, "mg_moe_create: out of memory");
    m->plan = *plan;
    const mg_spec *s = &plan->spec;
    m->d = s->model.d_model;
    m->ff = s->moe.d_ff;
    m->f2 = m->ff * (mg_act_is_glu(s->moe.activation) ? 2 : 1);
    m->E = s->moe.experts;
    m->k = s->moe.top_k;
    m->S = s->moe.shared_experts;
    m->dtype = s->dtype;
    m->esz = mg_dtype_size(s->dtype);
    m->cf = s->moe.capacity_factor;
    m->max_T = max_tokens;
    m->tup = plan->fam[MG_FAM_UP].tile;
    m->tdn = plan->fam[MG_FAM_DOWN].tile;
    int rc = compile_and_load(m, o, err);
    if (!rc) {
        m->ws_bytes = carve(m, NULL);
        cudaError_t e = cudaMalloc(&m->ws, m->ws_bytes);
        if (e != cudaSuccess)
            rc = mg_err_set(err, MG_EUSER, "workspace of %.1f MiB for %d tokens: %s", m->ws_bytes / 1048576.0,
                            max_tokens, cudaGetErrorString(e));
        else carve(m, m->ws);
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

int mg_moe_capacity(const mg_moe *m, int T)
{
    if (!(m->cf > 0)) return -1;
    return (int)ceil(m->cf * ((double)T * m->k) / m->E);   /* same expression as mg_ref_capacity */
}

void mg_moe_get_state(const mg_moe *m, mg_moe_state *s)
{
    s->logits = m->logits;
    s->probs = m->probs;
    s->topk_idx = m->topk_idx;
    s->topk_w = m->topk_w;
    s->counts = m->counts;
    s->counts_all = m->counts_all;
    s->offsets = m->offsets;
    s->perm = m->perm;
    s->slot_of = m->slot_of;
    s->n_dropped = m->n_dropped;
    s->loss = m->loss;
    s->dlogits = m->dlogits;
}

/* ------------------------------------------------------------------ launch */
static int launch(const mg_moe *m, int k, unsigned gx, unsigned gy, unsigned gz, unsigned block, size_t smem,
                  cudaStream_t st, void *params, mg_err *err)
{
    if (!gx || !gy || !gz) return MG_OK;
    dim3 grid = {gx, gy, gz}, blk = {block, 1, 1};
    void *args[1] = {params};
    cudaError_t e = cudaLaunchKernel((const void *)m->kern[k], grid, blk, args, smem, st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess)
        return mg_err_set(err, MG_EINTERNAL, "launch %s (grid %u,%u,%u block %u smem %zu): %s", m->sym[k], gx, gy,
                          gz, block, smem, cudaGetErrorString(e));
    return MG_OK;
}
#define LAUNCH(k, gx, gy, gz, block, smem, params) do { \
        int rc_ = launch(m, (k), (gx), (gy), (gz), (block), (smem), stream, &(params), err); \
        if (rc_) return rc_; } while (0)

static int check_T(const mg_moe *m, int T, mg_err *err)
{
    if (T < 1 || T > m->max_T)
        return mg_err_set(err, MG_EUSER, "T = %d: must be in [1, max_tokens = %d]", T, m->max_T);
    return MG_OK;
}

/* Byte offset helper for dtype buffers. */
static const void *cptr(const void *p, size_t elems, int esz) { return p ? (const char *)p + elems * (size_t)esz : NULL; }
static void *mptr(void *p, size_t elems, int esz) { return p ? (char *)p + elems * (size_t)esz : NULL; }

int mg_moe_forward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, void *y, int T,
                   mg_err *err)
{
    int rc = check_T(m, T, err);
    if (rc) return rc;
    const int E = m->E, k = m->k, d = m->d, ff = m->ff, f2 = m->f2, es = m->esz;
    const int TK = T * k, n_chunks = cdiv(TK, MG_DISPATCH_CHUNK);
    const mg_tile *tu = &m->tup, *td = &m->tdn;

    /* router: logits, probabilities, top-k */
    moe_router_fwd_params rf = {x, w->wg, w->bias, m->logits, m->probs, m->lse, m->topk_idx, m->topk_w, T};
    LAUNCH(K_ROUTER_FWD, cdiv(T, MG_ROUTER_WARPS), 1, 1, 32 * MG_ROUTER_WARPS, 0, rf);

    /* dispatch: count, scan, place */
    moe_dispatch_params dp = {m->topk_idx, m->hist, m->counts_all, m->counts, m->offsets, m->n_dropped,
                              m->tile_off_up, m->tile_off_dn, m->perm, m->slot_of, tu->bm, td->bm,
                              mg_moe_capacity(m, T), T};
    LAUNCH(K_DISPATCH_COUNT, cdiv(n_chunks, MG_DISPATCH_WARPS), 1, 1, 32 * MG_DISPATCH_WARPS, 0, dp);
    LAUNCH(K_DISPATCH_SCAN, 1, 1, 1, 256, 0, dp);
    LAUNCH(K_DISPATCH_PLACE, cdiv(n_chunks, MG_DISPATCH_WARPS), 1, 1, 32 * MG_DISPATCH_WARPS, 0, dp);

    /* losses */
    moe_router_stats_params rs = {m->probs, m->lse, m->psum, m->lse2, T};
    LAUNCH(K_ROUTER_STATS, E + 1, 1, 1, 256, 0, rs);
    moe_router_loss_params rl = {m->psum, m->lse2, m->counts_all, m->loss, T};
    LAUNCH(K_ROUTER_LOSS, 1, 1, 1, 256, 0, rl);

    /* routed experts */
    moe_up_fwd_params uf = {x, w->w_up, m->a, m->h, m->offsets, m->tile_off_up, m->perm, E, T};
    LAUNCH(K_UP_FWD, cdiv(TK, tu->bm) + E, cdiv(f2, tu->bn), 1, 32 * tu->warps, m->smem[K_UP_FWD], uf);
    moe_down_fwd_params df = {m->h, w->w_dn, m->z, m->offsets, m->tile_off_dn, E, T};
    LAUNCH(K_DOWN_FWD, cdiv(TK, td->bm) + E, cdiv(d, td->bn), 1, 32 * td->warps, m->smem[K_DOWN_FWD], df);

    /* shared experts: identity routing, one launch pair each */
    for (int s = 0; s < m->S; s++) {
        moe_up_fwd_params su = {x, cptr(w->ws_up, (size_t)s * f2 * d, es), mptr(m->a_sh, (size_t)s * T * f2, es),
                                mptr(m->h_sh, (size_t)s * T * ff, es), NULL, NULL, NULL, 1, T};
        LAUNCH(K_UP_FWD, cdiv(T, tu->bm), cdiv(f2, tu->bn), 1, 32 * tu->warps, m->smem[K_UP_FWD], su);
        moe_down_fwd_params sd = {mptr(m->h_sh, (size_t)s * T * ff, es), cptr(w->ws_dn, (size_t)s * d * ff, es),
                                  m->z_sh + (size_t)s * T * d, NULL, NULL, 1, T};
        LAUNCH(K_DOWN_FWD, cdiv(T, td->bm), cdiv(d, td->bn), 1, 32 * td->warps, m->smem[K_DOWN_FWD], sd);
    }

    moe_combine_fwd_params cf = {m->z, m->slot_of, m->topk_w, m->S ? m->z_sh : NULL, m->S, y, T};
    LAUNCH(K_COMBINE_FWD, T, 1, 1, 256, 0, cf);
    return MG_OK;
}

int mg_moe_backward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, const void *dy,
                    void *dx, const mg_moe_grads *g, int T, mg_err *err)
{
    int rc = check_T(m, T, err);
    if (rc) return rc;
    if (m->S && (!g->dws_up || !g->dws_dn || !w->ws_up || !w->ws_dn))
        return mg_err_set(err, MG_EUSER, "backward: %d shared experts need ws_up/ws_dn and dws_up/dws_dn", m->S);
    const int E = m->E, k = m->k, d = m->d, ff = m->ff, f2 = m->f2, es = m->esz;
    const int TK = T * k;
    const mg_tile *tu = &m->tup, *td = &m->tdn;

    /* combine backward: dz per slot, dL/dw per assignment */
    moe_combine_bwd_params cb = {dy, m->z, m->slot_of, m->topk_w, m->dz, m->dw, T};
    LAUNCH(K_COMBINE_BWD, T, 1, 1, 256, 0, cb);
    /* router backward: dlogits */
    moe_router_bwd_params rb = {m->logits, m->topk_idx, m->topk_w, m->dw, m->counts_all, m->dlogits, T};
    LAUNCH(K_ROUTER_BWD, cdiv(T, MG_ROUTER_WARPS), 1, 1, 32 * MG_ROUTER_WARPS, 0, rb);

    /* routed experts */
    moe_down_dgrad_params dd = {m->dz, m->a, w->w_dn, m->da, m->offsets, m->tile_off_dn, E, T};
    LAUNCH(K_DOWN_DGRAD, cdiv(TK, td->bm) + E, cdiv(ff, td->bn), 1, 32 * td->warps, m->smem[K_DOWN_DGRAD], dd);
    moe_down_wgrad_params dw = {m->dz, m->h, g->dw_dn, m->offsets, E, T};
    LAUNCH(K_DOWN_WGRAD, cdiv(d, td->bm) * cdiv(ff, td->bn), E, 1, 32 * td->warps, m->smem[K_DOWN_WGRAD], dw);
    moe_up_dgrad_params ud = {m->da, w->w_up, m->dxs, m->offsets, m->tile_off_up, E, T};
    LAUNCH(K_UP_DGRAD, cdiv(TK, tu->bm) + E, cdiv(d, tu->bn), 1, 32 * tu->warps, m->smem[K_UP_DGRAD], ud);
    moe_up_wgrad_params uw = {m->da, x, g->dw_up, m->offsets, m->perm, E, T};
    LAUNCH(K_UP_WGRAD, cdiv(f2, tu->bm) * cdiv(d, tu->bn), E, 1, 32 * tu->warps, m->smem[K_UP_WGRAD], uw);

    /* shared experts: dz = dy (weight 1), identity rows */
    for (int s = 0; s < m->S; s++) {
        moe_down_dgrad_params sdd = {dy, mptr(m->a_sh, (size_t)s * T * f2, es), cptr(w->ws_dn, (size_t)s * d * ff, es),
                                     m->da_sh, NULL, NULL, 1, T};
        LAUNCH(K_DOWN_DGRAD, cdiv(T, td->bm), cdiv(ff, td->bn), 1, 32 * td->warps, m->smem[K_DOWN_DGRAD], sdd);
        moe_down_wgrad_params sdw = {dy, mptr(m->h_sh, (size_t)s * T * ff, es), g->dws_dn + (size_t)s * d * ff,
                                     NULL, 1, T};
        LAUNCH(K_DOWN_WGRAD, cdiv(d, td->bm) * cdiv(ff, td->bn), 1, 1, 32 * td->warps, m->smem[K_DOWN_WGRAD], sdw);
        moe_up_dgrad_params sud = {m->da_sh, cptr(w->ws_up, (size_t)s * f2 * d, es), m->dxs_sh + (size_t)s * T * d,
                                   NULL, NULL, 1, T};
        LAUNCH(K_UP_DGRAD, cdiv(T, tu->bm), cdiv(d, tu->bn), 1, 32 * tu->warps, m->smem[K_UP_DGRAD], sud);
        moe_up_wgrad_params suw = {m->da_sh, x, g->dws_up + (size_t)s * f2 * d, NULL, NULL, 1, T};
        LAUNCH(K_UP_WGRAD, cdiv(f2, tu->bm) * cdiv(d, tu->bn), 1, 1, 32 * tu->warps, m->smem[K_UP_WGRAD], suw);
    }

    /* router weight and input gradients */
    const int n_split = cdiv(T, MG_DWG_SPLIT);
    moe_router_dwg_params rg = {m->dlogits, x, m->dwg_part, g->dwg, T};
    LAUNCH(K_ROUTER_DWG, cdiv(d, 128), cdiv(E, 8), n_split, 128, 0, rg);
    if (n_split > 1) LAUNCH(K_ROUTER_DWGSUM, cdiv((long long)E * d, 256), 1, 1, 256, 0, rg);
    moe_router_dx_params rx = {m->dlogits, w->wg, m->dxr, T};
    LAUNCH(K_ROUTER_DX, cdiv(T, MG_RDX_TOKENS), 1, 1, 256, 0, rx);

    moe_combine_dx_params cx = {m->dxs, m->slot_of, m->dxr, m->S ? m->dxs_sh : NULL, m->S, dx, T};
    LAUNCH(K_COMBINE_DX, T, 1, 1, 256, 0, cx);
    return MG_OK;
}
