/* moe_router: routing and its losses and gradients.
 *   fwd:    logits = x·wgᵀ (fp32; a block's [MG_RF_TOKENS x E] tile by a tiled GEMM, tensor
 *           cores for 16-bit dtypes), then per token (one warp): softmax or sigmoid, top-k by
 *           score + selection bias (ties: lower expert id), weights from the un-biased scores
 *           (+ renormalization); writes logits, the aux-loss probs, lse, and per token the
 *           entropy −Σ p ln p and max p of the aux-loss probs (monitoring)
 *   stats:  psum[e] = Σ_t p[t,e], lse2 = Σ_t lse[t]², loss[2] = Σ_t entropy, loss[3] = Σ_t
 *           max p (fixed-order block reductions)
 *   loss:   aux = aux_coef·E·Σ_e f_e·P_e (f = counts_all/(T·k), P = psum/T),
 *           zloss = z_coef·lse2/T
 *   bwd:    dlogits from dL/dw (routing weights), the aux and the z terms
 *   dwg:    dwg = dlogitsᵀ·x as per-split partials (splits of MG_DWG_SPLIT tokens)
 *   dwgsum: dwg = Σ partials in split order (skipped when there is a single split)
 *   dx:     dxr = dlogits·wg (the router's share of dx, summed by combine/dx)
 * dwg and dx multiply the fp32 dlogits by a dtype operand. bf16: on tensor cores, dlogits
 * split into bf16 hi + lo (hi + lo = dlogits to 2^-16 relative, with fp32's range); fp16 and
 * fp32: fp32 FFMA (fp16's range would flush small dlogits to zero).
 * No float atomics anywhere: every float sum has a fixed order. */
// moegen:entries fwd stats loss bwd dwg dwgsum dx
// moegen:parts mg_vec
// moegen:grid fwd: ceil(T/MG_RF_TOKENS) x 32*MG_RF_WARPS, dynamic smem MG_RF_SMEM_BYTES(E,esz)
// moegen:grid stats: E+3 x 256
// moegen:grid loss: 1 x 256
// moegen:grid bwd: ceil(T/MG_ROUTER_WARPS) x 32*MG_ROUTER_WARPS
// moegen:grid dwg: (ceil(E/MG_RDWG_EXPERTS), ceil(d/MG_RDWG_COLS), ceil(T/MG_DWG_SPLIT)) x 32*MG_RDL_WARPS
// moegen:grid dwgsum: ceil(E*d/(256*MG_DWGSUM_VEC)) x 256, only when ceil(T/MG_DWG_SPLIT) > 1
// moegen:grid dx: (ceil(T/MG_RDX_TOKENS), ceil(d/MG_RDX_COLS)) x 32*MG_RDL_WARPS
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "mg_vec.cuh"
#endif

#define MG_R_NPL ((MG_E + 31) / 32)   /* experts per lane: e = lane + 32*i */

/* ------------------------------------------------------------------ fwd */
static constexpr int MG_RF_ESZ = (int)sizeof(mg_t);
typedef mg_gemm<mg_t, MG_RF_TOKENS, MG_RF_BN(MG_E), MG_RF_BK(MG_E, MG_RF_ESZ), MG_RF_STAGES(MG_E, MG_RF_ESZ),
               MG_RF_WARPS, true, true>
    moe_router_fwd_gemm;
static_assert(moe_router_fwd_gemm::SMEM_BYTES == MG_RF_PIPE_BYTES(MG_E, MG_RF_ESZ), "host and device smem disagree");

/* Routes token t from its fp32 logits row (shared memory, E floats; the row is reused for
 * the raw top-k weights). One warp; lane the caller's lane. */
MG_DEV void moe_router_token(const moe_router_fwd_params &p, int t, float *row, int lane)
{
    float l[MG_R_NPL];
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) {
        int e = lane + 32 * i;
        l[i] = e < MG_E ? row[e] : -mg_inf();
    }
    __syncwarp();   /* the row is reused for the raw top-k weights below */

    float mx = -mg_inf();
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) mx = fmaxf(mx, l[i]);
    mx = mg_warp_max(mx);
    float se = 0.0f;
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) if (lane + 32 * i < MG_E) se += expf(l[i] - mx);
    se = mg_warp_sum(se);
    const float lse = mx + logf(se);

    float pr[MG_R_NPL], sc[MG_R_NPL], wv[MG_R_NPL];
    if constexpr (MG_ROUTER == 1) {
        float q = 0.0f;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            int e = lane + 32 * i;
            wv[i] = e < MG_E ? mg_sigmoid(l[i]) : 0.0f;
            q += wv[i];
        }
        q = mg_warp_sum(q);
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            int e = lane + 32 * i;
            pr[i] = wv[i] / q;
            sc[i] = wv[i] + ((p.bias && e < MG_E) ? p.bias[e] : 0.0f);
        }
    } else {
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            int e = lane + 32 * i;
            pr[i] = e < MG_E ? expf(l[i] - mx) / se : 0.0f;
            /* switch ignores the bias (mg_ref.h); softmax_topk selects by p + bias */
            sc[i] = pr[i] + ((MG_ROUTER == 0 && p.bias && e < MG_E) ? p.bias[e] : 0.0f);
            wv[i] = pr[i];
        }
    }
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) {
        int e = lane + 32 * i;
        if (e < MG_E) {
            p.logits[(long long)t * MG_E + e] = l[i];
            p.probs[(long long)t * MG_E + e] = pr[i];
        }
    }
    if (lane == 0) p.lse[t] = lse;
    {   /* router statistics of this token (stats sums them): entropy and top-1 of p */
        float h = 0.0f, top = 0.0f;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            if (pr[i] > 0.0f) h -= pr[i] * logf(pr[i]);
            top = fmaxf(top, pr[i]);
        }
        h = mg_warp_sum(h);
        top = mg_warp_max(top);
        if (lane == 0) {
            p.tstat[2LL * t] = h;
            p.tstat[2LL * t + 1] = top;
        }
    }

    /* Top-k by repeated warp argmax; the winner's weight travels with it through the
     * butterfly (no dynamically indexed register arrays, so no local memory). */
    unsigned taken = 0;
    float wsum = 0.0f;
    for (int j = 0; j < MG_TOPK; j++) {
        float best = -mg_inf(), bw = 0.0f;
        int bi = MG_INT_MAX;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            int e = lane + 32 * i;
            if (e < MG_E && !(taken >> i & 1u) && (sc[i] > best || (sc[i] == best && e < bi))) {
                best = sc[i];
                bi = e;
                bw = wv[i];
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(MG_FULL_MASK, best, o);
            float ow = __shfl_xor_sync(MG_FULL_MASK, bw, o);
            int oi = __shfl_xor_sync(MG_FULL_MASK, bi, o);
            if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; bw = ow; }
        }
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++)
            if (lane + 32 * i == bi) taken |= 1u << i;
        wsum += bw;
        if (lane == 0) {
            p.topk_idx[(long long)t * MG_TOPK + j] = bi;
            row[j] = bw;
        }
    }
    __syncwarp();
    for (int j = lane; j < MG_TOPK; j += 32) {
        float v = row[j];
        if (MG_RENORM && MG_ROUTER != 2) v = v / wsum;
        p.topk_w[(long long)t * MG_TOPK + j] = v;
    }
}

/* fwd. grid: ceil(T / MG_RF_TOKENS); block: 32*MG_RF_WARPS; dynamic smem
 * MG_RF_SMEM_BYTES(E, esz). The block's logits [MG_RF_TOKENS x E] come from the GEMM core
 * (mg_gemm: A = its x rows, B = wg rows, K = d; one pass per MG_RF_BN experts) into shared
 * memory; then each warp routes tokens w, w + WARPS, ... of the tile from there. x is read
 * once (16-byte cp.async), wg once per block (from L2). */
extern "C" __global__ void __launch_bounds__(32 * MG_RF_WARPS)
/*$fwd*/moe_router_fwd(const moe_router_fwd_params p)
{
    typedef moe_router_fwd_gemm G;
    constexpr int BN = MG_RF_BN(MG_E), LD = MG_RF_LD(MG_E);
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
    __shared__ long long rowA[MG_RF_TOKENS], rowB[BN];
    float *s_l = (float *)(mg_smem + MG_RF_LOGITS_OFF(MG_E, MG_RF_ESZ));
    const int t0 = blockIdx.x * MG_RF_TOKENS;
    for (int r = threadIdx.x; r < MG_RF_TOKENS; r += G::NT)
        rowA[r] = t0 + r < p.T ? (long long)(t0 + r) * MG_D : -1;
    const mg_opnd<mg_t> A = {(const mg_t *)p.x, rowA, 0, 0, 1, 0, 0};
    const mg_opnd<mg_t> B = {(const mg_t *)p.wg, rowB, 0, 0, 1, 0, 0};
    for (int n0 = 0; n0 < MG_E; n0 += BN) {
        /* rowB is free: the previous pass's mainloop ended with its copies drained and a barrier */
        for (int n = threadIdx.x; n < BN; n += G::NT) rowB[n] = n0 + n < MG_E ? (long long)(n0 + n) * MG_D : -1;
        __syncthreads();
        float acc[G::NACC];
        G::mainloop((mg_t *)mg_smem, A, B, 0, MG_D, acc);
        /* a single pass: s_l overlays the pipeline, free after mainloop's closing barrier */
        G::foreach(acc, [&](int m, int n, float v) {
            if (n0 + n < MG_E) s_l[m * LD + n0 + n] = v;
        });
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int r = w; r < MG_RF_TOKENS && t0 + r < p.T; r += MG_RF_WARPS)   /* warp-uniform */
        moe_router_token(p, t0 + r, s_l + r * LD, lane);
}

/* stats. grid: E + 3 (block e < E: psum[e]; block E: lse2; E+1: Σ entropy; E+2: Σ top-1);
 * block: 256. */
extern "C" __global__ void __launch_bounds__(256)
/*$stats*/moe_router_stats(const moe_router_stats_params p)
{
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    float acc = 0.0f;
    if (b < MG_E) {
        for (int t = threadIdx.x; t < p.T; t += blockDim.x) acc += p.probs[(long long)t * MG_E + b];
    } else if (b == MG_E) {
        for (int t = threadIdx.x; t < p.T; t += blockDim.x) acc += p.lse[t] * p.lse[t];
    } else {
        const int c = b - MG_E - 1;   /* 0: entropy, 1: top-1 */
        for (int t = threadIdx.x; t < p.T; t += blockDim.x) acc += p.tstat[2LL * t + c];
    }
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        if (b < MG_E) p.psum[b] = acc;
        else if (b == MG_E) p.lse2[0] = acc;
        else p.loss[2 + b - MG_E - 1] = acc;
    }
}

/* loss. grid: 1; block: 256. */
extern "C" __global__ void __launch_bounds__(256)
/*$loss*/moe_router_loss(const moe_router_loss_params p)
{
    __shared__ float scratch[32];
    const float T = (float)p.T;
    float v = 0.0f;
    for (int e = threadIdx.x; e < MG_E; e += blockDim.x)
        v += ((float)p.counts_all[e] / (T * MG_TOPK)) * (p.psum[e] / T);
    v = mg_block_sum(v, scratch);
    if (threadIdx.x == 0) {
        p.loss[0] = MG_AUX_COEF * (float)MG_E * v;
        p.loss[1] = MG_Z_COEF * p.lse2[0] / T;
    }
}

/* bwd. grid: ceil(T / MG_ROUTER_WARPS); block: 32*MG_ROUTER_WARPS (one warp per token).
 * With g = dL/d(routing probabilities) (softmax p, or sigmoid s):
 *   selection: renormalized w_j = r_j/S (r = p or s, S = Σ_sel r): g[sel_j] += (dw_j − Σ_i dw_i w_i)/S,
 *              otherwise g[sel_j] += dw_j;
 *   aux:       c_e = aux_coef·E·f_e/T; softmax: g_e += c_e; sigmoid (p = s/Q):
 *              g_e += (c_e − Σ_i c_i p_i)/Q;
 *   to logits: softmax dl = p·(g − Σ g·p); sigmoid dl = g·s·(1 − s);
 *   z-loss:    dl += z_coef·(2/T)·lse·softmax(l). */
extern "C" __global__ void __launch_bounds__(32 * MG_ROUTER_WARPS)
/*$bwd*/moe_router_bwd(const moe_router_bwd_params p)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int t = blockIdx.x * MG_ROUTER_WARPS + w;
    if (t >= p.T) return;
    const float T = (float)p.T;
    float l[MG_R_NPL];
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) {
        int e = lane + 32 * i;
        l[i] = e < MG_E ? p.logits[(long long)t * MG_E + e] : -mg_inf();
    }
    float mx = -mg_inf();
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) mx = fmaxf(mx, l[i]);
    mx = mg_warp_max(mx);
    float se = 0.0f;
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) if (lane + 32 * i < MG_E) se += expf(l[i] - mx);
    se = mg_warp_sum(se);
    const float lse = mx + logf(se);

    float sm[MG_R_NPL], r[MG_R_NPL], g[MG_R_NPL], c[MG_R_NPL];
    const float cnorm = MG_AUX_COEF * (float)MG_E / (T * MG_TOPK * T);
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) {
        int e = lane + 32 * i;
        bool ok = e < MG_E;
        sm[i] = ok ? expf(l[i] - mx) / se : 0.0f;
        r[i] = ok ? (MG_ROUTER == 1 ? mg_sigmoid(l[i]) : sm[i]) : 0.0f;
        c[i] = ok ? cnorm * (float)p.counts_all[e] : 0.0f;
        g[i] = 0.0f;
    }

    /* selection term: dwv[i] = dL/dw of expert lane+32i when selected (else 0) */
    const long long tk = (long long)t * MG_TOPK;
    const bool renorm = MG_RENORM && MG_ROUTER != 2;
    float dwv[MG_R_NPL];
    unsigned sel = 0;
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) dwv[i] = 0.0f;
    float wd = 0.0f;
    for (int j = 0; j < MG_TOPK; j++) {
        const int e = p.topk_idx[tk + j];
        const float dwj = p.dw[tk + j];
        wd += dwj * p.topk_w[tk + j];
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            const bool hit = e == lane + 32 * i;
            dwv[i] = hit ? dwj : dwv[i];
            sel |= hit ? 1u << i : 0u;
        }
    }
    float S = 0.0f;
    if (renorm) {
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) S += (sel >> i & 1u) ? r[i] : 0.0f;
        S = mg_warp_sum(S);
    }
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++)
        if (sel >> i & 1u) g[i] = renorm ? (dwv[i] - wd) / S : dwv[i];

    float dl[MG_R_NPL];
    if constexpr (MG_ROUTER == 1) {
        float q = 0.0f;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) q += r[i];
        q = mg_warp_sum(q);
        float cp = 0.0f;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) cp += c[i] * (r[i] / q);
        cp = mg_warp_sum(cp);
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) {
            float gs = g[i] + (c[i] - cp) / q;
            dl[i] = gs * r[i] * (1.0f - r[i]);
        }
    } else {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) { g[i] += c[i]; dot += g[i] * r[i]; }
        dot = mg_warp_sum(dot);
#pragma unroll
        for (int i = 0; i < MG_R_NPL; i++) dl[i] = r[i] * (g[i] - dot);
    }
    const float zs = MG_Z_COEF * 2.0f / T * lse;
#pragma unroll
    for (int i = 0; i < MG_R_NPL; i++) {
        int e = lane + 32 * i;
        if (e < MG_E) p.dlogits[(long long)t * MG_E + e] = dl[i] + zs * sm[i];
    }
}

/* ------------------------------------------------------------------ dwg and dx */
/* The compute type of the dlogits GEMMs: bf16 (hi + lo split) for bf16, else fp32 FFMA. */
static constexpr bool MG_RDL_SPLIT = MG_DTYPE == 0;
typedef mg_dtype_of<MG_RDL_SPLIT ? 0 : 2>::type mg_rc;
/* k step: dwg's k runs over tokens, dx's over experts (16 when E <= 16: less zero padding).
 * fp32 takes 16 so that the static shared memory stays under 48 KB. */
static constexpr int MG_RDWG_BK = MG_RDL_SPLIT ? 32 : 16;
static constexpr int MG_RDX_BK = MG_RDL_SPLIT && MG_E > 16 ? 32 : 16;
static constexpr int MG_RDL_STAGES = 3;

/* acc = Σ_k A[m,k]·B[n,k] over k in [kb, ke), A from the fp32 dlogits [T,E], B the
 * MN-contiguous dtype matrix b [K][d] (columns c0 .. c0+BN). A_KC (dx): A = dlogits rows
 * m0.. (tokens) by k (experts); else (dwg): A = dlogitsᵀ, rows m0.. (experts) by k (tokens).
 * Tokens from tok_end on and experts from E on read as zeros. B runs through a STAGES-deep
 * cp.async pipeline (fp16: converted to fp32 through registers); A is loaded one k step
 * ahead into registers and stored (split or not) into one buffer. Fixed summation order. */
template <int BM, int BN, int BK, bool A_KC> struct moe_router_dl_gemm {
    typedef mg_gemm<mg_rc, BM, BN, BK, MG_RDL_STAGES, MG_RDL_WARPS, A_KC, false> G;
    static constexpr int NT = G::NT;
    /* A tile: tokens x experts, NR x NC, element (r, c) at r*A_LD + c in both layouts
     * (A_KC: [m][k] = [token][expert]; else [k][m] = [token][expert]). */
    static constexpr int NR = A_KC ? BM : BK, NC = A_KC ? BK : BM, NA = NR * NC / NT;
    static constexpr int A_BUFS = MG_RDL_SPLIT ? 2 : 1;
    static constexpr int ELEMS = A_BUFS * G::A_ELEMS + MG_RDL_STAGES * G::B_ELEMS;
    static_assert(NR * NC % NT == 0, "A tile must split evenly over the threads");

    MG_DEV static void load_a(float (&v)[NA], const float *dl, int tok0, int tok_end, int e0)
    {
#pragma unroll
        for (int j = 0; j < NA; j++) {
            const int i = threadIdx.x + NT * j, r = i / NC, c = i % NC;
            const int t = tok0 + r, e = e0 + c;
            v[j] = t < tok_end && e < MG_E ? dl[(long long)t * MG_E + e] : 0.0f;
        }
    }
    /* hi = bf16(v), lo = bf16(v − hi) (v − hi is exact); an infinite or NaN hi keeps lo 0 */
    MG_DEV static void store_a(const float (&v)[NA], mg_rc *s)
    {
#pragma unroll
        for (int j = 0; j < NA; j++) {
            const int i = threadIdx.x + NT * j, o = (i / NC) * G::A_LD + i % NC;
            const mg_rc h = mg_from_f32<mg_rc>(v[j]);
            s[o] = h;
            if constexpr (MG_RDL_SPLIT) {
                const float r = v[j] - mg_to_f32(h);
                s[G::A_ELEMS + o] = mg_from_f32<mg_rc>(r == r ? r : 0.0f);
            }
        }
    }
    MG_DEV static void load_b(mg_rc *s, const mg_t *b, int c0, int k0, int ke)
    {
        if constexpr (sizeof(mg_rc) == sizeof(mg_t)) {   /* bf16 or fp32: 16-byte cp.async */
            const mg_opnd<mg_rc> o = {(const mg_rc *)b, 0, MG_D, 0, 1, c0, MG_D};
            G::load_mn(s, G::B_LD, BN, o, k0, ke);
        } else {   /* fp16 -> fp32: one 16-byte load of MG_VEC elements, two 16-byte stores */
            constexpr int CPR = BN / MG_VEC;
            for (int i = threadIdx.x; i < BK * CPR; i += NT) {
                const int kr = i / CPR, mc = (i % CPR) * MG_VEC, k = k0 + kr, c = c0 + mc;
                float f[MG_VEC];
                if (k < ke && c < MG_D) mg_v16_unpack(mg_v16_ld(b + (long long)k * MG_D + c), f);
                else
#pragma unroll
                    for (int e = 0; e < MG_VEC; e++) f[e] = 0.0f;
#pragma unroll
                for (int h = 0; h < MG_VEC; h += 4) {
                    mg_v16 q = {{__float_as_uint(f[h]), __float_as_uint(f[h + 1]), __float_as_uint(f[h + 2]),
                                 __float_as_uint(f[h + 3])}};
                    mg_v16_st((float *)s + kr * G::B_LD + mc + h, q);
                }
            }
        }
    }

    MG_DEV static void run(mg_rc *smem, const float *dl, const mg_t *b, int m0, int c0, int kb, int ke,
                           int tok_end, float (&acc)[G::NACC])
    {
        mg_rc *sA = smem, *sB = smem + A_BUFS * G::A_ELEMS;
#pragma unroll
        for (int i = 0; i < G::NACC; i++) acc[i] = 0.0f;
        const int nk = ke > kb ? (ke - kb + BK - 1) / BK : 0;
#pragma unroll
        for (int s = 0; s < MG_RDL_STAGES - 1; s++) {
            if (s < nk) load_b(sB + s * G::B_ELEMS, b, c0, kb + s * BK, ke);
            mg_cp_async_commit();
        }
        float av[NA];
        if (nk > 0) load_a(av, dl, A_KC ? m0 : kb, tok_end, A_KC ? kb : m0);
        for (int kt = 0; kt < nk; kt++) {
            mg_cp_async_wait<MG_RDL_STAGES - 2>();
            __syncthreads();   /* B stage kt landed; every warp is done with step kt-1 */
            store_a(av, sA);
            const int k1 = kb + (kt + 1) * BK;
            if (kt + 1 < nk) load_a(av, dl, A_KC ? m0 : k1, tok_end, A_KC ? k1 : m0);
            const int nx = kt + MG_RDL_STAGES - 1;
            if (nx < nk) load_b(sB + (nx % MG_RDL_STAGES) * G::B_ELEMS, b, c0, kb + nx * BK, ke);
            mg_cp_async_commit();
            __syncthreads();   /* A of step kt visible */
            const mg_rc *st = sB + (kt % MG_RDL_STAGES) * G::B_ELEMS;
            G::compute_ab(sA, st, acc);
            if constexpr (MG_RDL_SPLIT) G::compute_ab(sA + G::A_ELEMS, st, acc);
        }
        mg_cp_async_wait<0>();
    }

    /* out[(m0 + m)*MG_D + c0 + n] = acc for m0 + m < m_end (columns: d is a multiple of 16,
     * so a column pair is inside or outside together); 8-byte stores where out allows. */
    MG_DEV static void store(const float (&acc)[G::NACC], float *out, int m0, int m_end, int c0)
    {
        if constexpr (G::F32) {
            G::foreach(acc, [&](int m, int n, float v) {
                if (m0 + m < m_end && c0 + n < MG_D) out[(long long)(m0 + m) * MG_D + c0 + n] = v;
            });
        } else {
            const bool v2 = ((unsigned long long)out & 7ull) == 0;
            G::foreach_pair(acc, [&](int m, int n, float a, float b) {
                const long long i = (long long)(m0 + m) * MG_D + c0 + n;
                if (m0 + m < m_end && c0 + n < MG_D) {
                    if (v2) mg_st2f(out, i, a, b);
                    else { out[i] = a; out[i + 1] = b; }
                }
            });
        }
    }
};
typedef moe_router_dl_gemm<MG_RDWG_EXPERTS, MG_RDWG_COLS, MG_RDWG_BK, false> moe_router_dwg_gemm;
typedef moe_router_dl_gemm<MG_RDX_TOKENS, MG_RDX_COLS, MG_RDX_BK, true> moe_router_dx_gemm;

/* dwg. grid: (ceil(E/MG_RDWG_EXPERTS), ceil(d/MG_RDWG_COLS), n_split = ceil(T/MG_DWG_SPLIT));
 * block: 32*MG_RDL_WARPS. Block (ex, cy, s) sums tokens [s*SPLIT, (s+1)*SPLIT) in order
 * into its [experts x columns] tile of dwg (one split) or part[s] (several). The expert
 * tiles of one x tile are neighbours in x, so x is read from HBM once. */
extern "C" __global__ void __launch_bounds__(32 * MG_RDL_WARPS)
/*$dwg*/moe_router_dwg(const moe_router_dwg_params p)
{
    typedef moe_router_dwg_gemm R;
    __shared__ __attribute__((aligned(16))) mg_rc smem[R::ELEMS];
    const int e0 = blockIdx.x * MG_RDWG_EXPERTS, c0 = blockIdx.y * MG_RDWG_COLS;
    const int tb = blockIdx.z * MG_DWG_SPLIT, te = min(p.T, tb + MG_DWG_SPLIT);
    float acc[R::G::NACC];
    R::run(smem, p.dlogits, (const mg_t *)p.x, e0, c0, tb, te, te, acc);
    float *out = gridDim.z == 1 ? p.dwg : p.part + (long long)blockIdx.z * MG_E * MG_D;
    R::store(acc, out, e0, MG_E, c0);
}

/* dwgsum. grid: ceil(E*d / (256*MG_DWGSUM_VEC)); block: 256. Only when ceil(T/MG_DWG_SPLIT) > 1.
 * Each thread sums MG_DWGSUM_VEC consecutive elements (E*d is a multiple of 16) over the
 * splits in order. */
extern "C" __global__ void __launch_bounds__(256)
/*$dwgsum*/moe_router_dwgsum(const moe_router_dwg_params p)
{
    const long long i = ((long long)blockIdx.x * 256 + threadIdx.x) * MG_DWGSUM_VEC;
    if (i >= (long long)MG_E * MG_D) return;
    static_assert(MG_DWGSUM_VEC == 4, "one 16-byte vector of fp32 per thread");
    const int n_split = (p.T + MG_DWG_SPLIT - 1) / MG_DWG_SPLIT;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = 0; s < n_split; s++) {   /* part is workspace: 16-byte aligned */
        float v[4];
        mg_v16_f32(mg_v16_ld(p.part + (long long)s * MG_E * MG_D + i), v);
#pragma unroll
        for (int e = 0; e < 4; e++) acc[e] += v[e];
    }
    if (mg_aligned16(p.dwg + i)) {
        mg_v16 q = {{__float_as_uint(acc[0]), __float_as_uint(acc[1]), __float_as_uint(acc[2]), __float_as_uint(acc[3])}};
        mg_v16_st(p.dwg + i, q);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++) p.dwg[i + e] = acc[e];
    }
}

/* dx. grid: (ceil(T/MG_RDX_TOKENS), ceil(d/MG_RDX_COLS)); block: 32*MG_RDL_WARPS.
 * dxr[t, c] = Σ_e dlogits[t,e]·wg[e,c] for the block's [tokens x columns] tile (K = E). */
extern "C" __global__ void __launch_bounds__(32 * MG_RDL_WARPS)
/*$dx*/moe_router_dx(const moe_router_dx_params p)
{
    typedef moe_router_dx_gemm R;
    __shared__ __attribute__((aligned(16))) mg_rc smem[R::ELEMS];
    const int t0 = blockIdx.x * MG_RDX_TOKENS, c0 = blockIdx.y * MG_RDX_COLS;
    float acc[R::G::NACC];
    R::run(smem, p.dlogits, (const mg_t *)p.wg, t0, c0, 0, MG_E, p.T, acc);
    R::store(acc, p.dxr, t0, p.T, c0);
}
