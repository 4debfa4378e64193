/* mg_gpu_ep: expert parallelism in the GPU trainer (see mg_gpu_ep.h). The shared experts' overlap
 * with the exchanges ran on 2x H200 (bench/ep_2gpu.sh s, bench/results/2026-11-26-s4). */
#include "mg_gpu_ep.h"
#include "mg_dist.h"
#include "mg_cuda.h"
#include "mg_jit.h"
#include "mg_optim.h"   /* mg_clip_scale */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EP_MAX 64
#define EP_CHUNK (1LL << 24)   /* elements per sumsq launch, as mg_gpu_model */

/* dst row i = src row idx[i] / div (16-byte words; row_bytes a multiple of 16). */
static const char gather_src[] =
    "struct alignas(16) mg_w16 { unsigned x, y, z, w; };\n"
    "extern \"C\" __global__ void mg_gpu_gather_rows(mg_w16 *dst, const mg_w16 *src, const int *idx, int div, int n,\n"
    "                                              int row_words)\n"
    "{\n"
    "    for (int i = blockIdx.x; i < n; i += gridDim.x) {\n"
    "        const mg_w16 *s = src + (long long)(idx[i] / div) * row_words;\n"
    "        mg_w16 *o = dst + (long long)i * row_words;\n"
    "        for (int c = threadIdx.x; c < row_words; c += blockDim.x) o[c] = s[c];\n"
    "    }\n"
    "}\n";

typedef struct ep_layer {
    int *cnt;            /* [P][E] kept counts per expert of every group rank (host) */
    size_t snd[EP_MAX];  /* rows to each group rank (this rank's kept slots per owner) */
    size_t rcv[EP_MAX];  /* rows from each group rank (for the local experts) */
    int R;               /* rows received in all */
    void *xr, *a, *h;    /* [R,d], [R,F2], [R,ff] dtype, expert-major: kept for backward */
} ep_layer;

struct mg_gpu_ep {
    mg_comm *c;
    int P, q, E, El, e0, k, d, ff, F2, S, esz, L;
    long Rmax;           /* rows a rank can receive: every group rank's N·k */
    const mg_cpu_model *h;
    ep_layer *ly;
    void *sbuf, *rbuf;   /* [Rmax, d] dtype send/receive staging */
    void *dz, *da;       /* [Rmax, d], [Rmax, F2] dtype scratch */
    void *z, *dxe;       /* [Rmax, d] dtype: expert outputs / expert dx, expert-major */
    int *hcnt;           /* [E] pinned: this rank's kept counts */
    float *part;         /* sumsq partials of the local experts */
    int n_part;
    cudaLibrary_t lib;
    cudaKernel_t gather;
    double a2a_s;        /* host time in the row exchanges, since create */
    /* shared experts (S > 0): their forward runs beside the dispatch, their backward beside the
     * return of the dx rows (exchange); xs: the stream of those exchanges; ev_sh0/1 time the
     * shared work; overlap 0: MOEGEN_EP_OVERLAP=0 */
    cudaStream_t xs;
    cudaEvent_t ev_sh0, ev_sh1;
    int overlap;
    double a2a_hidden_s; /* of a2a_s: the part during which the compute stream ran the shared experts */
};

static int dalloc(void **p, size_t bytes, mg_err *err)
{
    MG_CUDA_TRY(cudaMalloc(p, bytes ? bytes : 16), err);
    return MG_OK;
}

/* With shared experts: the exchanges' stream at the highest priority (NCCL's blocks are scheduled
 * ahead of pending GEMM blocks) and the timing events; MOEGEN_EP_OVERLAP=0 turns the overlap off. */
static int shared_setup(mg_gpu_ep *x, mg_err *err)
{
    int least = 0, greatest = 0;
    MG_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&least, &greatest), err);
    MG_CUDA_TRY(cudaStreamCreateWithPriority(&x->xs, cudaStreamNonBlocking, greatest), err);
    MG_CUDA_TRY(cudaEventCreate(&x->ev_sh0), err);
    MG_CUDA_TRY(cudaEventCreate(&x->ev_sh1), err);
    const char *v = getenv("MOEGEN_EP_OVERLAP");
    x->overlap = !(v && !strcmp(v, "0"));
    return MG_OK;
}

int mg_gpu_ep_create(mg_gpu_ep **out, mg_comm *c, const mg_cpu_model *h, int bmax, mg_err *err)
{
    *out = NULL;
    if (h->ep < 2 || !c || c->world != h->ep || c->rank != h->ep_rank || h->ep > EP_MAX)
        return mg_err_set(err, MG_EINTERNAL, "mg_gpu_ep_create: the comm (rank %d of %d) is not expert shard %d of %d",
                          c ? c->rank : -1, c ? c->world : 0, h->ep_rank, h->ep);
    int esz = mg_dtype_size(h->spec.dtype);
    if ((h->d * esz) % 16)
        return mg_err_set(err, MG_EUSER, "%s: model.d_model = %d: expert parallelism on the GPU moves rows in 16-byte "
                          "words (d_model·%d bytes must be a multiple of 16)", h->spec.path, h->d, esz);
    mg_gpu_ep *x = calloc(1, sizeof *x);
    if (!x) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_ep_create: out of memory");
    x->c = c, x->h = h, x->P = h->ep, x->q = h->ep_rank, x->E = h->E, x->El = h->E_loc, x->e0 = h->e0, x->k = h->k;
    x->d = h->d, x->ff = h->ff, x->F2 = h->F2, x->S = h->S, x->esz = esz, x->L = h->L;
    x->Rmax = (long)x->P * bmax * h->T * x->k;
    int rc = MG_OK;
    char arch[32];
    int dev = 0;
    cudaGetDevice(&dev);
    if (mg_cuda_arch(dev, arch, sizeof arch)) rc = mg_err_set(err, MG_EINTERNAL, "cannot read the compute capability");
    if (!rc) {
        mg_jit_opts jo = {.arch = arch};
        mg_jit_result res;
        memset(&res, 0, sizeof res);
        rc = mg_jit_compile("mg_gpu_gather_rows", gather_src, sizeof gather_src - 1, &jo, &res, err);
        if (!rc && cudaLibraryLoadData(&x->lib, res.cubin.data, NULL, NULL, 0, NULL, NULL, 0) != cudaSuccess)
            rc = mg_err_set(err, MG_EINTERNAL, "cudaLibraryLoadData(mg_gpu_gather_rows) failed");
        mg_jit_result_free(&res);
        if (!rc && cudaLibraryGetKernel(&x->gather, x->lib, "mg_gpu_gather_rows") != cudaSuccess)
            rc = mg_err_set(err, MG_EINTERNAL, "cudaLibraryGetKernel(mg_gpu_gather_rows) failed");
    }
    size_t R = (size_t)x->Rmax, d = (size_t)x->d;
    x->ly = calloc((size_t)x->L, sizeof *x->ly);
    if (!x->ly && !rc) rc = mg_err_set(err, MG_EINTERNAL, "mg_gpu_ep_create: out of memory");
    x->n_part = 0;
    for (int i = 0; i < x->L && !rc; i++) {
        if (!h->layers[i].moe) continue;
        ep_layer *l = &x->ly[i];
        l->cnt = calloc((size_t)x->P * x->E, sizeof(int));
        if (!l->cnt) rc = mg_err_set(err, MG_EINTERNAL, "mg_gpu_ep_create: out of memory");
        if (!rc) rc = dalloc(&l->xr, R * d * esz, err);
        if (!rc) rc = dalloc(&l->a, R * x->F2 * esz, err);
        if (!rc) rc = dalloc(&l->h, R * x->ff * esz, err);
        long n = (long)x->El * (x->F2 + x->ff) * x->d;
        x->n_part += (int)((n + EP_CHUNK - 1) / EP_CHUNK);
    }
    if (!rc) rc = dalloc(&x->sbuf, R * d * esz, err);
    if (!rc) rc = dalloc(&x->rbuf, R * d * esz, err);
    if (!rc) rc = dalloc(&x->dz, R * d * esz, err);
    if (!rc) rc = dalloc(&x->da, R * x->F2 * esz, err);
    if (!rc) rc = dalloc(&x->z, R * d * esz, err);
    if (!rc) rc = dalloc(&x->dxe, R * d * esz, err);
    if (!rc) rc = dalloc((void **)&x->part, (size_t)(x->n_part + 1) * LM_SUMSQ_BLOCKS * 4, err);
    if (!rc && cudaHostAlloc((void **)&x->hcnt, (size_t)x->E * sizeof(int), 0) != cudaSuccess)
        rc = mg_err_set(err, MG_EINTERNAL, "cudaHostAlloc failed");
    if (!rc && x->S) rc = shared_setup(x, err);
    if (rc) {
        mg_gpu_ep_destroy(x);
        return rc;
    }
    *out = x;
    return MG_OK;
}

double mg_gpu_ep_a2a_seconds(const mg_gpu_ep *x) { return x ? x->a2a_s : 0; }
double mg_gpu_ep_a2a_hidden_seconds(const mg_gpu_ep *x) { return x ? x->a2a_hidden_s : 0; }

void mg_gpu_ep_destroy(mg_gpu_ep *x)
{
    if (!x) return;
    for (int i = 0; x->ly && i < x->L; i++) {
        free(x->ly[i].cnt);
        cudaFree(x->ly[i].xr);
        cudaFree(x->ly[i].a);
        cudaFree(x->ly[i].h);
    }
    free(x->ly);
    cudaFree(x->sbuf); cudaFree(x->rbuf); cudaFree(x->dz); cudaFree(x->da); cudaFree(x->z); cudaFree(x->dxe);
    cudaFree(x->part);
    if (x->hcnt) cudaFreeHost(x->hcnt);
    if (x->ev_sh0) cudaEventDestroy(x->ev_sh0);
    if (x->ev_sh1) cudaEventDestroy(x->ev_sh1);
    if (x->xs) cudaStreamDestroy(x->xs);
    if (x->lib) cudaLibraryUnload(x->lib);
    free(x);
}

/* ------------------------------------------------------------------------------------ */
/* the exchange                                                                         */

static const char *row(const void *p, long r, size_t rb) { return (const char *)p + (size_t)r * rb; }
static char *wrow(void *p, long r, size_t rb) { return (char *)p + (size_t)r * rb; }

/* The shared experts' forward (dy NULL) or backward, which runs beside an exchange. They read xin
 * (and dy) and write only the shared experts' workspace and gradients, which no exchange touches. */
typedef struct ep_shared {
    mg_moe *ffn;
    const mg_moe_weights *w;
    const void *xin, *dy;
    const mg_moe_grads *g;
    int N;
} ep_shared;

/* Enqueues sh on the compute stream between ev_sh0 and ev_sh1 (its device time). */
static int shared_run(mg_gpu_ep *x, cudaStream_t st, const ep_shared *sh, mg_err *err)
{
    MG_CUDA_TRY(cudaEventRecord(x->ev_sh0, st), err);
    int rc = sh->dy ? mg_moe_shared_bwd(sh->ffn, st, sh->w, sh->xin, sh->dy, sh->g, sh->N, err)
                    : mg_moe_shared_fwd(sh->ffn, st, sh->w, sh->xin, sh->N, err);
    if (rc) return rc;
    MG_CUDA_TRY(cudaEventRecord(x->ev_sh1, st), err);
    return MG_OK;
}

/* Of an overlapped exchange that took dt host seconds, the part the compute stream spent on the
 * shared experts: all of it if they still run, else their device time if shorter. */
static int count_hidden(mg_gpu_ep *x, double dt, mg_err *err)
{
    double hid = dt;
    cudaError_t q = cudaEventQuery(x->ev_sh1);
    if (q == cudaSuccess) {
        float ms = 0;
        MG_CUDA_TRY(cudaEventElapsedTime(&ms, x->ev_sh0, x->ev_sh1), err);
        if (ms * 1e-3 < hid) hid = ms * 1e-3;
    } else if (q != cudaErrorNotReady) {
        MG_CUDA_TRY(q, err);
    }
    x->a2a_hidden_s += hid;
    return MG_OK;
}

/* rows[q] rows of rb bytes to each group rank (send, back to back) → recv, want[p] rows from
 * rank p: the per-expert count all-gather of the layer already told every rank what it receives,
 * so the exchange skips its own count round trip (mg_comm_all_to_all_vk). The compute stream is
 * synced first (send was written on it), so the host time is the exchange's own; it is done when
 * this returns.
 * sh (non-NULL with shared experts): their work runs beside the exchange. The exchange is enqueued
 * first, on the layer's own stream xs (non-blocking, high priority), so NCCL's kernels hold their
 * SMs before the shared experts' GEMMs (a persistent Hopper GEMM grid takes every SM until it
 * ends); then sh goes on the compute stream and the host waits for xs. MOEGEN_EP_OVERLAP=0 runs
 * sh before the exchange instead (the same work in series: the A/B of the overlap). */
static int exchange(mg_gpu_ep *x, cudaStream_t st, const void *send, const size_t *rows, void *recv, const size_t *want,
                    size_t rb, const ep_shared *sh, mg_err *err)
{
    size_t sc[EP_MAX], rc[EP_MAX], total = 0;
    for (int p = 0; p < x->P; p++) sc[p] = rows[p] * rb, rc[p] = want[p] * rb, total += want[p];
    if (total > (size_t)x->Rmax)
        return mg_err_set(err, MG_EINTERNAL, "ep: rank %d would receive %zu rows, room for %ld", x->q, total, x->Rmax);
    int r, beside = sh && x->S && x->overlap;
    if (sh && x->S && !beside && (r = shared_run(x, st, sh, err))) return r;
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);
    double t0 = mg_dist_now();
    if (!beside) {
        r = mg_comm_all_to_all_vk(x->c, send, sc, recv, rc, MG_COMM_BYTE, err);
    } else {
        r = mg_comm_all_to_all_vk_async(x->c, send, sc, recv, rc, MG_COMM_BYTE, x->xs, err);
        if (!r) r = shared_run(x, st, sh, err);
        if (!r) r = mg_comm_wait(x->c, x->xs, err);
    }
    double dt = mg_dist_now() - t0;
    x->a2a_s += dt;
    return !r && beside ? count_hidden(x, dt, err) : r;
}

/* Arrival order (source p, then its rows for my experts in expert order) ↔ expert-major
 * (local expert e, then source p): one copy per (e, p) block. */
static int regroup(mg_gpu_ep *x, const ep_layer *l, cudaStream_t st, const void *src, void *dst, size_t rb,
                   int to_expert_major, mg_err *err)
{
    long em = 0;
    for (int e = 0; e < x->El; e++) {
        long arr = 0;
        for (int p = 0; p < x->P; p++) {
            const int *cp = l->cnt + (size_t)p * x->E + x->e0;
            long before = 0;
            for (int f = 0; f < e; f++) before += cp[f];
            long n = cp[e], a = arr + before;
            if (n) {
                const void *s = to_expert_major ? row(src, a, rb) : row(src, em, rb);
                void *o = to_expert_major ? wrow(dst, em, rb) : wrow(dst, a, rb);
                MG_CUDA_TRY(cudaMemcpyAsync(o, s, (size_t)n * rb, cudaMemcpyDeviceToDevice, st), err);
            }
            em += n;
            arr += (long)l->rcv[p];
        }
    }
    return MG_OK;
}

/* Rows of expert e (local) in the expert-major buffers: first row and count. */
static void expert_rows(const mg_gpu_ep *x, const ep_layer *l, int e, long *first, int *n)
{
    long f = 0;
    int c = 0;
    for (int g = 0; g <= e; g++) {
        c = 0;
        for (int p = 0; p < x->P; p++) c += l->cnt[(size_t)p * x->E + x->e0 + g];
        if (g < e) f += c;
    }
    *first = f, *n = c;
}

/* ------------------------------------------------------------------------------------ */
/* forward and backward                                                                 */

int mg_gpu_ep_forward(mg_gpu_ep *x, int li, mg_moe *ffn, cudaStream_t st, const mg_moe_weights *w, const void *xin,
                      void *y, int N, mg_err *err)
{
    ep_layer *l = &x->ly[li];
    int rc, E = x->E, P = x->P, El = x->El;
    size_t rbx = (size_t)x->d * x->esz;
    mg_moe_state ms;
    mg_moe_get_state(ffn, &ms);
    if ((rc = mg_moe_route(ffn, st, w, xin, N, err))) return rc;
    /* every group rank's kept counts per expert */
    MG_CUDA_TRY(cudaMemcpyAsync(x->hcnt, ms.counts, (size_t)E * sizeof(int), cudaMemcpyDeviceToHost, st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);
    if ((rc = mg_comm_all_gather(x->c, x->hcnt, l->cnt, (size_t)E * sizeof(int), MG_COMM_BYTE, err))) return rc;
    int kept = 0;
    l->R = 0;
    for (int p = 0; p < P; p++) {
        l->snd[p] = l->rcv[p] = 0;
        for (int e = 0; e < El; e++) {
            l->snd[p] += (size_t)l->cnt[(size_t)x->q * E + p * El + e];
            l->rcv[p] += (size_t)l->cnt[(size_t)p * E + x->e0 + e];
        }
        kept += (int)l->snd[p];
        l->R += (int)l->rcv[p];
    }
    /* the kept rows in slot order, out to their owners */
    if (kept > 0) {
        int words = (int)(rbx / 16), div = x->k;
        void *args[6] = {&x->sbuf, &xin, (void *)&ms.perm, &div, &kept, &words};
        dim3 grid = {(unsigned)(kept < 65535 ? kept : 65535), 1, 1}, blk = {words < 256 ? (unsigned)words : 256u, 1, 1};
        MG_CUDA_TRY(cudaLaunchKernel((const void *)x->gather, grid, blk, args, 0, st), err);
    }
    ep_shared sh = {ffn, w, xin, NULL, NULL, N};   /* the shared experts run while the rows travel */
    if ((rc = exchange(x, st, x->sbuf, l->snd, x->rbuf, l->rcv, rbx, &sh, err)) ||
        (rc = regroup(x, l, st, x->rbuf, l->xr, rbx, 1, err)))
        return rc;
    /* the local experts */
    for (int e = 0; e < El; e++) {
        long f;
        int n;
        expert_rows(x, l, e, &f, &n);
        if (!n) continue;
        const char *wu = (const char *)w->w_up + (size_t)e * x->F2 * x->d * x->esz;
        const char *wd = (const char *)w->w_dn + (size_t)e * x->d * x->ff * x->esz;
        if ((rc = mg_moe_expert_fwd(ffn, st, wu, wd, row(l->xr, f, rbx), wrow(l->a, f, (size_t)x->F2 * x->esz),
                                    wrow(l->h, f, (size_t)x->ff * x->esz), wrow(x->z, f, rbx), n, err)))
            return rc;
    }
    /* outputs back to their tokens' ranks, into the layer's slot-order z; combine */
    void *zs, *dzs, *dxs;
    mg_moe_ep_bufs(ffn, &zs, &dzs, &dxs);
    if ((rc = regroup(x, l, st, x->z, x->sbuf, rbx, 0, err)) ||
        (rc = exchange(x, st, x->sbuf, l->rcv, zs, l->snd, rbx, NULL, err)))
        return rc;
    return mg_moe_combine(ffn, st, y, N, err);   /* + the shared experts' z_sh */
}

int mg_gpu_ep_backward(mg_gpu_ep *x, int li, mg_moe *ffn, cudaStream_t st, const mg_moe_weights *w,
                       const void *xin, const void *dy, void *dx, const mg_moe_grads *g, int N, mg_err *err)
{
    ep_layer *l = &x->ly[li];
    int rc, El = x->El;
    size_t rbx = (size_t)x->d * x->esz;
    void *zs, *dzs, *dxs;
    mg_moe_ep_bufs(ffn, &zs, &dzs, &dxs);
    /* dz of the kept slots (slot order) out to the owners */
    if ((rc = mg_moe_route_bwd(ffn, st, dy, N, err)) || (rc = exchange(x, st, dzs, l->snd, x->rbuf, l->rcv, rbx, NULL, err)) ||
        (rc = regroup(x, l, st, x->rbuf, x->dz, rbx, 1, err)))
        return rc;
    for (int e = 0; e < El; e++) {
        long f;
        int n;
        expert_rows(x, l, e, &f, &n);
        float *gu = g->dw_up + (size_t)e * x->F2 * x->d, *gd = g->dw_dn + (size_t)e * x->d * x->ff;
        if (!n) {   /* no rows: zero gradients, as a grouped wgrad writes them */
            MG_CUDA_TRY(cudaMemsetAsync(gu, 0, (size_t)x->F2 * x->d * 4, st), err);
            MG_CUDA_TRY(cudaMemsetAsync(gd, 0, (size_t)x->d * x->ff * 4, st), err);
            continue;
        }
        const char *wu = (const char *)w->w_up + (size_t)e * x->F2 * x->d * x->esz;
        const char *wd = (const char *)w->w_dn + (size_t)e * x->d * x->ff * x->esz;
        if ((rc = mg_moe_expert_bwd(ffn, st, wu, wd, row(l->xr, f, rbx), row(l->a, f, (size_t)x->F2 * x->esz),
                                    row(l->h, f, (size_t)x->ff * x->esz), row(x->dz, f, rbx),
                                    wrow(x->da, f, (size_t)x->F2 * x->esz), wrow(x->dxe, f, rbx), gu, gd, n, err)))
            return rc;
    }
    /* dx rows back into the slot-order dxs (dtype, as z; the shared experts' backward runs beside
     * it); the router's part and the sum per token (+ the shared experts' dxs_sh) */
    ep_shared sh = {ffn, w, xin, dy, g, N};
    if ((rc = regroup(x, l, st, x->dxe, x->sbuf, rbx, 0, err)) ||
        (rc = exchange(x, st, x->sbuf, l->rcv, dxs, l->snd, rbx, &sh, err)))
        return rc;
    return mg_moe_router_dx(ffn, st, w, xin, dx, g->dwg, N, err);
}

/* ------------------------------------------------------------------------------------ */
/* grad norm                                                                            */

int mg_gpu_ep_fix_norm(mg_gpu_ep *x, const mg_lm *lm, cudaStream_t st, const float *G, float *dnorm, double clip,
                       mg_err *err)
{
    int rc, c = 0;
    for (int i = 0; i < x->L; i++) {
        const mg_cpu_layer *l = &x->h->layers[i];
        if (!l->moe) continue;
        long long n = (long long)x->El * (x->F2 + x->ff) * x->d;   /* the local experts: one run */
        for (long long o = 0; o < n; o += EP_CHUNK, c++)
            if ((rc = mg_lm_sumsq(lm, st, G + l->w_up + o, n - o < EP_CHUNK ? n - o : EP_CHUNK,
                                  x->part + (size_t)c * LM_SUMSQ_BLOCKS, err)))
                return rc;
    }
    float *e2 = x->part + (size_t)x->n_part * LM_SUMSQ_BLOCKS;   /* its norm, then the clip factor */
    if ((rc = mg_lm_gnorm(lm, st, x->part, c * LM_SUMSQ_BLOCKS, 0.f, e2, err))) return rc;
    float hv[3];
    MG_CUDA_TRY(cudaMemcpyAsync(hv, dnorm, 2 * sizeof(float), cudaMemcpyDeviceToHost, st), err);
    MG_CUDA_TRY(cudaMemcpyAsync(hv + 2, e2, sizeof(float), cudaMemcpyDeviceToHost, st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);
    double mine = (double)hv[2] * hv[2], group = mine;
    if ((rc = mg_comm_all_reduce(x->c, &group, &group, 1, MG_COMM_F64, err))) return rc;
    double t2 = (double)hv[0] * hv[0] - mine + group, norm = sqrt(t2 > 0 ? t2 : 0);
    float out[2] = {(float)norm, (float)mg_clip_scale(norm, clip)};
    MG_CUDA_TRY(cudaMemcpyAsync(dnorm, out, sizeof out, cudaMemcpyHostToDevice, st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);
    return MG_OK;
}
