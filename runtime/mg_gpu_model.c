/* mg_gpu_model: the language model on one GPU (see mg_gpu_model.h for the math and layout). */
#include "mg_gpu_model.h"
#include "mg_blas.h"
#include "mg_cuda.h"
#include "mg_dist.h"   /* mg_dist_alive: a long cold JIT compile is not a hung worker */
#include "mg_dp.h"
#include "mg_gpu_ep.h"
#include "mg_gpu_zero.h"
#include "mg_hash.h"   /* dropout streams: the same counters as mg_cpu_ops.h */
#include "mg_jit.h"
#include "mg_lm.h"
#include "mg_moe.h"
#include "mg_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* CPU-side helpers (no device needed: tested by test_gpu_layout)                       */

int mg_gpu_count(char *why, size_t n) { return mg_cuda_device_count(why, n); }

double mg_gpu_mfu(const mg_spec *s, double tok_per_s, double peak)
{
    mg_derived dv;
    mg_spec_derive(s, &dv);
    return tok_per_s * dv.flops_per_token / (peak > 0 ? peak : MG_GPU_PEAK_BF16);
}

void mg_gpu_layer_spec(const mg_spec *s, int dense, mg_spec *out)
{
    *out = *s;
    out->parallel.dp = out->parallel.ep = 1;
    out->parallel.zero = 0;
    int A = s->train.grad_accum > 0 ? s->train.grad_accum : 1;
    if (dense) {
        int ffd = s->model.d_ff_dense;
        if (ffd <= 0) {
            mg_derived dv;
            mg_spec_derive(s, &dv);
            ffd = dv.d_ff_dense;
        }
        out->moe.experts = 1, out->moe.top_k = 1, out->moe.d_ff = ffd, out->moe.shared_experts = 0;
        out->moe.router = MG_ROUTER_SOFTMAX_TOPK, out->moe.renormalize = 0, out->moe.capacity_factor = 0;
        out->moe.aux_loss = 0, out->moe.z_loss = 0, out->moe.bias_update_rate = 0;
        if (out->moe.every == 0) out->moe.every = 1;
    } else {
        out->moe.aux_loss = s->moe.aux_loss / A;
        out->moe.z_loss = s->moe.z_loss / A;
    }
}

static int misplaced(mg_err *err, const mg_cpu_model *m, long off, long want, const char *what, int layer)
{
    if (off == want) return 0;
    const char *name = "?";
    for (int j = 0; j < m->n_tensors; j++)
        if (m->tensors[j].off == off) name = m->tensors[j].name;
    return mg_err_set(err, MG_EINTERNAL, "mg_gpu: layer %d: %s (%s) at offset %ld, the fused view needs %ld", layer, what,
                      name, off, want);
}

int mg_gpu_check_layout(const mg_cpu_model *m, mg_err *err)
{
    long d = m->d, qw = (long)m->H * m->hd, kw = (long)m->Hkv * m->hd;
    for (int i = 0; i < m->L; i++) {
        const mg_cpu_layer *l = &m->layers[i];
        if (misplaced(err, m, l->wk, l->wq + qw * d, "k_proj after q_proj", i) ||
            misplaced(err, m, l->wv, l->wk + kw * d, "v_proj after k_proj", i))
            return MG_EINTERNAL;
        if (l->moe) {
            long up = l->router + (long)m->E * d, dn = up + (long)m->E_loc * m->F2 * d;   /* a shard: its experts */
            if (misplaced(err, m, l->w_up, up, "experts' gate/up after the router", i) ||
                misplaced(err, m, l->w_dn, dn, "experts' down after gate/up", i))
                return MG_EINTERNAL;
            if (m->S) {
                long sup = dn + (long)m->E_loc * d * m->ff, sdn = sup + (long)m->S * m->F2 * d;
                if (misplaced(err, m, l->ws_up, sup, "shared experts' gate/up after the experts", i) ||
                    misplaced(err, m, l->ws_dn, sdn, "shared experts' down", i))
                    return MG_EINTERNAL;
            }
        } else if (misplaced(err, m, l->f_dn, l->f_up + (long)m->F2d * d, "down_proj after gate/up", i)) {
            return MG_EINTERNAL;
        }
    }
    return MG_OK;
}

/* ------------------------------------------------------------------------------------ */
/* the model on the device                                                               */

/* The kernels the LM and MoE families lack, compiled by NVRTC through the cache like every
 * other kernel:
 *   mg_gpu_add_f32  y += x (fp32): gradient accumulation over micro-batches
 *   mg_gpu_coact    coact [E,E] += the expert co-activation of topk [N,k], the pairs
 *                   mg_metrics_coact counts (i = j, or two different valid experts), with integer
 *                   atomics (deterministic in any order). A thread per token adds its k² pairs to a
 *                   per-block copy in shared memory when [E,E] fits (smem != 0), and each block
 *                   then adds its non-zero cells to coact: with E = 8 every token would otherwise
 *                   hit the same 64 global counters (41 µs a layer on an H100 at N = 16384, ~1% of
 *                   a wt2-moe8 step) */
static const char glue_src[] =
    "extern \"C\" __global__ void mg_gpu_add_f32(float *y, const float *x, long long n)\n"
    "{\n"
    "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
    "         i += (long long)gridDim.x * blockDim.x)\n"
    "        y[i] += x[i];\n"
    "}\n"
    "\n"
    "extern \"C\" __global__ void mg_gpu_coact(int *coact, const int *topk, int N, int E, int k, int smem)\n"
    "{\n"
    "    extern __shared__ int sh[];\n"
    "    int *dst = smem ? sh : coact;\n"
    "    if (smem) {\n"
    "        for (int i = threadIdx.x; i < E * E; i += blockDim.x) sh[i] = 0;\n"
    "        __syncthreads();\n"
    "    }\n"
    "    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < N; t += gridDim.x * blockDim.x) {\n"
    "        const int *s = topk + (long long)t * k;\n"
    "        for (int i = 0; i < k; i++) {\n"
    "            int e = s[i];\n"
    "            if (e < 0 || e >= E) continue;\n"
    "            for (int j = 0; j < k; j++) {\n"
    "                int f = s[j];\n"
    "                if (f >= 0 && f < E && (i == j || e != f)) atomicAdd(dst + (long long)e * E + f, 1);\n"
    "            }\n"
    "        }\n"
    "    }\n"
    "    if (smem) {\n"
    "        __syncthreads();\n"
    "        for (int i = threadIdx.x; i < E * E; i += blockDim.x)\n"
    "            if (sh[i]) atomicAdd(coact + i, sh[i]);\n"
    "    }\n"
    "}\n";

const char *mg_gpu_glue_source(size_t *len)
{
    *len = sizeof glue_src - 1;
    return glue_src;
}

#define GRAD_CHUNK (1LL << 24)   /* elements per sumsq launch (its own LM_SUMSQ_BLOCKS partials) */

typedef struct gpu_layer {
    mg_moe *ffn;                  /* the MoE layer, or the dense FFN as E = 1 */
    long span, span_n;            /* FFN parameters: first offset and count (router/experts or dense) */
    void *n1, *qkv, *att, *x_mid, *n2;
    float *r1, *r2, *lse;
    float *bias;                  /* [E] device selection bias or NULL */
} gpu_layer;

struct mg_gpu_model {
    mg_cpu_model *h;
    mg_spec spec;
    int bmax, T, d, V, L, qw, W3, E, esz, dtype, tied;
    int ldV;                      /* vocabulary padded to a multiple of 64: the logits' row stride and the
                                   * LM head GEMMs' vocabulary dim (Vp below) */
    mg_lm *lm;
    mg_blas *blas;
    cudaStream_t st;
    cudaLibrary_t glue_lib;
    cudaKernel_t add_k, coact_k;
    float *P, *G, *M, *Vm, *Gs;
    void *Wc;
    void *Hc;                     /* the LM head's compute copy [Vp, d], rows [V, Vp) zero (see head_c) */
    void *wg0;                    /* zero router of the dense layers: [1, d] dtype */
    float *dwg0;                  /* its (exactly zero) gradient */
    gpu_layer *ly;
    void **X;                     /* [L + 1] residual stream at each layer's input; X[L] = final */
    void *tmp, *dx, *dtmp, *dn, *datt, *dqkv, *nf, *logits;
    float *rf, *loss_row, *dsum, *dw_part, *cos_t, *sin_t, *part, *dnorm;
    int *ids, *tgt, *sort_ws;
    int32_t *stage[2];
    cudaEvent_t ev[2];
    int cur;
    int slots, sstride, cstride, n_chunks;
    float *dstat, *hstat;         /* per slot: CE mean, (aux, z) per layer, then (Σ entropy, Σ top-1) per layer */
    int *dcnt, *hcnt;             /* per slot: per layer counts_all [E] then n_dropped */
    int *slot_N;
    mg_gpu_ep *ep;                /* expert parallel (h is a shard): the MoE layers exchange tokens */
    /* expert co-activation (mg_gpu_count_coact): per slot < co_slots, per MoE layer [E, E] */
    int *dco, *hco, *moe_ord;     /* moe_ord [L]: the MoE layer's index among the MoE layers, or -1 */
    int co_slots, n_moe, co_on;
    unsigned char *co_done;       /* [slots]: bit 0: the slot's last run counted co-activation; bit 1: read */
    /* data parallel (mg_dp.h): each bucket is all-reduced on cs once its stage's backward is done */
    const mg_dp *dp;
    cudaStream_t cs;
    cudaEvent_t *bev, cev;        /* per bucket: its gradients are final; on cs: every bucket reduced */
    int dp_sync;                  /* MOEGEN_DP_SYNC: reduce each bucket with the device idle (diagnostic) */
    int dp_armed, dp_pending;
    /* ZeRO-1 (mg_gpu_zero.h): P (bf16/fp16 models), M and Vm hold the shard only */
    const mg_zero *zero;
    int *const *route_out;        /* [L] host buffers for each MoE layer's top-k choices (check only) */
};

/* The LM head's compute copy lives in its own buffer Hc of Vp >= V rows, the rows past V zero,
 * so that the logits GEMM (N = Vp) and the dX GEMM (K = Vp) have dims cuBLASLt's Hopper kernels
 * take (V = 33278 made it fall back to sm80 kernels at ~half the speed), while P, G, the
 * checkpoints and the head's weight gradient (V rows) keep the CPU model's layout. AdamW
 * writes the head's compute copy straight into Hc (the head's slot in Wc is unused), so there
 * is no copy per step; with tied embeddings the embedding gather reads Hc too. The padded
 * logits columns are exactly 0 (zero rows) and xent writes them a zero gradient. */
static int head_c(const mg_gpu_model *g, long off)
{
    const long h0 = g->h->lm_head;
    return off >= h0 && off < h0 + (long)g->V * g->d;
}

/* The compute copy (storage type) of the parameter at flat offset off. */
static void *WC(const mg_gpu_model *g, long off)
{
    if (head_c(g, off)) return (char *)g->Hc + (off - g->h->lm_head) * (long)g->esz;
    return (char *)g->Wc + off * (long)g->esz;
}

static int gemm(mg_gpu_model *g, int ta, int tb, int m, int n, int k, const void *A, int lda, const void *B,
                int ldb, float beta, void *C, int ldc, int out_f32, mg_err *err)
{
    mg_blas_type t = g->dtype == MG_DTYPE_FP32 ? MG_BLAS_F32
                     : g->dtype == MG_DTYPE_BF16 ? (out_f32 ? MG_BLAS_BF16_F32 : MG_BLAS_BF16)
                                                 : (out_f32 ? MG_BLAS_F16_F32 : MG_BLAS_F16);
    return mg_blas_gemm(g->blas, g->st, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc, t, err);
}

static int add_f32(mg_gpu_model *g, float *y, const float *x, long long n, mg_err *err)
{
    if (n <= 0) return MG_OK;
    long long blocks = (n + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    dim3 grid = {(unsigned)blocks, 1, 1}, blk = {256, 1, 1};
    void *args[3] = {&y, &x, &n};
    MG_CUDA_TRY(cudaLaunchKernel((const void *)g->add_k, grid, blk, args, 0, g->st), err);
    return MG_OK;
}

/* coact [E,E] += the co-activation of topk [N,k] (mg_gpu_coact). */
static int coact_count(mg_gpu_model *g, int *coact, const int *topk, int N, mg_err *err)
{
    /* a block per 1024 tokens at most 132·2 blocks: few enough that the blocks' final adds
     * (E² each) stay small next to the N·k² shared-memory adds, enough to fill the GPU */
    int E = g->E, k = g->h->k, blocks = (N + 1023) / 1024;
    if (blocks > 264) blocks = 264;
    if (blocks < 1) blocks = 1;
    size_t sbytes = (size_t)E * E * sizeof(int);
    int smem = sbytes <= 48 * 1024;   /* the default dynamic shared-memory limit; no opt-in needed */
    dim3 grid = {(unsigned)blocks, 1, 1}, blk = {256, 1, 1};
    void *args[6] = {&coact, &topk, &N, &E, &k, &smem};
    MG_CUDA_TRY(cudaLaunchKernel((const void *)g->coact_k, grid, blk, args, smem ? sbytes : 0, g->st), err);
    return MG_OK;
}

static int dmalloc(void **p, size_t bytes, mg_err *err)
{
    MG_CUDA_TRY(cudaMalloc(p, bytes ? bytes : 16), err);
    return MG_OK;
}
#define DALLOC(ptr, bytes) do { if ((rc = dmalloc((void **)&(ptr), (size_t)(bytes), err))) goto fail; } while (0)

static int build_glue(mg_gpu_model *g, const char *arch, mg_err *err)
{
    mg_jit_opts jo = {.arch = arch};
    mg_jit_result res;
    memset(&res, 0, sizeof res);
    int rc = mg_jit_compile("mg_gpu_glue", glue_src, sizeof glue_src - 1, &jo, &res, err);
    if (rc) return rc;
    cudaError_t e = cudaLibraryLoadData(&g->glue_lib, res.cubin.data, NULL, NULL, 0, NULL, NULL, 0);
    mg_jit_result_free(&res);
    if (e != cudaSuccess) return mg_err_set(err, MG_EINTERNAL, "cudaLibraryLoadData(mg_gpu_glue): %s", cudaGetErrorString(e));
    MG_CUDA_TRY(cudaLibraryGetKernel(&g->add_k, g->glue_lib, "mg_gpu_add_f32"), err);
    MG_CUDA_TRY(cudaLibraryGetKernel(&g->coact_k, g->glue_lib, "mg_gpu_coact"), err);
    return MG_OK;
}

int mg_gpu_create(mg_gpu_model **out, mg_cpu_model *h, int bmax, const mg_gpu_opts *o, mg_err *err)
{
    *out = NULL;
    int rc = mg_gpu_check_layout(h, err);
    if (rc) return rc;
    char why[256];
    if (mg_gpu_count(why, sizeof why) < 1) return mg_err_set(err, MG_EUSER, "no CUDA device (%s)", why);
    mg_gpu_model *g = calloc(1, sizeof *g);
    if (!g) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_create: out of memory");
    g->h = h, g->spec = h->spec, g->bmax = bmax, g->T = h->T, g->d = h->d, g->V = h->V, g->L = h->L, g->E = h->E;
    g->ldV = (h->V + 63) / 64 * 64;
    g->qw = h->H * h->hd, g->W3 = (h->H + 2 * h->Hkv) * h->hd;
    g->dtype = g->spec.dtype, g->esz = mg_dtype_size(g->spec.dtype);
    g->tied = g->spec.model.tie_embeddings;
    int A = g->spec.train.grad_accum > 0 ? g->spec.train.grad_accum : 1;
    g->slots = A > g->spec.train.eval_batches ? A : g->spec.train.eval_batches;
    if (g->slots < 1) g->slots = 1;
    g->sstride = 1 + 4 * g->L, g->cstride = g->L * (g->E + 1);
    long N = (long)bmax * g->T, d = g->d, np = h->n_params;

    char arch[32];
    if (o && o->arch) snprintf(arch, sizeof arch, "%s", o->arch);
    else {
        int dev = 0;
        cudaGetDevice(&dev);
        if (mg_cuda_arch(dev, arch, sizeof arch)) { rc = mg_err_set(err, MG_EINTERNAL, "cannot read the compute capability"); goto fail; }
    }
    if (cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking) != cudaSuccess) {
        rc = mg_err_set(err, MG_EINTERNAL, "cudaStreamCreate failed");
        goto fail;
    }
    for (int i = 0; i < 2; i++) MG_CUDA_TRY(cudaEventCreateWithFlags(&g->ev[i], cudaEventDisableTiming), err);
    if ((rc = mg_blas_create(&g->blas, 0, err))) goto fail;
    if ((rc = build_glue(g, arch, err))) goto fail;

    /* kernels: the LM families from the spec; the FFN per layer kind */
    mg_plan *plan = malloc(sizeof *plan);
    if (!plan) { rc = mg_err_set(err, MG_EINTERNAL, "out of memory"); goto fail; }
    mg_spec ls;
    mg_gpu_layer_spec(&g->spec, 0, &ls);
    mg_lm_opts lo = {.arch = arch, .verbose = o ? o->verbose : 0};
    if (!(rc = mg_plan_make(&ls, NULL, plan, err))) rc = mg_lm_create(plan, &lo, &g->lm, err);
    g->ly = calloc((size_t)g->L, sizeof *g->ly);
    for (int i = 0; i < g->L && !rc; i++) {
        mg_dist_alive();
        const mg_cpu_layer *l = &h->layers[i];
        mg_gpu_layer_spec(&g->spec, !l->moe, &ls);
        if (l->moe && o && o->loss_scale > 0)   /* data parallel: 1/(A_loc·world) instead of 1/grad_accum */
            ls.moe.aux_loss = g->spec.moe.aux_loss * o->loss_scale, ls.moe.z_loss = g->spec.moe.z_loss * o->loss_scale;
        mg_moe_opts mo = {.arch = arch, .verbose = o ? o->verbose : 0};
        if ((rc = mg_spec_validate(&ls, err)) || (rc = mg_plan_make(&ls, NULL, plan, err)) ||
            (rc = mg_moe_create(plan, &mo, (int)N, &g->ly[i].ffn, err)))
            break;
        if (l->moe) {
            g->ly[i].span = l->router;
            g->ly[i].span_n = (long)h->E * d + (long)h->E_loc * (h->F2 + h->ff) * d + (long)h->S * (h->F2 + h->ff) * d;
        } else {
            g->ly[i].span = l->f_up;
            g->ly[i].span_n = (long)(h->F2d + h->ffd) * d;
        }
    }
    free(plan);
    if (rc) goto fail;

    /* parameters, gradients, optimizer state; ZeRO-1: the state of the shard only (the fp32 masters
     * too, unless they are the compute weights) */
    g->zero = o && o->zero && o->zero->on ? o->zero : NULL;
    long ns = g->zero ? g->zero->n_shard : np;
    DALLOC(g->P, (g->dtype == MG_DTYPE_FP32 ? np : ns) * 4);
    DALLOC(g->G, np * 4);
    DALLOC(g->M, ns * 4);
    DALLOC(g->Vm, ns * 4);
    if (g->dtype == MG_DTYPE_FP32) g->Wc = g->P;
    else DALLOC(g->Wc, np * g->esz);
    DALLOC(g->Hc, (size_t)g->ldV * d * g->esz);
    MG_CUDA_TRY(cudaMemset(g->Hc, 0, (size_t)g->ldV * d * g->esz), err);   /* the padding rows stay 0 */
    long gs = d;
    for (int i = 0; i < g->L; i++) if (g->ly[i].span_n > gs) gs = g->ly[i].span_n;
    DALLOC(g->Gs, gs * 4);
    DALLOC(g->wg0, d * g->esz);
    DALLOC(g->dwg0, d * 4);
    MG_CUDA_TRY(cudaMemset(g->wg0, 0, (size_t)d * g->esz), err);

    /* activations */
    size_t Nd = (size_t)N * d * g->esz;
    g->X = calloc((size_t)g->L + 1, sizeof(void *));
    for (int i = 0; i <= g->L; i++) DALLOC(g->X[i], Nd);
    for (int i = 0; i < g->L; i++) {
        gpu_layer *y = &g->ly[i];
        DALLOC(y->n1, Nd);
        DALLOC(y->x_mid, Nd);
        DALLOC(y->n2, Nd);
        DALLOC(y->qkv, (size_t)N * g->W3 * g->esz);
        DALLOC(y->att, (size_t)N * g->qw * g->esz);
        DALLOC(y->r1, N * 4);
        DALLOC(y->r2, N * 4);
        DALLOC(y->lse, (size_t)bmax * h->H * g->T * 4);
        if (h->layers[i].sel_bias) DALLOC(y->bias, (size_t)g->E * 4);
    }
    DALLOC(g->tmp, Nd);
    DALLOC(g->dx, Nd);
    DALLOC(g->dtmp, Nd);
    DALLOC(g->dn, Nd);
    DALLOC(g->nf, Nd);
    DALLOC(g->datt, (size_t)N * g->qw * g->esz);
    DALLOC(g->dqkv, (size_t)N * g->W3 * g->esz);
    DALLOC(g->logits, (size_t)N * g->ldV * g->esz);
    DALLOC(g->rf, N * 4);
    DALLOC(g->loss_row, N * 4);
    DALLOC(g->dsum, mg_lm_ws_attn_dsum(g->lm, bmax, g->T) * 4);
    DALLOC(g->dw_part, mg_lm_ws_norm_dw(g->lm, (int)N) * 4);
    DALLOC(g->sort_ws, mg_lm_ws_embed_sort(g->lm, (int)N) * 4);
    DALLOC(g->cos_t, (size_t)g->T * (h->hd / 2) * 4);
    DALLOC(g->sin_t, (size_t)g->T * (h->hd / 2) * 4);
    g->n_chunks = (int)((np + GRAD_CHUNK - 1) / GRAD_CHUNK);
    long n_part = g->n_chunks;   /* ZeRO-1 sums the squares run by run: maybe more launches */
    if (g->zero && mg_gpu_zero_norm_chunks(g->zero, GRAD_CHUNK) > n_part) n_part = mg_gpu_zero_norm_chunks(g->zero, GRAD_CHUNK);
    DALLOC(g->part, (size_t)n_part * LM_SUMSQ_BLOCKS * 4);
    DALLOC(g->dnorm, 2 * 4);
    DALLOC(g->ids, N * 4);
    DALLOC(g->tgt, N * 4);
    DALLOC(g->dstat, (size_t)g->slots * g->sstride * 4);
    DALLOC(g->dcnt, (size_t)g->slots * g->cstride * 4);
    MG_CUDA_TRY(cudaMemset(g->dstat, 0, (size_t)g->slots * g->sstride * 4), err);
    MG_CUDA_TRY(cudaMemset(g->dcnt, 0, (size_t)g->slots * g->cstride * 4), err);
    MG_CUDA_TRY(cudaHostAlloc((void **)&g->hstat, (size_t)g->slots * g->sstride * 4, 0), err);
    MG_CUDA_TRY(cudaHostAlloc((void **)&g->hcnt, (size_t)g->slots * g->cstride * 4, 0), err);
    for (int i = 0; i < 2; i++)
        MG_CUDA_TRY(cudaHostAlloc((void **)&g->stage[i], (size_t)bmax * (g->T + 1) * 4, 0), err);
    g->slot_N = calloc((size_t)g->slots, sizeof(int));
    /* co-activation: training micro-batches only (slots < grad_accum), E² ints per MoE layer */
    g->moe_ord = malloc(sizeof(int) * (size_t)g->L);
    g->co_done = calloc((size_t)g->slots, 1);
    if (!g->slot_N || !g->moe_ord || !g->co_done) { rc = mg_err_set(err, MG_EINTERNAL, "out of memory"); goto fail; }
    for (int i = 0; i < g->L; i++) g->moe_ord[i] = h->layers[i].moe ? g->n_moe++ : -1;
    g->co_slots = A < g->slots ? A : g->slots;
    size_t co_bytes = (size_t)g->co_slots * g->n_moe * g->E * g->E * 4;
    DALLOC(g->dco, co_bytes);
    MG_CUDA_TRY(cudaHostAlloc((void **)&g->hco, co_bytes ? co_bytes : 16, 0), err);
    if ((rc = mg_lm_rope_table(g->lm, g->st, g->cos_t, g->sin_t, g->T, err))) goto fail;
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    *out = g;
    return MG_OK;
fail:
    mg_gpu_destroy(g);
    return rc ? rc : MG_EINTERNAL;
}

void mg_gpu_destroy(mg_gpu_model *g)
{
    if (!g) return;
    if (g->st) cudaStreamSynchronize(g->st);
    for (int i = 0; g->ly && i < g->L; i++) {
        gpu_layer *y = &g->ly[i];
        mg_moe_destroy(y->ffn);
        cudaFree(y->n1); cudaFree(y->x_mid); cudaFree(y->n2); cudaFree(y->qkv); cudaFree(y->att);
        cudaFree(y->r1); cudaFree(y->r2); cudaFree(y->lse); cudaFree(y->bias);
    }
    for (int i = 0; g->X && i <= g->L; i++) cudaFree(g->X[i]);
    free(g->X);
    free(g->ly);
    if (g->Wc != g->P) cudaFree(g->Wc);
    cudaFree(g->Hc);
    cudaFree(g->P); cudaFree(g->G); cudaFree(g->M); cudaFree(g->Vm); cudaFree(g->Gs); cudaFree(g->wg0);
    cudaFree(g->dwg0); cudaFree(g->tmp); cudaFree(g->dx); cudaFree(g->dtmp); cudaFree(g->dn); cudaFree(g->nf);
    cudaFree(g->datt); cudaFree(g->dqkv); cudaFree(g->logits); cudaFree(g->rf); cudaFree(g->loss_row);
    cudaFree(g->dsum); cudaFree(g->dw_part); cudaFree(g->sort_ws); cudaFree(g->cos_t); cudaFree(g->sin_t);
    cudaFree(g->part); cudaFree(g->dnorm); cudaFree(g->ids); cudaFree(g->tgt); cudaFree(g->dstat); cudaFree(g->dcnt);
    if (g->hstat) cudaFreeHost(g->hstat);
    if (g->hcnt) cudaFreeHost(g->hcnt);
    cudaFree(g->dco);
    if (g->hco) cudaFreeHost(g->hco);
    free(g->moe_ord);
    free(g->co_done);
    for (int i = 0; i < 2; i++) {
        if (g->stage[i]) cudaFreeHost(g->stage[i]);
        if (g->ev[i]) cudaEventDestroy(g->ev[i]);
    }
    free(g->slot_N);
    for (int i = 0; g->bev && i < g->dp->n_buckets; i++)
        if (g->bev[i]) cudaEventDestroy(g->bev[i]);
    free(g->bev);
    if (g->cev) cudaEventDestroy(g->cev);
    if (g->cs) cudaStreamSynchronize(g->cs), cudaStreamDestroy(g->cs);
    mg_lm_destroy(g->lm);
    mg_blas_destroy(g->blas);
    mg_gpu_ep_destroy(g->ep);
    if (g->glue_lib) cudaLibraryUnload(g->glue_lib);
    if (g->st) cudaStreamDestroy(g->st);
    free(g);
}

int mg_gpu_slots(const mg_gpu_model *g) { return g->slots; }

/* ------------------------------------------------------------------------------------ */
/* transfers                                                                             */

int mg_gpu_upload_bias(mg_gpu_model *g, mg_err *err)
{
    for (int i = 0; i < g->L; i++)
        if (g->ly[i].bias)
            MG_CUDA_TRY(cudaMemcpyAsync(g->ly[i].bias, g->h->layers[i].sel_bias, (size_t)g->E * 4,
                                        cudaMemcpyHostToDevice, g->st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    return MG_OK;
}

/* ZeRO-1's view of the buffers (mg_gpu_zero.h). */
static mg_gpu_zero_bufs zero_bufs(const mg_gpu_model *g)
{
    return (mg_gpu_zero_bufs){.h = g->h, .lm = g->lm, .G = g->G, .M = g->M, .V = g->Vm, .P = g->P,
                              .master_flat = g->Wc == g->P, .Wc = g->Wc, .esz = g->esz, .Hc = g->Hc,
                              .part = g->part, .chunk = GRAD_CHUNK, .dnorm = g->dnorm};
}

int mg_gpu_upload(mg_gpu_model *g, const mg_adamw *o, mg_err *err)
{
    size_t nb = (size_t)g->h->n_params * 4, no = (size_t)(g->zero ? g->zero->n_shard : g->h->n_params) * 4;
    /* ZeRO-1 with a bf16/fp16 model holds only the shard of the fp32 weights: the whole arrives in G
     * (free until the first backward writes every gradient), the compute copies are cast from it */
    float *flat = g->zero && g->Wc != g->P ? g->G : g->P;
    MG_CUDA_TRY(cudaMemcpy(flat, g->h->params, nb, cudaMemcpyHostToDevice), err);
    int rc;
    mg_gpu_zero_bufs zb = zero_bufs(g);
    if (g->zero && (rc = mg_gpu_zero_master_from_flat(g->zero, &zb, flat, g->st, err))) return rc;
    if (o && o->m) {
        MG_CUDA_TRY(cudaMemcpy(g->M, o->m, no, cudaMemcpyHostToDevice), err);
        MG_CUDA_TRY(cudaMemcpy(g->Vm, o->v, no, cudaMemcpyHostToDevice), err);
    } else {
        MG_CUDA_TRY(cudaMemset(g->M, 0, no), err);
        MG_CUDA_TRY(cudaMemset(g->Vm, 0, no), err);
    }
    if (g->Wc != g->P && (rc = mg_lm_cast(g->lm, g->st, flat, g->Wc, g->h->n_params, err))) return rc;
    if ((rc = mg_lm_cast(g->lm, g->st, flat + g->h->lm_head, g->Hc, (long long)g->V * g->d, err))) return rc;
    if (flat == g->G) MG_CUDA_TRY(cudaMemsetAsync(g->G, 0, nb, g->st), err);   /* as it was: no weights in G */
    return mg_gpu_upload_bias(g, err);
}

int mg_gpu_download(mg_gpu_model *g, mg_adamw *o, mg_err *err)
{
    size_t nb = (size_t)g->h->n_params * 4, no = (size_t)(g->zero ? g->zero->n_shard : g->h->n_params) * 4;
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    if (g->zero) {   /* this rank's runs of the weights; the trainer gathers the rest (mg_zero_gather) */
        mg_gpu_zero_bufs zb = zero_bufs(g);
        int rc = mg_gpu_zero_master_to_host(g->zero, &zb, g->h->params, err);
        if (rc) return rc;
    } else {
        MG_CUDA_TRY(cudaMemcpy(g->h->params, g->P, nb, cudaMemcpyDeviceToHost), err);
    }
    if (o) {
        MG_CUDA_TRY(cudaMemcpy(o->m, g->M, no, cudaMemcpyDeviceToHost), err);
        MG_CUDA_TRY(cudaMemcpy(o->v, g->Vm, no, cudaMemcpyDeviceToHost), err);
    }
    return MG_OK;
}

int mg_gpu_download_grads(mg_gpu_model *g, float *out, mg_err *err)
{
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    MG_CUDA_TRY(cudaMemcpy(out, g->G, (size_t)g->h->n_params * 4, cudaMemcpyDeviceToHost), err);
    return MG_OK;
}

void mg_gpu_capture_routing(mg_gpu_model *g, int *const *per_layer) { g->route_out = per_layer; }

/* ------------------------------------------------------------------------------------ */
/* data parallel: bucketed gradient all-reduce overlapping the backward                  */

int mg_gpu_dp_attach(mg_gpu_model *g, const mg_dp *dp, mg_err *err)
{
    if (!mg_dp_on(dp)) return MG_OK;
    g->dp = dp;
    MG_CUDA_TRY(cudaStreamCreateWithFlags(&g->cs, cudaStreamNonBlocking), err);
    g->bev = calloc((size_t)dp->n_buckets, sizeof *g->bev);
    if (!g->bev) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_dp_attach: out of memory");
    for (int i = 0; i < dp->n_buckets; i++)
        MG_CUDA_TRY(cudaEventCreateWithFlags(&g->bev[i], cudaEventDisableTiming), err);
    MG_CUDA_TRY(cudaEventCreateWithFlags(&g->cev, cudaEventDisableTiming), err);
    /* MOEGEN_DP_SYNC=1: no overlap, each bucket reduced with the device idle before and after;
     * a diagnostic that tells a reduction racing the backward from numerical drift */
    const char *sy = getenv("MOEGEN_DP_SYNC");
    g->dp_sync = sy && *sy && strcmp(sy, "0");
    return MG_OK;
}

int mg_gpu_ep_attach(mg_gpu_model *g, mg_comm *ep_comm, mg_err *err)
{
    return g->h->ep > 1 ? mg_gpu_ep_create(&g->ep, ep_comm, g->h, g->bmax, err) : MG_OK;
}

void mg_gpu_dp_arm(mg_gpu_model *g) { g->dp_armed = g->dp != NULL; }

double mg_gpu_a2a_seconds(const mg_gpu_model *g) { return g->ep ? mg_gpu_ep_a2a_seconds(g->ep) : -1; }
double mg_gpu_a2a_hidden_seconds(const mg_gpu_model *g) { return g->ep ? mg_gpu_ep_a2a_hidden_seconds(g->ep) : -1; }

/* The backward of `stage` is enqueued: its buckets' all-reduce goes on cs behind an event, so it
 * runs while the compute stream goes on with the earlier layers. */
static int dp_stage_done(mg_gpu_model *g, int stage, mg_err *err)
{
    if (!g->dp_armed) return MG_OK;
    const mg_dp *dp = g->dp;
    for (int i = 0; i < dp->n_buckets; i++) {
        const mg_dp_bucket *b = &dp->b[i];
        if (b->stage != stage) continue;
        if (g->dp_sync) MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
        MG_CUDA_TRY(cudaEventRecord(g->bev[i], g->st), err);
        MG_CUDA_TRY(cudaStreamWaitEvent(g->cs, g->bev[i], 0), err);
        int rc = g->zero ? mg_zero_reduce_bucket_async(g->zero, i, g->G, g->cs, err)
                         : mg_comm_all_reduce_async(dp->comm[b->group], g->G + b->off, g->G + b->off, (size_t)b->n,
                                                    MG_COMM_F32, g->cs, err);
        if (rc) return rc;
        if (g->dp_sync) MG_CUDA_TRY(cudaStreamSynchronize(g->cs), err);
        g->dp_pending = 1;
    }
    return MG_OK;
}

/* ------------------------------------------------------------------------------------ */
/* forward and backward of one micro-batch                                               */

static mg_moe_weights ffn_weights(const mg_gpu_model *g, int i)
{
    const mg_cpu_layer *l = &g->h->layers[i];
    if (!l->moe) return (mg_moe_weights){.wg = g->wg0, .w_up = WC(g, l->f_up), .w_dn = WC(g, l->f_dn)};
    return (mg_moe_weights){.wg = WC(g, l->router), .bias = g->ly[i].bias, .w_up = WC(g, l->w_up),
                            .w_dn = WC(g, l->w_dn), .ws_up = g->h->S ? WC(g, l->ws_up) : NULL,
                            .ws_dn = g->h->S ? WC(g, l->ws_dn) : NULL};
}

/* Gradient targets of layer i's FFN inside base (G, or the scratch Gs laid out like the span). */
static mg_moe_grads ffn_grads(const mg_gpu_model *g, int i, float *base)
{
    const mg_cpu_layer *l = &g->h->layers[i];
    long s0 = g->ly[i].span;
    if (!l->moe) return (mg_moe_grads){.dwg = g->dwg0, .dw_up = base + (l->f_up - s0), .dw_dn = base + (l->f_dn - s0)};
    return (mg_moe_grads){.dwg = base + (l->router - s0), .dw_up = base + (l->w_up - s0), .dw_dn = base + (l->w_dn - s0),
                          .dws_up = g->h->S ? base + (l->ws_up - s0) : NULL,
                          .dws_dn = g->h->S ? base + (l->ws_dn - s0) : NULL};
}

static int layer_fwd(mg_gpu_model *g, int i, int B, const mg_cpu_ctx *c, double p, int slot, mg_err *err)
{
    const mg_cpu_layer *l = &g->h->layers[i];
    gpu_layer *y = &g->ly[i];
    int N = B * g->T, d = g->d, rc;
    long long Nd = (long long)N * d;
    unsigned long long s0 = mg_hash_drop_stream(c->seed, (unsigned long long)c->step, (unsigned long long)c->micro,
                                                (unsigned long long)(2 * i));
    if ((rc = mg_lm_norm_fwd(g->lm, g->st, g->X[i], NULL, NULL, WC(g, l->ln1), y->n1, y->r1, N, err)) ||
        (rc = gemm(g, 0, 1, N, g->W3, d, y->n1, d, WC(g, l->wq), d, 0.f, y->qkv, g->W3, 0, err)) ||
        (rc = mg_lm_rope(g->lm, g->st, 0, y->qkv, g->cos_t, g->sin_t, B, g->T, err)) ||
        (rc = mg_lm_attn_fwd(g->lm, g->st, y->qkv, y->att, y->lse, B, g->T, err)) ||
        (rc = gemm(g, 0, 1, N, d, g->qw, y->att, g->qw, WC(g, l->wo), g->qw, 0.f, g->tmp, d, 0, err)) ||
        (rc = mg_lm_dropout(g->lm, g->st, 0, g->tmp, g->X[i], y->x_mid, Nd, p, s0, err)) ||
        (rc = mg_lm_norm_fwd(g->lm, g->st, y->x_mid, NULL, NULL, WC(g, l->ln2), y->n2, y->r2, N, err)))
        return rc;
    mg_moe_weights w = ffn_weights(g, i);
    if ((rc = g->ep && l->moe ? mg_gpu_ep_forward(g->ep, i, y->ffn, g->st, &w, y->n2, g->tmp, N, err)
                              : mg_moe_forward(y->ffn, g->st, &w, y->n2, g->tmp, N, err)))
        return rc;
    if (l->moe) {
        mg_moe_state ms;
        mg_moe_get_state(y->ffn, &ms);
        float *sd = g->dstat + (size_t)slot * g->sstride + 1 + 2 * i;
        int *cd = g->dcnt + (size_t)slot * g->cstride + i * (g->E + 1);
        MG_CUDA_TRY(cudaMemcpyAsync(sd, ms.loss, 2 * sizeof(float), cudaMemcpyDeviceToDevice, g->st), err);
        MG_CUDA_TRY(cudaMemcpyAsync(sd + 2 * g->L, ms.loss + 2, 2 * sizeof(float), cudaMemcpyDeviceToDevice, g->st),
                    err);   /* router entropy/top-1 sums */
        MG_CUDA_TRY(cudaMemcpyAsync(cd, ms.counts_all, (size_t)g->E * sizeof(int), cudaMemcpyDeviceToDevice, g->st), err);
        MG_CUDA_TRY(cudaMemcpyAsync(cd + g->E, ms.n_dropped, sizeof(int), cudaMemcpyDeviceToDevice, g->st), err);
        if (g->co_done[slot] & 1) {
            int *co = g->dco + ((size_t)slot * g->n_moe + g->moe_ord[i]) * g->E * g->E;
            if ((rc = coact_count(g, co, ms.topk_idx, N, err))) return rc;
        }
        if (g->route_out && g->route_out[i])
            MG_CUDA_TRY(cudaMemcpyAsync(g->route_out[i], ms.topk_idx, (size_t)N * g->h->k * sizeof(int),
                                        cudaMemcpyDeviceToHost, g->st), err);
    }
    unsigned long long s1 = mg_hash_drop_stream(c->seed, (unsigned long long)c->step, (unsigned long long)c->micro,
                                                (unsigned long long)(2 * i + 1));
    return mg_lm_dropout(g->lm, g->st, 0, g->tmp, y->x_mid, g->X[i + 1], Nd, p, s1, err);
}

/* Norm weight gradient: written into G on micro-batch 0, else into the scratch and added. */
static int norm_bwd(mg_gpu_model *g, int acc, const void *dy, const void *h, long w_off, const float *rstd,
                    const void *dres, void *dx, int N, mg_err *err)
{
    float *dw = acc ? g->Gs : g->G + w_off;
    int rc = mg_lm_norm_bwd(g->lm, g->st, dy, h, WC(g, w_off), rstd, dres, dx, g->dw_part, dw, N, err);
    if (!rc && acc) rc = add_f32(g, g->G + w_off, g->Gs, g->d, err);
    return rc;
}

/* g->dx holds dL/dx at layer i's output; on return, at its input. */
static int layer_bwd(mg_gpu_model *g, int i, int B, const mg_cpu_ctx *c, double p, int acc, mg_err *err)
{
    const mg_cpu_layer *l = &g->h->layers[i];
    gpu_layer *y = &g->ly[i];
    int N = B * g->T, d = g->d, rc;
    long long Nd = (long long)N * d;
    float beta = acc ? 1.f : 0.f;
    unsigned long long sa = mg_hash_drop_stream(c->seed, (unsigned long long)c->step, (unsigned long long)c->micro,
                                                (unsigned long long)(2 * i)),
                       sf = mg_hash_drop_stream(c->seed, (unsigned long long)c->step, (unsigned long long)c->micro,
                                                (unsigned long long)(2 * i + 1));
    /* FFN branch */
    mg_moe_weights w = ffn_weights(g, i);
    mg_moe_grads gr = ffn_grads(g, i, acc ? g->Gs : g->G + y->span);
    if ((rc = mg_lm_dropout(g->lm, g->st, 1, g->dx, NULL, g->dtmp, Nd, p, sf, err)) ||
        (rc = g->ep && l->moe ? mg_gpu_ep_backward(g->ep, i, y->ffn, g->st, &w, y->n2, g->dtmp, g->dn, &gr, N, err)
                              : mg_moe_backward(y->ffn, g->st, &w, y->n2, g->dtmp, g->dn, &gr, N, err)))
        return rc;
    if (acc && (rc = add_f32(g, g->G + y->span, g->Gs, y->span_n, err))) return rc;
    if ((rc = norm_bwd(g, acc, g->dn, y->x_mid, l->ln2, y->r2, g->dx, g->dx, N, err))) return rc;
    /* attention branch */
    if ((rc = mg_lm_dropout(g->lm, g->st, 1, g->dx, NULL, g->dtmp, Nd, p, sa, err)) ||
        (rc = gemm(g, 0, 0, N, g->qw, d, g->dtmp, d, WC(g, l->wo), g->qw, 0.f, g->datt, g->qw, 0, err)) ||
        (rc = gemm(g, 1, 0, d, g->qw, N, g->dtmp, d, y->att, g->qw, beta, g->G + l->wo, g->qw, 1, err)) ||
        (rc = mg_lm_attn_bwd(g->lm, g->st, y->qkv, y->att, g->datt, y->lse, g->dsum, g->dqkv, B, g->T, err)) ||
        (rc = mg_lm_rope(g->lm, g->st, 1, g->dqkv, g->cos_t, g->sin_t, B, g->T, err)) ||
        (rc = gemm(g, 0, 0, N, d, g->W3, g->dqkv, g->W3, WC(g, l->wq), d, 0.f, g->dn, d, 0, err)) ||
        (rc = gemm(g, 1, 0, g->W3, d, N, g->dqkv, g->W3, y->n1, d, beta, g->G + l->wq, d, 1, err)))
        return rc;
    return norm_bwd(g, acc, g->dn, g->X[i], l->ln1, y->r1, g->dx, g->dx, N, err);
}

int mg_gpu_run(mg_gpu_model *g, const int32_t *tokens, int B, const mg_cpu_ctx *c, int grad, int slot, mg_err *err)
{
    if (B < 1 || B > g->bmax) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_run: B = %d: must be in [1, %d]", B, g->bmax);
    if (slot < 0 || slot >= g->slots)
        return mg_err_set(err, MG_EINTERNAL, "mg_gpu_run: slot %d: must be in [0, %d)", slot, g->slots);
    const mg_cpu_model *h = g->h;
    int T = g->T, N = B * T, d = g->d, rc;
    double p = c->train ? g->spec.train.dropout : 0.0;
    long head = h->lm_head;
    g->slot_N[slot] = N;

    /* tokens → pinned staging (double-buffered) → ids / targets on the stream */
    int32_t *sg = g->stage[g->cur];
    MG_CUDA_TRY(cudaEventSynchronize(g->ev[g->cur]), err);
    for (long i = 0; i < (long)B * (T + 1); i++) {
        if (tokens[i] < 0 || tokens[i] >= g->V)
            return mg_err_set(err, MG_EUSER, "token %d at [%ld, %ld]: must be in [0, vocab = %d)", tokens[i],
                              i / (T + 1), i % (T + 1), g->V);
        sg[i] = tokens[i];
    }
    MG_CUDA_TRY(cudaMemcpy2DAsync(g->ids, (size_t)T * 4, sg, (size_t)(T + 1) * 4, (size_t)T * 4, (size_t)B,
                                  cudaMemcpyHostToDevice, g->st), err);
    MG_CUDA_TRY(cudaMemcpy2DAsync(g->tgt, (size_t)T * 4, sg + 1, (size_t)(T + 1) * 4, (size_t)T * 4, (size_t)B,
                                  cudaMemcpyHostToDevice, g->st), err);
    MG_CUDA_TRY(cudaEventRecord(g->ev[g->cur], g->st), err);
    g->cur ^= 1;

    /* forward */
    float *stat = g->dstat + (size_t)slot * g->sstride;
    MG_CUDA_TRY(cudaMemsetAsync(stat, 0, (size_t)g->sstride * 4, g->st), err);
    MG_CUDA_TRY(cudaMemsetAsync(g->dcnt + (size_t)slot * g->cstride, 0, (size_t)g->cstride * 4, g->st), err);
    size_t co_n = (size_t)g->n_moe * g->E * g->E;
    g->co_done[slot] = g->co_on && slot < g->co_slots && co_n;
    if (g->co_done[slot] & 1) MG_CUDA_TRY(cudaMemsetAsync(g->dco + slot * co_n, 0, co_n * 4, g->st), err);
    if ((rc = mg_lm_embed_fwd(g->lm, g->st, g->ids, WC(g, h->emb), g->X[0], N, err))) return rc;
    for (int i = 0; i < g->L; i++)
        if ((rc = layer_fwd(g, i, B, c, p, slot, err))) return rc;
    float gscale = grad ? (float)(c->scale / N) : 0.f;
    if ((rc = mg_lm_norm_fwd(g->lm, g->st, g->X[g->L], NULL, NULL, WC(g, h->lnf), g->nf, g->rf, N, err)) ||
        (rc = gemm(g, 0, 1, N, g->ldV, d, g->nf, d, g->Hc, d, 0.f, g->logits, g->ldV, 0, err)) ||
        (rc = mg_lm_xent(g->lm, g->st, g->logits, g->ldV, g->tgt, g->loss_row, stat, gscale, N, err)))
        return rc;
    if (!grad) return MG_OK;

    /* backward */
    int acc = slot > 0;
    if ((rc = gemm(g, 0, 0, N, d, g->ldV, g->logits, g->ldV, g->Hc, d, 0.f, g->dn, d, 0, err)) ||
        (rc = gemm(g, 1, 0, g->V, d, N, g->logits, g->ldV, g->nf, d, acc ? 1.f : 0.f, g->G + head, d, 1, err)) ||
        (rc = norm_bwd(g, acc, g->dn, g->X[g->L], h->lnf, g->rf, NULL, g->dx, N, err)) ||
        (rc = dp_stage_done(g, MG_DP_STAGE_HEAD(g->L), err)))
        return rc;
    for (int i = g->L - 1; i >= 0; i--)
        if ((rc = layer_bwd(g, i, B, c, p, acc, err)) || (rc = dp_stage_done(g, i, err))) return rc;
    if ((rc = mg_lm_embed_bwd(g->lm, g->st, g->ids, g->dx, g->sort_ws, g->G + h->emb, g->tied || acc, N, err)) ||
        (rc = dp_stage_done(g, MG_DP_STAGE_EMBED(g->L), err)))
        return rc;
    g->dp_armed = 0;
    return MG_OK;
}

int mg_gpu_read_stats(mg_gpu_model *g, int n, int count_loads, mg_cpu_out *outs, mg_err *err)
{
    if (n < 1 || n > g->slots) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_read_stats: n = %d", n);
    MG_CUDA_TRY(cudaMemcpyAsync(g->hstat, g->dstat, (size_t)n * g->sstride * 4, cudaMemcpyDeviceToHost, g->st), err);
    MG_CUDA_TRY(cudaMemcpyAsync(g->hcnt, g->dcnt, (size_t)n * g->cstride * 4, cudaMemcpyDeviceToHost, g->st), err);
    int nco = 0;   /* co-activation: up to the last slot that counted it (log steps only) */
    for (int s = 0; s < n && s < g->co_slots; s++)
        if (g->co_done[s] & 1) nco = s + 1;
    for (int s = 0; s < g->slots; s++)   /* bit 1: this read copied the slot's counts */
        g->co_done[s] = (unsigned char)((g->co_done[s] & 1) * (s < nco ? 3 : 1));
    if (nco)
        MG_CUDA_TRY(cudaMemcpyAsync(g->hco, g->dco, (size_t)nco * g->n_moe * g->E * g->E * 4, cudaMemcpyDeviceToHost,
                                    g->st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    for (int s = 0; s < n; s++) {
        mg_cpu_out *o = &outs[s];
        const float *st = g->hstat + (size_t)s * g->sstride;
        const int *cn = g->hcnt + (size_t)s * g->cstride;
        memset(o, 0, sizeof *o);
        o->n_tokens = g->slot_N[s];
        o->ce_sum = (double)st[0] * o->n_tokens;
        for (int i = 0; i < g->L; i++) {
            if (!g->h->layers[i].moe) continue;
            o->aux += st[1 + 2 * i];
            o->zloss += st[2 + 2 * i];
            o->dropped += cn[i * (g->E + 1) + g->E];
            if (count_loads)
                for (int e = 0; e < g->E; e++) g->h->layers[i].load[e] += cn[i * (g->E + 1) + e];
        }
    }
    return MG_OK;
}

void mg_gpu_layer_stats(const mg_gpu_model *g, int slot, int layer, const int **counts_all, double *aux, double *z,
                        long *dropped)
{
    const float *st = g->hstat + (size_t)slot * g->sstride;
    const int *cn = g->hcnt + (size_t)slot * g->cstride + layer * (g->E + 1);
    *counts_all = cn;
    *aux = st[1 + 2 * layer];
    *z = st[2 + 2 * layer];
    *dropped = cn[g->E];
}

const int *mg_gpu_layer_coact(const mg_gpu_model *g, int slot, int layer)
{
    if (slot < 0 || slot >= g->co_slots || !(g->co_done[slot] & 2) || g->moe_ord[layer] < 0) return NULL;
    return g->hco + ((size_t)slot * g->n_moe + g->moe_ord[layer]) * g->E * g->E;
}

void mg_gpu_count_coact(mg_gpu_model *g, int on) { g->co_on = on; }

void mg_gpu_layer_router_sums(const mg_gpu_model *g, int slot, int layer, double *entropy_sum, double *top1_sum)
{
    const float *st = g->hstat + (size_t)slot * g->sstride + 1 + 2 * g->L + 2 * layer;
    *entropy_sum = st[0];
    *top1_sum = st[1];
}

/* ------------------------------------------------------------------------------------ */
/* optimizer step                                                                        */

/* The step's end: waits for st (and for the collectives on it, through the communicators: a hung or
 * failed peer ends in the comm's timeout and abort, not a hang here); gnorm != NULL: read the norm
 * from the device. */
static int opt_step_end(mg_gpu_model *g, mg_adamw *o, double *gnorm, int pending, mg_err *err)
{
    float hn[2];
    int rc;
    if (gnorm) MG_CUDA_TRY(cudaMemcpyAsync(hn, g->dnorm, sizeof hn, cudaMemcpyDeviceToHost, g->st), err);
    if (pending) {
        if (g->dp->comm[MG_DP_GROUP_REPLICAS] != g->dp->comm[MG_DP_GROUP_ALL] &&
            (rc = mg_comm_wait(g->dp->comm[MG_DP_GROUP_REPLICAS], g->st, err)))
            return rc;
        if ((rc = mg_comm_wait(g->dp->comm[MG_DP_GROUP_ALL], g->st, err))) return rc;
    }
    MG_CUDA_TRY(cudaStreamSynchronize(g->st), err);
    if (gnorm) *gnorm = hn[0];
    o->step++;
    return MG_OK;
}

int mg_gpu_opt_step(mg_gpu_model *g, mg_adamw *o, double lr, double *gnorm, mg_err *err)
{
    const mg_cpu_model *h = g->h;
    const mg_spec *sp = &g->spec;
    int rc, pending = g->dp_pending;
    if (pending) {   /* every bucket reduced before the norm reads G */
        MG_CUDA_TRY(cudaEventRecord(g->cev, g->cs), err);
        MG_CUDA_TRY(cudaStreamWaitEvent(g->st, g->cev, 0), err);
        g->dp_pending = 0;
    }
    int t = (int)o->step + 1;
    mg_lm_adamw_hp hp = {(float)lr, (float)sp->train.beta1, (float)sp->train.beta2, 1e-8f, (float)sp->train.weight_decay};
    if (g->zero) {   /* the shard: norm, AdamW, the gather of the compute weights (mg_gpu_zero.h) */
        if (!pending) return mg_err_set(err, MG_EINTERNAL, "mg_gpu_opt_step: ZeRO-1 without the gradients' "
                                        "reduce-scatter (mg_gpu_dp_arm before the last micro-batch)");
        mg_gpu_zero_bufs zb = zero_bufs(g);
        if ((rc = mg_gpu_zero_step(g->zero, &zb, g->st, &hp, t, sp->train.grad_clip, gnorm, err))) return rc;
        return opt_step_end(g, o, NULL, pending, err);
    }
    for (int c = 0; c < g->n_chunks; c++) {
        long long off = (long long)c * GRAD_CHUNK, n = h->n_params - off < GRAD_CHUNK ? h->n_params - off : GRAD_CHUNK;
        if ((rc = mg_lm_sumsq(g->lm, g->st, g->G + off, n, g->part + (size_t)c * LM_SUMSQ_BLOCKS, err))) return rc;
    }
    if ((rc = mg_lm_gnorm(g->lm, g->st, g->part, g->n_chunks * LM_SUMSQ_BLOCKS, (float)sp->train.grad_clip, g->dnorm,
                          err)))
        return rc;
    if (g->ep && (rc = mg_gpu_ep_fix_norm(g->ep, g->lm, g->st, g->G, g->dnorm, sp->train.grad_clip, err))) return rc;
    /* one launch per run of adjacent tensors with the same decay flag; the LM head is a run of
     * its own, its compute copy being Hc (head_c) */
    for (int j = 0; j < h->n_tensors;) {
        int k = j;
        while (k + 1 < h->n_tensors && h->tensors[k + 1].decay == h->tensors[j].decay &&
               h->tensors[k + 1].off == h->tensors[k].off + h->tensors[k].n && h->tensors[k].off != h->lm_head &&
               h->tensors[k + 1].off != h->lm_head)
            k++;
        long off = h->tensors[j].off, n = h->tensors[k].off + h->tensors[k].n - off;
        void *wc = off == h->lm_head ? g->Hc : g->Wc == g->P ? NULL : WC(g, off);
        if ((rc = mg_lm_adamw(g->lm, g->st, g->P + off, g->G + off, g->M + off, g->Vm + off, wc, g->dnorm + 1, n,
                              &hp, t, h->tensors[j].decay, err)))
            return rc;
        j = k + 1;
    }
    return opt_step_end(g, o, gnorm, pending, err);
}

double mg_gpu_mem_used(void)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) return 0;
    return (double)(tot - fr);
}

void mg_gpu_name(char *buf, size_t n)
{
    struct cudaDeviceProp pr;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&pr, dev) != cudaSuccess) snprintf(buf, n, "?");
    else snprintf(buf, n, "%s", pr.name);
}
