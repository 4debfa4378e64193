/* mg_launch: kernel lookup, workspace carving and the launch sequence of one MoE layer.
 * C99 + CUDA runtime only; bundles ship this file verbatim (see mg_launch.h). */
#include "mg_launch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ kernel table */
static const struct { int fam; const char *entry; } mg_launch_defs[MG_K_COUNT] = {
    {MG_LAUNCH_ROUTER, "fwd"}, {MG_LAUNCH_ROUTER, "stats"}, {MG_LAUNCH_ROUTER, "loss"}, {MG_LAUNCH_ROUTER, "bwd"},
    {MG_LAUNCH_ROUTER, "dwg"}, {MG_LAUNCH_ROUTER, "dwgsum"}, {MG_LAUNCH_ROUTER, "dx"},
    {MG_LAUNCH_DISPATCH, "select"}, {MG_LAUNCH_DISPATCH, "count"}, {MG_LAUNCH_DISPATCH, "scan"},
    {MG_LAUNCH_DISPATCH, "place"},
    {MG_LAUNCH_UP, "fwd"}, {MG_LAUNCH_UP, "dgrad"}, {MG_LAUNCH_UP, "wgrad"},
    {MG_LAUNCH_DOWN, "fwd"}, {MG_LAUNCH_DOWN, "dgrad"}, {MG_LAUNCH_DOWN, "wgrad"},
    {MG_LAUNCH_COMBINE, "fwd"}, {MG_LAUNCH_COMBINE, "bwd"}, {MG_LAUNCH_COMBINE, "dx"},
};
/* Operand layouts of the GEMM entries (K contiguous for A, for B), for the smem size. */
static const int mg_launch_gemm_layout[3][2] = {{1, 1}, {1, 0}, {0, 0}};   /* fwd, dgrad, wgrad */

static int mg_launch_cdiv(long long a, long long b) { return (int)((a + b - 1) / b); }

/* The Hopper GEMM path (mg_wgmma.cuh) for GEMM entry k with a family's tile; the device picks
 * it by block size (and mirrors these rules in MG_WG_ON). dgrad/wgrad only with wg_bwd. */
static int mg_launch_wg(const mg_launch *L, const mg_launch_tile *t, int k)
{
    return L->wg && L->dim.esz == 2 && t->bm == 128 && MG_WG_DIMS_OK(L->dim.d, L->dim.ff) &&
           (L->wg_bwd || k == MG_K_UP_FWD || k == MG_K_DOWN_FWD);
}

/* ------------------------------------------------------------------ TMA tensor maps */
/* cuda.h values: CU_TENSOR_MAP_DATA_TYPE_UINT16 (a bit copy, bf16 and fp16 alike),
 * INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION_L2_256B, FLOAT_OOB_FILL_NONE (zeros). */
enum { MG_TM_UINT16 = 1, MG_TM_INTERLEAVE_NONE = 0, MG_TM_SWIZZLE_128B = 3, MG_TM_L2_256B = 3, MG_TM_FILL_ZERO = 0 };

static mg_launch_tmap_encode_fn mg_launch_encoder(void)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    mg_launch_tmap_encode_fn f;
    memcpy(&f, &fn, sizeof f);   /* ISO C has no object-to-function pointer cast */
    return f;
}
/* The map of a row-major 16-bit tensor [G][rows][cols] in 64 x 64 boxes with the 128-byte
 * swizzle (the layout of templates/mg_wgmma.cuh's stages); reads past rows or cols (and
 * past a group's rows) fill zeros. 1 on success. */
static int mg_launch_tmap(const mg_launch *L, mg_tmap *m, const void *base, long long cols, long long rows, int G)
{
    const unsigned long long dims[3] = {(unsigned long long)cols, (unsigned long long)rows, (unsigned long long)G};
    const unsigned long long strides[2] = {(unsigned long long)cols * 2, (unsigned long long)(cols * rows) * 2};
    const unsigned box[3] = {64, 64, 1}, estr[3] = {1, 1, 1};
    return base && L->tmap_encode(m, MG_TM_UINT16, 3, (void *)base, dims, strides, box, estr, MG_TM_INTERLEAVE_NONE,
                                  MG_TM_SWIZZLE_128B, MG_TM_L2_256B, MG_TM_FILL_ZERO) == 0;
}
/* The map of x [rows][cols] (16-bit) in one-row boxes of 64 columns with the 128-byte swizzle:
 * the gathered operand of up fwd (MG_WG_TMA_GATHER), one box per token row,
 * each landing at its tile row of a swizzled stage. Rank 2; columns past cols fill zeros. */
static int mg_launch_tmap_rows(const mg_launch *L, mg_tmap *m, const void *base, long long cols, long long rows)
{
    const unsigned long long dims[2] = {(unsigned long long)cols, (unsigned long long)rows};
    const unsigned long long strides[1] = {(unsigned long long)cols * 2};
    const unsigned box[2] = {64, 1}, estr[2] = {1, 1};
    return base && L->tmap_encode(m, MG_TM_UINT16, 2, (void *)base, dims, strides, box, estr, MG_TM_INTERLEAVE_NONE,
                                  MG_TM_SWIZZLE_128B, MG_TM_L2_256B, MG_TM_FILL_ZERO) == 0;
}
/* The maps of each Hopper GEMM (the operands mg_wgmma.cuh's problem structs read by TMA).
 * rows: slot rows of the per-slot tensors (T*k routed, T for identity routing). x (T rows)
 * is mapped whatever MG_WG_TMA_GATHER was compiled to: a device-only knob. */
static long long mg_tm_rows(const mg_launch *L, const int *offsets, int T)
{
    return offsets ? (long long)T * L->dim.k : T;
}
static int mg_tm_up_fwd(const mg_launch *L, moe_up_fwd_params *p)
{
    return mg_launch_tmap_rows(L, &p->tm_a, p->x, L->dim.d, p->T) &&
           mg_launch_tmap(L, &p->tm_b, p->w_up, L->dim.d, L->dim.f2, p->n_groups);
}
static int mg_tm_up_dgrad(const mg_launch *L, moe_up_dgrad_params *p)
{
    return mg_launch_tmap(L, &p->tm_a, p->da, L->dim.f2, mg_tm_rows(L, p->offsets, p->T), 1) &&
           mg_launch_tmap(L, &p->tm_b, p->w_up, L->dim.d, L->dim.f2, p->n_groups);
}
static int mg_tm_up_wgrad(const mg_launch *L, moe_up_wgrad_params *p)
{
    return mg_launch_tmap(L, &p->tm_a, p->da, L->dim.f2, mg_tm_rows(L, p->offsets, p->T), 1);
}
static int mg_tm_down_fwd(const mg_launch *L, moe_down_fwd_params *p)
{
    return mg_launch_tmap(L, &p->tm_a, p->h, L->dim.ff, mg_tm_rows(L, p->offsets, p->T), 1) &&
           mg_launch_tmap(L, &p->tm_b, p->w_dn, L->dim.ff, L->dim.d, p->n_groups);
}
static int mg_tm_down_dgrad(const mg_launch *L, moe_down_dgrad_params *p)
{
    return mg_launch_tmap(L, &p->tm_a, p->dz, L->dim.d, mg_tm_rows(L, p->offsets, p->T), 1) &&
           mg_launch_tmap(L, &p->tm_b, p->w_dn, L->dim.ff, L->dim.d, p->n_groups) &&
           mg_launch_tmap(L, &p->tm_c, p->a, L->dim.f2, mg_tm_rows(L, p->offsets, p->T), 1);
}
static int mg_tm_down_wgrad(const mg_launch *L, moe_down_wgrad_params *p)
{
    return mg_launch_tmap(L, &p->tm_a, p->dz, L->dim.d, mg_tm_rows(L, p->offsets, p->T), 1) &&
           mg_launch_tmap(L, &p->tm_b, p->h, L->dim.ff, mg_tm_rows(L, p->offsets, p->T), 1);
}
/* N of GEMM entry k (fwd, dgrad, wgrad of up, then down): sizes the Hopper tile. */
static int mg_launch_gemm_n(const mg_launch_dims *m, int k)
{
    const int n[6] = {m->f2, m->d, m->d, m->d, m->ff, m->ff};
    return n[k - MG_K_UP_FWD];
}

/* A launch of the Hopper GEMM (384 threads, smem bytes) over gx CTAs in clusters of 2. */
static void mg_launch_cfg2(cudaLaunchConfig_t *cfg, cudaLaunchAttribute *at, unsigned gx, size_t smem, cudaStream_t st)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->gridDim.x = gx, cfg->gridDim.y = 1, cfg->gridDim.z = 1;
    cfg->blockDim.x = MG_WG_THREADS, cfg->blockDim.y = 1, cfg->blockDim.z = 1;
    cfg->dynamicSmemBytes = smem;
    cfg->stream = st;
    at->id = cudaLaunchAttributeClusterDimension;
    at->val.clusterDim.x = 2, at->val.clusterDim.y = 1, at->val.clusterDim.z = 1;
    cfg->attrs = at;
    cfg->numAttrs = 1;
}

static int mg_launch_fail(char *msg, size_t n, int code, const char *what, const char *sym, cudaError_t e)
{
    if (msg && n) snprintf(msg, n, "%s(%s): %s", what, sym, cudaGetErrorString(e));
    return code;
}

/* Kernel k's dynamic shared memory: checked against the device's opt-in limit (hint ends
 * the message), and opted in above the default 48 KB. */
static int mg_launch_smem(mg_launch *L, int k, size_t bytes, int optin, const char *hint, char *msg, size_t n)
{
    cudaError_t e;
    L->smem[k] = bytes;
    if (bytes > (size_t)optin) {
        if (msg && n)
            snprintf(msg, n, "%s needs %lu bytes of shared memory, the device allows %d%s", L->sym[k],
                     (unsigned long)bytes, optin, hint);
        return MG_LAUNCH_EUSER;
    }
    if (bytes > 48 * 1024 &&
        (e = cudaFuncSetAttribute((const void *)L->kern[k], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)bytes)) != cudaSuccess)
        return mg_launch_fail(msg, n, MG_LAUNCH_ECUDA, "cudaFuncSetAttribute", L->sym[k], e);
    return MG_LAUNCH_OK;
}

/* ------------------------------------------------------------------ load */
MG_LAUNCH_API int mg_launch_load(mg_launch *L, const mg_launch_dims *dim, const cudaLibrary_t lib[MG_LAUNCH_FAMILIES],
                                 const char *const fam_name[MG_LAUNCH_FAMILIES], char *msg, size_t n)
{
    const mg_launch_dims d0 = *dim;   /* dim may point into L */
    const int wg = L->wg;
    const char *env_bwd = getenv("MOEGEN_WG_BWD");
    int dev = 0, optin = 0, k;
    cudaError_t e;
    memset(L, 0, sizeof *L);
    L->dim = d0;
    L->tmap_encode = wg ? mg_launch_encoder() : NULL;
    L->wg = wg && L->tmap_encode;   /* no encoder (driver older than 12.0): mma.sync */
    L->wg_bwd = env_bwd && *env_bwd ? atoi(env_bwd) != 0 : MG_WG_BWD;
    dim = &L->dim;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&L->nsm, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
        return mg_launch_fail(msg, n, MG_LAUNCH_ECUDA, "cudaDeviceGetAttribute", "smem optin", e);
    for (k = 0; k < MG_K_COUNT; k++) {
        const int fam = mg_launch_defs[k].fam;
        snprintf(L->sym[k], sizeof L->sym[k], "%s_%s", fam_name[fam], mg_launch_defs[k].entry);
        if ((e = cudaLibraryGetKernel(&L->kern[k], lib[fam], L->sym[k])) != cudaSuccess)
            return mg_launch_fail(msg, n, MG_LAUNCH_ECUDA, "cudaLibraryGetKernel", L->sym[k], e);
    }
    /* The bwd entries carry the Hopper path only when compiled with MG_WG_BWD = 1 (else
     * mma.sync's launch bounds, below MG_WG_THREADS): take it only where they do. */
    for (k = MG_K_UP_FWD; L->wg_bwd && k <= MG_K_DOWN_WGRAD; k++) {
        struct cudaFuncAttributes fa;
        if (k == MG_K_UP_FWD || k == MG_K_DOWN_FWD) continue;
        if ((e = cudaFuncGetAttributes(&fa, (const void *)L->kern[k])) != cudaSuccess)
            return mg_launch_fail(msg, n, MG_LAUNCH_ECUDA, "cudaFuncGetAttributes", L->sym[k], e);
        if (fa.maxThreadsPerBlock < MG_WG_THREADS) L->wg_bwd = 0;
    }
    for (k = MG_K_UP_FWD; k <= MG_K_DOWN_WGRAD; k++) {
        const mg_launch_tile *t = k <= MG_K_UP_WGRAD ? &dim->up : &dim->dn;
        const int *lay = mg_launch_gemm_layout[(k - MG_K_UP_FWD) % 3];
        const size_t sm = mg_launch_wg(L, t, k)
                              ? (size_t)MG_WG_SMEM_BYTES(MG_WG_BN(mg_launch_gemm_n(dim, k))) +
                                    (size_t)MG_WG_EXTRA_SMEM(k > MG_K_UP_WGRAD, (k - MG_K_UP_FWD) % 3)
                              : (size_t)MG_GEMM_SMEM_BYTES(t->bm, t->bn, t->bk, t->stages, dim->esz, lay[0], lay[1]);
        int rc = mg_launch_smem(L, k, sm, optin, ": use a smaller tile (bk or stages)", msg, n);
        if (rc) return rc;
    }
    /* env MOEGEN_WG_CLUSTER=2 (runtime/mg_jit.c compiles the kernels for it): the row GEMMs in
     * clusters of 2, over as many CTAs as pairs can be resident at once (a persistent grid
     * larger than that would leave pairs waiting for a second wave) */
    const char *env_cl = getenv("MOEGEN_WG_CLUSTER");
    if (env_cl && *env_cl && atoi(env_cl) == 2) {
        /* env MOEGEN_WG_CLUSTER_MASK (bits 1 up fwd, 2 up dgrad, 4 down fwd, 8 down dgrad;
         * default 15): which of them; the others run single CTAs (their kernels, compiled for
         * pairs, walk alone on a launch without clusters) */
        const char *env_m = getenv("MOEGEN_WG_CLUSTER_MASK");
        char *end = NULL;
        const long mask = env_m && *env_m ? strtol(env_m, &end, 10) : 15;
        if (env_m && *env_m && (*end || mask < 1 || mask > 15)) {
            if (msg && n)
                snprintf(msg, n, "MOEGEN_WG_CLUSTER_MASK = '%s': expected 1..15 (bits 1 up fwd, 2 up dgrad, 4 down fwd, "
                                 "8 down dgrad)", env_m);
            return MG_LAUNCH_EUSER;
        }
        static const int rows_k[4] = {MG_K_UP_FWD, MG_K_UP_DGRAD, MG_K_DOWN_FWD, MG_K_DOWN_DGRAD};
        for (int i = 0; i < 4; i++) {
            const int kk = rows_k[i];
            if (!(mask >> i & 1) || !mg_launch_wg(L, kk <= MG_K_UP_WGRAD ? &dim->up : &dim->dn, kk)) continue;
            cudaLaunchConfig_t cfg;
            cudaLaunchAttribute at;
            int ncl = 0;
            mg_launch_cfg2(&cfg, &at, (unsigned)L->nsm / 2 * 2, L->smem[kk], 0);
            if ((e = cudaOccupancyMaxActiveClusters(&ncl, (const void *)L->kern[kk], &cfg)) != cudaSuccess)
                return mg_launch_fail(msg, n, MG_LAUNCH_ECUDA, "cudaOccupancyMaxActiveClusters", L->sym[kk], e);
            L->wg_cl_grid[kk] = ncl > 0 ? 2 * ncl : 0;
        }
        fprintf(stderr, "moegen: MOEGEN_WG_CLUSTER=2: row GEMMs in clusters of 2 over %d / %d / %d / %d CTAs "
                        "(up fwd, up dgrad, down fwd, down dgrad; %d SMs)\n",
                L->wg_cl_grid[MG_K_UP_FWD], L->wg_cl_grid[MG_K_UP_DGRAD], L->wg_cl_grid[MG_K_DOWN_FWD],
                L->wg_cl_grid[MG_K_DOWN_DGRAD], L->nsm);
    }
    /* router fwd: its logits GEMM's pipeline and the logits tile (fixed by E and the dtype) */
    return mg_launch_smem(L, MG_K_ROUTER_FWD, (size_t)MG_RF_SMEM_BYTES(dim->E, dim->esz), optin, "", msg, n);
}

/* ------------------------------------------------------------------ workspace */
/* Pass 1 (base NULL) only sums sizes; every buffer starts on a 256-byte boundary. */
MG_LAUNCH_API size_t mg_launch_carve(const mg_launch_dims *m, int max_T, void *base_, mg_launch_ws *ws)
{
    char *base = (char *)base_;
    size_t off = 0;
#define TAKE(ptr, bytes) do { size_t b_ = (size_t)(bytes); \
        if (base) *(void **)&(ws->ptr) = b_ ? base + off : NULL; \
        off += (b_ + 255) & ~(size_t)255; } while (0)
    const size_t Tm = (size_t)max_T, TK = Tm * (size_t)m->k, E = (size_t)m->E, d = (size_t)m->d;
    const size_t ff = (size_t)m->ff, f2 = (size_t)m->f2, S = (size_t)m->S, es = (size_t)m->esz;
    const size_t n_chunks = (TK + MG_DISPATCH_CHUNK - 1) / MG_DISPATCH_CHUNK;
    const size_t n_split = (Tm + MG_DWG_SPLIT - 1) / MG_DWG_SPLIT;
    if (base) { memset(ws, 0, sizeof *ws); ws->max_T = max_T; }
    TAKE(logits, Tm * E * 4);
    TAKE(probs, Tm * E * 4);
    TAKE(dlogits, Tm * E * 4);
    TAKE(lse, Tm * 4);
    TAKE(tstat, Tm * 2 * 4);
    TAKE(topk_idx, TK * 4);
    TAKE(topk_w, TK * 4);
    TAKE(dw, TK * 4);
    TAKE(perm, TK * 4);
    TAKE(slot_of, TK * 4);
    TAKE(hist, n_chunks * E * 4);
    TAKE(counts_all, E * 4);
    TAKE(counts, E * 4);
    TAKE(offsets, (E + 1) * 4);
    TAKE(tile_off_up, (E + 1) * 4);
    TAKE(tile_off_dn, (E + 1) * 4);
    TAKE(n_dropped, 4);
    TAKE(psum, E * 4);
    TAKE(lse2, 4);
    TAKE(loss, 16);
    TAKE(thr, E * 8);
    TAKE(a, TK * f2 * es);
    TAKE(h, TK * ff * es);
    TAKE(z, TK * d * es);
    TAKE(dz, TK * d * es);
    TAKE(da, TK * f2 * es);
    TAKE(dxs, TK * d * es);
    TAKE(dxr, Tm * d * 4);
    TAKE(dwg_part, n_split > 1 ? n_split * E * d * 4 : 0);
    TAKE(a_sh, S * Tm * f2 * es);
    TAKE(h_sh, S * Tm * ff * es);
    TAKE(z_sh, S * Tm * d * es);
    TAKE(da_sh, S ? Tm * f2 * es : 0);
    TAKE(dxs_sh, S * Tm * d * es);
#undef TAKE
    return off;
}

MG_LAUNCH_API int mg_launch_capacity(const mg_launch_dims *dim, int T)
{
    if (!(dim->cf > 0)) return -1;
    return (int)ceil(dim->cf * ((double)T * dim->k) / dim->E);   /* same expression as mg_ref_capacity */
}

/* ------------------------------------------------------------------ launch */
static int mg_launch_one(const mg_launch *L, int k, unsigned gx, unsigned gy, unsigned gz, unsigned block,
                         size_t smem, cudaStream_t st, void *params, char *msg, size_t n)
{
    dim3 grid, blk;
    void *args[1];
    cudaError_t e;
    if (!gx || !gy || !gz) return MG_LAUNCH_OK;
    grid.x = gx, grid.y = gy, grid.z = gz;
    blk.x = block, blk.y = 1, blk.z = 1;
    args[0] = params;
    e = cudaLaunchKernel((const void *)L->kern[k], grid, blk, args, smem, st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) {
        if (msg && n)
            snprintf(msg, n, "launch %s (grid %u,%u,%u block %u smem %lu): %s", L->sym[k], gx, gy, gz, block,
                     (unsigned long)smem, cudaGetErrorString(e));
        return MG_LAUNCH_ECUDA;
    }
    return MG_LAUNCH_OK;
}
/* Kernel k in clusters of 2 over gx CTAs (the Hopper row GEMMs, MOEGEN_WG_CLUSTER=2). */
static int mg_launch_cluster2(const mg_launch *L, int k, unsigned gx, size_t smem, cudaStream_t st, void *params,
                              char *msg, size_t n)
{
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at;
    void *args[1] = {params};
    mg_launch_cfg2(&cfg, &at, gx, smem, st);
    cudaError_t e = cudaLaunchKernelExC(&cfg, (const void *)L->kern[k], args);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) {
        if (msg && n)
            snprintf(msg, n, "launch %s (clusters of 2, grid %u, smem %lu): %s", L->sym[k], gx, (unsigned long)smem,
                     cudaGetErrorString(e));
        return MG_LAUNCH_ECUDA;
    }
    return MG_LAUNCH_OK;
}
#define LAUNCH(k, gx, gy, gz, block, smem, params) do { \
        int rc_ = mg_launch_one(L, (k), (gx), (gy), (gz), (block), (smem), stream, &(params), msg, n); \
        if (rc_) return rc_; } while (0)
/* GEMM params initializers end with this: the maps, filled per launch on the Hopper path
 * (down dgrad has a third, its epilogue's a). */
#define MG_NO_TMAPS1 {{0}}
#define MG_NO_TMAPS {{0}}, {{0}}
#define MG_NO_TMAPS3 {{0}}, {{0}}, {{0}}

static int mg_launch_tmap_fail(const mg_launch *L, int k, char *msg, size_t n)
{
    if (msg && n)
        snprintf(msg, n, "%s: cannot encode a TMA tensor map (weights, workspace, x and dy must be 16-byte aligned)",
                 L->sym[k]);
    return MG_LAUNCH_EUSER;
}
/* A grouped-GEMM launch: the mma.sync grid (gx, gy) x 32*warps, or on the Hopper path (its
 * tensor maps filled into params by maps(L, &params) first) a persistent grid of one
 * 384-thread CTA per SM that walks the tiles itself. */
#define GEMM(k, t, gx, gy, params, maps) do { \
        if (mg_launch_wg(L, (t), (k))) { \
            if (!maps(L, &(params))) return mg_launch_tmap_fail(L, (k), msg, n); \
            if (L->wg_cl_grid[k] > 0) { \
                int rc_ = mg_launch_cluster2(L, (k), (unsigned)L->wg_cl_grid[k], L->smem[k], stream, &(params), msg, n); \
                if (rc_) return rc_; \
            } else LAUNCH((k), (unsigned)L->nsm, 1, 1, MG_WG_THREADS, L->smem[k], params); \
        } else LAUNCH((k), (gx), (gy), 1, 32 * (t)->warps, L->smem[k], params); } while (0)

static int mg_launch_check_T(const mg_launch_ws *ws, int T, char *msg, size_t n)
{
    if (T >= 1 && T <= ws->max_T) return MG_LAUNCH_OK;
    if (msg && n) snprintf(msg, n, "T = %d: must be in [1, max_tokens = %d]", T, ws->max_T);
    return MG_LAUNCH_EUSER;
}

/* Byte offset helpers for dtype buffers. */
static const void *mg_launch_cptr(const void *p, size_t elems, int esz)
{
    return p ? (const char *)p + elems * (size_t)esz : NULL;
}
static void *mg_launch_mptr(void *p, size_t elems, int esz) { return p ? (char *)p + elems * (size_t)esz : NULL; }

/* The phases of forward and backward, public so that expert parallelism (runtime/mg_gpu_model.c)
 * can run the routing and the combine on the source rank and the experts' MLPs on the owner, with
 * the token exchange in between. forward = route, routed experts, shared experts, combine;
 * backward = route_bwd, routed experts, shared experts, router_dx: the same launches in the same
 * order as one call. */
MG_LAUNCH_API int mg_launch_route(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                  const mg_launch_weights *w, const void *x, int T, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    int rc = mg_launch_check_T(ws, T, msg, n);
    if (rc) return rc;
    const int E = m->E, k = m->k;
    const int TK = T * k, n_chunks = mg_launch_cdiv(TK, MG_DISPATCH_CHUNK);
    const mg_launch_tile *tu = &m->up, *td = &m->dn;

    /* router: logits, probabilities, top-k */
    {
        moe_router_fwd_params rf = {x, w->wg, w->bias, ws->logits, ws->probs, ws->lse, ws->topk_idx, ws->topk_w, T,
                                    ws->tstat};
        LAUNCH(MG_K_ROUTER_FWD, mg_launch_cdiv(T, MG_RF_TOKENS), 1, 1, 32 * MG_RF_WARPS, L->smem[MG_K_ROUTER_FWD], rf);
    }
    /* dispatch: (select,) count, scan, place */
    {
        const int cap = mg_launch_capacity(m, T);
        moe_dispatch_params dp = {ws->topk_idx, ws->hist, ws->counts_all, ws->counts, ws->offsets, ws->n_dropped,
                                  ws->tile_off_up, ws->tile_off_dn, ws->perm, ws->slot_of, tu->bm, td->bm,
                                  cap, T, ws->topk_w, ws->thr};
        if (cap >= 0 && m->drop_prob) LAUNCH(MG_K_DISPATCH_SELECT, E, 1, 1, 256, 0, dp);
        LAUNCH(MG_K_DISPATCH_COUNT, mg_launch_cdiv(n_chunks, MG_DISPATCH_WARPS), 1, 1, 32 * MG_DISPATCH_WARPS, 0, dp);
        LAUNCH(MG_K_DISPATCH_SCAN, 1, 1, 1, 256, 0, dp);
        LAUNCH(MG_K_DISPATCH_PLACE, mg_launch_cdiv(n_chunks, MG_DISPATCH_WARPS), 1, 1, 32 * MG_DISPATCH_WARPS, 0, dp);
    }
    /* losses */
    {
        moe_router_stats_params rs = {ws->probs, ws->lse, ws->psum, ws->lse2, T, ws->tstat, ws->loss};
        moe_router_loss_params rl = {ws->psum, ws->lse2, ws->counts_all, ws->loss, T};
        LAUNCH(MG_K_ROUTER_STATS, E + 3, 1, 1, 256, 0, rs);
        LAUNCH(MG_K_ROUTER_LOSS, 1, 1, 1, 256, 0, rl);
    }
    return MG_LAUNCH_OK;
}

/* One expert's MLP on R rows taken in order (no routing: the shared experts' launches):
 * a [R,f2], h [R,ff], z [R,d] dtype. */
MG_LAUNCH_API int mg_launch_expert_fwd(const mg_launch *L, cudaStream_t stream, const void *w_up, const void *w_dn,
                                       const void *x, void *a, void *h, void *z, int R, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    const mg_launch_tile *tu = &m->up, *td = &m->dn;
    moe_up_fwd_params su = {x, w_up, a, h, NULL, NULL, NULL, 1, R, MG_NO_TMAPS};
    moe_down_fwd_params sd = {h, w_dn, z, NULL, NULL, 1, R, MG_NO_TMAPS};
    GEMM(MG_K_UP_FWD, tu, mg_launch_cdiv(R, tu->bm), mg_launch_cdiv(m->f2, tu->bn), su, mg_tm_up_fwd);
    GEMM(MG_K_DOWN_FWD, td, mg_launch_cdiv(R, td->bm), mg_launch_cdiv(m->d, td->bn), sd, mg_tm_down_fwd);
    return MG_LAUNCH_OK;
}

/* The shared experts on all T tokens: identity routing, one launch pair each, into ws->a_sh, h_sh
 * (kept for backward) and z_sh (combine adds it). */
MG_LAUNCH_API int mg_launch_shared_fwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                       const mg_launch_weights *w, const void *x, int T, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    const int d = m->d, ff = m->ff, f2 = m->f2, es = m->esz;
    int s, rc = mg_launch_check_T(ws, T, msg, n);
    for (s = 0; s < m->S && !rc; s++)
        rc = mg_launch_expert_fwd(L, stream, mg_launch_cptr(w->ws_up, (size_t)s * f2 * d, es),
                                  mg_launch_cptr(w->ws_dn, (size_t)s * d * ff, es), x,
                                  mg_launch_mptr(ws->a_sh, (size_t)s * T * f2, es),
                                  mg_launch_mptr(ws->h_sh, (size_t)s * T * ff, es),
                                  mg_launch_mptr(ws->z_sh, (size_t)s * T * d, es), T,
                                  msg, n);
    return rc;
}

/* y = Σ_j w·z over the kept slots (+ the shared experts' z). */
/* The combine kernels' block: one thread per 8 columns of a row, at most 256 (moe_combine.cu). */
static int mg_combine_threads(int d)
{
    const int ch = d / 8, w = (ch + 31) / 32 * 32;
    return w < 256 ? w : 256;
}

MG_LAUNCH_API int mg_launch_combine(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream, void *y, int T,
                                    char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    moe_combine_fwd_params cf = {ws->z, ws->slot_of, ws->topk_w, m->S ? ws->z_sh : NULL, m->S, y, T};
    LAUNCH(MG_K_COMBINE_FWD, T, 1, 1, mg_combine_threads(m->d), 0, cf);
    return MG_LAUNCH_OK;
}

MG_LAUNCH_API int mg_launch_forward(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                    const mg_launch_weights *w, const void *x, void *y, int T, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    int rc = mg_launch_route(L, ws, stream, w, x, T, msg, n);
    if (rc) return rc;
    const int E = m->E, k = m->k, d = m->d, f2 = m->f2;
    const int TK = T * k;
    const mg_launch_tile *tu = &m->up, *td = &m->dn;
    /* routed experts */
    {
        moe_up_fwd_params uf = {x, w->w_up, ws->a, ws->h, ws->offsets, ws->tile_off_up, ws->perm, E, T, MG_NO_TMAPS};
        moe_down_fwd_params df = {ws->h, w->w_dn, ws->z, ws->offsets, ws->tile_off_dn, E, T, MG_NO_TMAPS};
        GEMM(MG_K_UP_FWD, tu, mg_launch_cdiv(TK, tu->bm) + E, mg_launch_cdiv(f2, tu->bn), uf, mg_tm_up_fwd);
        GEMM(MG_K_DOWN_FWD, td, mg_launch_cdiv(TK, td->bm) + E, mg_launch_cdiv(d, td->bn), df, mg_tm_down_fwd);
    }
    if ((rc = mg_launch_shared_fwd(L, ws, stream, w, x, T, msg, n))) return rc;
    return mg_launch_combine(L, ws, stream, y, T, msg, n);
}

/* Combine backward (dz [T·k,d] dtype per slot, dL/dw per assignment) and router backward (dlogits). */
MG_LAUNCH_API int mg_launch_route_bwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream, const void *dy,
                                      int T, char *msg, size_t n)
{
    int rc = mg_launch_check_T(ws, T, msg, n);
    if (rc) return rc;
    moe_combine_bwd_params cb = {dy, ws->z, ws->slot_of, ws->topk_w, ws->dz, ws->dw, T};
    moe_router_bwd_params rb = {ws->logits, ws->topk_idx, ws->topk_w, ws->dw, ws->counts_all, ws->dlogits, T};
    LAUNCH(MG_K_COMBINE_BWD, T, 1, 1, mg_combine_threads(L->dim.d), 0, cb);
    LAUNCH(MG_K_ROUTER_BWD, mg_launch_cdiv(T, MG_ROUTER_WARPS), 1, 1, 32 * MG_ROUTER_WARPS, 0, rb);
    return MG_LAUNCH_OK;
}

/* One expert's backward on R rows in order, given dz [R,d] dtype: da [R,f2] dtype (scratch),
 * dx [R,d] dtype, weight gradients g_up [f2,d] and g_dn [d,ff] fp32 written. */
MG_LAUNCH_API int mg_launch_expert_bwd(const mg_launch *L, cudaStream_t stream, const void *w_up, const void *w_dn,
                                       const void *x, const void *a, const void *h, const void *dz, void *da,
                                       void *dx, float *g_up, float *g_dn, int R, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    const mg_launch_tile *tu = &m->up, *td = &m->dn;
    const int d = m->d, ff = m->ff, f2 = m->f2;
    moe_down_dgrad_params sdd = {dz, a, w_dn, da, NULL, NULL, 1, R, MG_NO_TMAPS3};
    moe_down_wgrad_params sdw = {dz, h, g_dn, NULL, 1, R, MG_NO_TMAPS};
    moe_up_dgrad_params sud = {da, w_up, dx, NULL, NULL, 1, R, MG_NO_TMAPS};
    moe_up_wgrad_params suw = {da, x, g_up, NULL, NULL, 1, R, MG_NO_TMAPS1};
    GEMM(MG_K_DOWN_DGRAD, td, mg_launch_cdiv(R, td->bm), mg_launch_cdiv(ff, td->bn), sdd, mg_tm_down_dgrad);
    GEMM(MG_K_DOWN_WGRAD, td, mg_launch_cdiv(d, td->bm) * mg_launch_cdiv(ff, td->bn), 1, sdw, mg_tm_down_wgrad);
    GEMM(MG_K_UP_DGRAD, tu, mg_launch_cdiv(R, tu->bm), mg_launch_cdiv(d, tu->bn), sud, mg_tm_up_dgrad);
    GEMM(MG_K_UP_WGRAD, tu, mg_launch_cdiv(f2, tu->bm) * mg_launch_cdiv(d, tu->bn), 1, suw, mg_tm_up_wgrad);
    return MG_LAUNCH_OK;
}

static int mg_launch_check_shared(const mg_launch_dims *m, const mg_launch_weights *w, const mg_launch_grads *g,
                                  char *msg, size_t n)
{
    if (!m->S || (g->dws_up && g->dws_dn && w->ws_up && w->ws_dn)) return MG_LAUNCH_OK;
    if (msg && n) snprintf(msg, n, "backward: %d shared experts need ws_up/ws_dn and dws_up/dws_dn", m->S);
    return MG_LAUNCH_EUSER;
}

/* The shared experts' backward on all T tokens (weight 1: dz = dy, identity rows): ws->dxs_sh
 * (router_dx adds it), g->dws_up and g->dws_dn written; ws->da_sh is their scratch. */
MG_LAUNCH_API int mg_launch_shared_bwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                       const mg_launch_weights *w, const void *x, const void *dy,
                                       const mg_launch_grads *g, int T, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    const int d = m->d, ff = m->ff, f2 = m->f2, es = m->esz;
    int s, rc = mg_launch_check_T(ws, T, msg, n);
    if (!rc) rc = mg_launch_check_shared(m, w, g, msg, n);
    for (s = 0; s < m->S && !rc; s++)
        rc = mg_launch_expert_bwd(L, stream, mg_launch_cptr(w->ws_up, (size_t)s * f2 * d, es),
                                  mg_launch_cptr(w->ws_dn, (size_t)s * d * ff, es), x,
                                  mg_launch_mptr(ws->a_sh, (size_t)s * T * f2, es),
                                  mg_launch_mptr(ws->h_sh, (size_t)s * T * ff, es), dy, ws->da_sh,
                                  mg_launch_mptr(ws->dxs_sh, (size_t)s * T * d, es), g->dws_up + (size_t)s * f2 * d,
                                  g->dws_dn + (size_t)s * d * ff, T, msg, n);
    return rc;
}

/* Router weight gradient dwg, the router's dx, and dx = Σ over the kept slots of dxs + that. */
MG_LAUNCH_API int mg_launch_router_dx(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                      const mg_launch_weights *w, const void *x, void *dx, float *dwg, int T,
                                      char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    const int E = m->E, d = m->d, n_split = mg_launch_cdiv(T, MG_DWG_SPLIT);
    moe_router_dwg_params rg = {ws->dlogits, x, ws->dwg_part, dwg, T};
    moe_router_dx_params rx = {ws->dlogits, w->wg, ws->dxr, T};
    LAUNCH(MG_K_ROUTER_DWG, mg_launch_cdiv(E, MG_RDWG_EXPERTS), mg_launch_cdiv(d, MG_RDWG_COLS), n_split,
           32 * MG_RDL_WARPS, 0, rg);
    if (n_split > 1)
        LAUNCH(MG_K_ROUTER_DWGSUM, mg_launch_cdiv((long long)E * d, 256 * MG_DWGSUM_VEC), 1, 1, 256, 0, rg);
    LAUNCH(MG_K_ROUTER_DX, mg_launch_cdiv(T, MG_RDX_TOKENS), mg_launch_cdiv(d, MG_RDX_COLS), 1, 32 * MG_RDL_WARPS, 0,
           rx);
    moe_combine_dx_params cx = {ws->dxs, ws->slot_of, ws->dxr, m->S ? ws->dxs_sh : NULL, m->S, dx, T};
    LAUNCH(MG_K_COMBINE_DX, T, 1, 1, mg_combine_threads(m->d), 0, cx);
    return MG_LAUNCH_OK;
}

MG_LAUNCH_API int mg_launch_backward(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                     const mg_launch_weights *w, const void *x, const void *dy, void *dx,
                                     const mg_launch_grads *g, int T, char *msg, size_t n)
{
    const mg_launch_dims *m = &L->dim;
    int rc = mg_launch_check_T(ws, T, msg, n);
    if (rc || (rc = mg_launch_check_shared(m, w, g, msg, n))) return rc;
    const int E = m->E, k = m->k, d = m->d, ff = m->ff, f2 = m->f2;
    const int TK = T * k;
    const mg_launch_tile *tu = &m->up, *td = &m->dn;
    if ((rc = mg_launch_route_bwd(L, ws, stream, dy, T, msg, n))) return rc;
    /* routed experts */
    {
        moe_down_dgrad_params dd = {ws->dz, ws->a, w->w_dn, ws->da, ws->offsets, ws->tile_off_dn, E, T,
                                    MG_NO_TMAPS3};
        moe_down_wgrad_params dw = {ws->dz, ws->h, g->dw_dn, ws->offsets, E, T, MG_NO_TMAPS};
        moe_up_dgrad_params ud = {ws->da, w->w_up, ws->dxs, ws->offsets, ws->tile_off_up, E, T, MG_NO_TMAPS};
        moe_up_wgrad_params uw = {ws->da, x, g->dw_up, ws->offsets, ws->perm, E, T, MG_NO_TMAPS1};
        GEMM(MG_K_DOWN_DGRAD, td, mg_launch_cdiv(TK, td->bm) + E, mg_launch_cdiv(ff, td->bn), dd, mg_tm_down_dgrad);
        GEMM(MG_K_DOWN_WGRAD, td, mg_launch_cdiv(d, td->bm) * mg_launch_cdiv(ff, td->bn), E, dw, mg_tm_down_wgrad);
        GEMM(MG_K_UP_DGRAD, tu, mg_launch_cdiv(TK, tu->bm) + E, mg_launch_cdiv(d, tu->bn), ud, mg_tm_up_dgrad);
        GEMM(MG_K_UP_WGRAD, tu, mg_launch_cdiv(f2, tu->bm) * mg_launch_cdiv(d, tu->bn), E, uw, mg_tm_up_wgrad);
    }
    if ((rc = mg_launch_shared_bwd(L, ws, stream, w, x, dy, g, T, msg, n))) return rc;
    return mg_launch_router_dx(L, ws, stream, w, x, dx, g->dwg, T, msg, n);
}
#undef GEMM
#undef LAUNCH
