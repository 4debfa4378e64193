/* lm_attn: causal self-attention with GQA, flash style (online softmax, tiles in shared
 * memory, no S×S matrix in global memory), forward and FlashAttention-2 backward.
 *   fwd:      o = softmax(scale·q·kᵀ + causal mask)·v,  lse = log Σ exp(scale·q·kᵀ)  (per row)
 *   bwd_pre:  D = rowsum(dO∘O)
 *   bwd_dkdv: dv_j = Σ_h Σ_i P_ij·dO_i,  dk_j = scale·Σ_h Σ_i dS_ij·q_i   (i >= j; h over the
 *             query heads of the kv head), dS = P∘(dP − D), dP = dO·vᵀ
 *   bwd_dq:   dq_i = scale·Σ_j dS_ij·k_j
 * Every sum runs in a fixed order inside one block: bitwise deterministic, no atomics.
 * Layouts and grids: templates/lm_params.h. 16-bit storage: mma.sync m16n8k16 with fp32
 * accumulators, softmax in fp32 (log2 domain), P and dS rounded to the storage type for the
 * second GEMM of each pair (as FlashAttention does). fp32 storage: an FFMA path, one warp
 * per row, on the same grid. */
// moegen:entries fwd bwd_pre bwd_dkdv bwd_dq
// moegen:grid fwd: (ceil(S/64), H, B) x 128, smem LM_ATTN_FWD_SMEM
// moegen:grid bwd_pre: ceil(B*S*H/4) x 128
// moegen:grid bwd_dkdv: (ceil(S/64), KV*LM_ATTN_NCH(hd), B) x 128, smem LM_ATTN_DKDV_SMEM
// moegen:grid bwd_dq: (ceil(S/64), H, B) x 128, smem LM_ATTN_DQ_SMEM
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

#define LM_LOG2E 1.4426950408889634f
#define LM_LN2 0.69314718055994531f

static_assert(MG_HEAD_DIM % 8 == 0 && MG_HEAD_DIM >= 8 && MG_HEAD_DIM <= 256, "head_dim: multiple of 8 in [8, 256]");
static_assert(MG_N_HEAD % MG_N_KV_HEAD == 0, "n_kv_head must divide n_head");

struct lm_attn_dims {
    static constexpr int HD = MG_HEAD_DIM, H = MG_N_HEAD, KV = MG_N_KV_HEAD, G = H / KV;
    static constexpr int W = (H + 2 * KV) * HD;     /* qkv row width */
    static constexpr int WO = H * HD;               /* o row width */
    static constexpr int NT = LM_ATTN_WARPS * 32;
};

MG_DEV float lm_attn_scale() { return 1.0f / sqrtf((float)MG_HEAD_DIM); }

/* ldmatrix .x2 .trans: the B fragment of one n8 tile from a [k][n] (n-contiguous) tile. */
MG_DEV void lm_ldsm_x2_t(unsigned (&r)[2], const void *smem)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(mg_smem_u32(smem)));
}

/* Two floats -> one register of two 16-bit values (lo in the low half). */
template <class T> MG_DEV unsigned lm_pack2(float lo, float hi)
{
    T a = mg_from_f32<T>(lo), b = mg_from_f32<T>(hi);
    return (unsigned)a.u | ((unsigned)b.u << 16);
}

/* ======================================================================== tensor cores */
template <class T> struct lm_attn_tc : lm_attn_dims {
    static constexpr int HDP = LM_ATTN_HDP(HD), LD = LM_ATTN_LD(HD);
    static constexpr int BQ = LM_ATTN_BQ, BKV = LM_ATTN_BKV(HD);
    static constexpr int KS = HDP / 16;     /* k steps over the head dim */
    static constexpr int NO = HD / 8;       /* n8 tiles over the head dim */
    static constexpr int CPR = HD / 8;      /* 16-byte chunks per row */

    /* Rows [row0, row0+rows) of a head slice (column col0 of a row-major [B·S, ld] tensor)
     * into smem (row stride LD); rows >= S are zero-filled. */
    MG_DEV static void load_rows(T *s, const T *g, int ld, int col0, int b, int S, int row0, int rows)
    {
        for (int c = threadIdx.x; c < rows * CPR; c += NT) {
            int r = c / CPR, k = (c % CPR) * 8;
            bool ok = row0 + r < S;
            const T *src = ok ? g + ((long long)b * S + row0 + r) * ld + col0 + k : g;
            mg_cp_async16(s + r * LD + k, src, ok);
        }
    }
    /* Zero the k padding columns [HD, HDP) of rows tiles (they enter q·kᵀ). */
    MG_DEV static void zero_pad(T *s, int rows)
    {
        constexpr int PW = HDP > HD ? HDP - HD : 1;
        if constexpr (HDP > HD) {
            for (int c = threadIdx.x; c < rows * PW; c += NT) {
                int r = c / PW, k = HD + c % PW;
                s[r * LD + k] = mg_from_f32<T>(0.0f);
            }
        }
    }

    /* acc[16 x 8·NN] += A[16 rows of sA, KS k steps] · B[8·NN rows of sB]ᵀ (both k-contiguous). */
    template <int NN> MG_DEV static void mma_abt(float (&acc)[NN][4], const T *sA, const T *sB)
    {
        const int lane = threadIdx.x & 31, j8 = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            unsigned a[4];
            mg_ldsm_x4(a, sA + (lane & 15) * LD + ks * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int ni = 0; ni < NN; ni += 2) {
                unsigned r4[4];
                mg_ldsm_x4(r4, sB + (ni * 8 + r8 + (j8 >> 1) * 8) * LD + ks * 16 + (j8 & 1) * 8);
                mg_mma16816<T>(acc[ni], a, r4);
                mg_mma16816<T>(acc[ni + 1], a, r4 + 2);
            }
        }
    }
    /* Same with the A fragments already in registers. */
    template <int NN> MG_DEV static void mma_abt_reg(float (&acc)[NN][4], const unsigned (&af)[KS][4], const T *sB)
    {
        const int lane = threadIdx.x & 31, j8 = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int ni = 0; ni < NN; ni += 2) {
                unsigned r4[4];
                mg_ldsm_x4(r4, sB + (ni * 8 + r8 + (j8 >> 1) * 8) * LD + ks * 16 + (j8 & 1) * 8);
                mg_mma16816<T>(acc[ni], af[ks], r4);
                mg_mma16816<T>(acc[ni + 1], af[ks], r4 + 2);
            }
    }
    /* acc[16 x 8·NC] += P[16 x 16·KP] · B[16·KP rows of sB, columns col0 + 8·nt] where P is
     * given as fp32 C fragments p[2·KP][4] (the m16n8 layout of two n8 tiles is the A layout
     * of one k16 step). B is n-contiguous ([k][n] in smem): ldmatrix .trans. Tiles whose
     * columns reach ncols are skipped (only used for the dkdv column chunks). */
    template <int KP, int NC> MG_DEV static void mma_pb(float (&acc)[NC][4], const float (&p)[2 * KP][4], const T *sB,
                                                       int col0, int ncols)
    {
        const int lane = threadIdx.x & 31, j8 = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int kt = 0; kt < KP; kt++) {
            unsigned a[4] = {lm_pack2<T>(p[2 * kt][0], p[2 * kt][1]), lm_pack2<T>(p[2 * kt][2], p[2 * kt][3]),
                             lm_pack2<T>(p[2 * kt + 1][0], p[2 * kt + 1][1]),
                             lm_pack2<T>(p[2 * kt + 1][2], p[2 * kt + 1][3])};
#pragma unroll
            for (int nt = 0; nt < NC; nt += 2) {
                if (col0 + nt * 8 >= ncols) continue;
                if (nt + 1 < NC) {
                    unsigned r4[4];
                    mg_ldsm_x4_t(r4, sB + (kt * 16 + r8 + (j8 & 1) * 8) * LD + col0 + nt * 8 + (j8 >> 1) * 8);
                    mg_mma16816<T>(acc[nt], a, r4);
                    if (col0 + nt * 8 + 8 < ncols) mg_mma16816<T>(acc[nt + 1], a, r4 + 2);
                } else {
                    unsigned r2[2];
                    lm_ldsm_x2_t(r2, sB + (kt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + col0 + nt * 8);
                    mg_mma16816<T>(acc[nt], a, r2);
                }
            }
        }
    }

    /* ---------------------------------------------------------------- forward */
    MG_DEV static void fwd(const lm_attn_fwd_params &p, unsigned char *smem_raw)
    {
        constexpr int NS = BKV / 8;
        constexpr bool QREG = HD <= 128;     /* keep the q fragments in registers */
        T *sQ = (T *)smem_raw, *sKV = sQ + BQ * LD;   /* stage s: K at sKV + 2s·BKV·LD, V after it */
        const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, S = p.S, gkv = h / G;
        const int q0 = qb * BQ;
        if (q0 >= S) return;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q4 = lane & 3;
        const T *qkv = (const T *)p.qkv;
        const int last = min(q0 + BQ, S) - 1, n_kv = last / BKV + 1;
        const float sl2 = lm_attn_scale() * LM_LOG2E;

        zero_pad(sQ, BQ);
        zero_pad(sKV, 4 * BKV);
        load_rows(sQ, qkv, W, h * HD, b, S, q0, BQ);
        load_rows(sKV, qkv, W, (H + gkv) * HD, b, S, 0, BKV);
        load_rows(sKV + BKV * LD, qkv, W, (H + KV + gkv) * HD, b, S, 0, BKV);
        mg_cp_async_commit();

        unsigned qf[QREG ? KS : 1][4];
        float o[NO][4], m[2] = {-mg_inf(), -mg_inf()}, l[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < NO; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        const int r0 = q0 + warp * 16 + g;   /* this thread's rows r0, r0 + 8 */
        const T *sQw = sQ + warp * 16 * LD;

        for (int j = 0; j < n_kv; j++) {
            mg_cp_async_wait<0>();
            __syncthreads();
            if (j + 1 < n_kv) {
                T *st = sKV + ((j + 1) & 1) * 2 * BKV * LD;
                load_rows(st, qkv, W, (H + gkv) * HD, b, S, (j + 1) * BKV, BKV);
                load_rows(st + BKV * LD, qkv, W, (H + KV + gkv) * HD, b, S, (j + 1) * BKV, BKV);
            }
            mg_cp_async_commit();
            if constexpr (QREG) {
                if (j == 0) {
#pragma unroll
                    for (int ks = 0; ks < KS; ks++) mg_ldsm_x4(qf[ks], sQw + (lane & 15) * LD + ks * 16 + (lane >> 4) * 8);
                }
            }
            const T *sK = sKV + (j & 1) * 2 * BKV * LD, *sV = sK + BKV * LD;
            float s[NS][4];
#pragma unroll
            for (int i = 0; i < NS; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
            if constexpr (QREG) mma_abt_reg<NS>(s, qf, sK);
            else mma_abt<NS>(s, sQw, sK);

            /* online softmax (log2 domain); causal mask key > row */
            const int k0 = j * BKV;
            float mx[2] = {-mg_inf(), -mg_inf()};
#pragma unroll
            for (int ni = 0; ni < NS; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + ni * 8 + 2 * q4 + (e & 1), row = r0 + (e >> 1) * 8;
                    float x = key <= row && key < S ? s[ni][e] * sl2 : -mg_inf();
                    s[ni][e] = x;
                    mx[e >> 1] = fmaxf(mx[e >> 1], x);
                }
            float corr[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(MG_FULL_MASK, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(MG_FULL_MASK, mx[r], 2));
                float mn = fmaxf(m[r], mx[r]);   /* finite: key 0 is visible to every row in tile 0 */
                corr[r] = exp2f(m[r] - mn);
                m[r] = mn;
                l[r] *= corr[r];
            }
#pragma unroll
            for (int ni = 0; ni < NS; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float pv = exp2f(s[ni][e] - m[e >> 1]);
                    s[ni][e] = pv;
                    l[e >> 1] += pv;
                }
#pragma unroll
            for (int i = 0; i < NO; i++) {
                o[i][0] *= corr[0]; o[i][1] *= corr[0];
                o[i][2] *= corr[1]; o[i][3] *= corr[1];
            }
            mma_pb<BKV / 16, NO>(o, s, sV, 0, HD);
        }
        mg_cp_async_wait<0>();

        T *og = (T *)p.o;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            l[r] += __shfl_xor_sync(MG_FULL_MASK, l[r], 1);
            l[r] += __shfl_xor_sync(MG_FULL_MASK, l[r], 2);
            const int row = r0 + r * 8;
            if (row >= S) continue;
            const float inv = 1.0f / l[r];
            unsigned *dst = (unsigned *)(og + ((long long)b * S + row) * WO + h * HD + 2 * q4);
#pragma unroll
            for (int nt = 0; nt < NO; nt++) dst[nt * 4] = lm_pack2<T>(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
            if (q4 == 0) p.lse[((long long)b * H + h) * S + row] = (m[r] + log2f(l[r])) * LM_LN2;
        }
    }

    /* ---------------------------------------------------------------- dq */
    MG_DEV static void dq(const lm_attn_bwd_params &p, unsigned char *smem_raw)
    {
        constexpr int NS = BKV / 8;
        T *sQ = (T *)smem_raw, *sdO = sQ + BQ * LD, *sKV = sdO + BQ * LD;
        const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, S = p.S, gkv = h / G;
        const int q0 = qb * BQ;
        if (q0 >= S) return;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q4 = lane & 3;
        const T *qkv = (const T *)p.qkv;
        const int last = min(q0 + BQ, S) - 1, n_kv = last / BKV + 1;
        const float scale = lm_attn_scale(), sl2 = scale * LM_LOG2E;

        zero_pad(sQ, 2 * BQ);
        zero_pad(sKV, 4 * BKV);
        load_rows(sQ, qkv, W, h * HD, b, S, q0, BQ);
        load_rows(sdO, (const T *)p.dout, WO, h * HD, b, S, q0, BQ);
        load_rows(sKV, qkv, W, (H + gkv) * HD, b, S, 0, BKV);
        load_rows(sKV + BKV * LD, qkv, W, (H + KV + gkv) * HD, b, S, 0, BKV);
        mg_cp_async_commit();

        const int r0 = q0 + warp * 16 + g;
        float lse2[2], dd[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int row = r0 + r * 8;
            long long i = ((long long)b * H + h) * S + row;
            lse2[r] = row < S ? p.lse[i] * LM_LOG2E : 0.0f;
            dd[r] = row < S ? p.dsum[i] : 0.0f;
        }
        float acc[NO][4];
#pragma unroll
        for (int i = 0; i < NO; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
        const T *sQw = sQ + warp * 16 * LD, *sdOw = sdO + warp * 16 * LD;

        for (int j = 0; j < n_kv; j++) {
            mg_cp_async_wait<0>();
            __syncthreads();
            if (j + 1 < n_kv) {
                T *st = sKV + ((j + 1) & 1) * 2 * BKV * LD;
                load_rows(st, qkv, W, (H + gkv) * HD, b, S, (j + 1) * BKV, BKV);
                load_rows(st + BKV * LD, qkv, W, (H + KV + gkv) * HD, b, S, (j + 1) * BKV, BKV);
            }
            mg_cp_async_commit();
            const T *sK = sKV + (j & 1) * 2 * BKV * LD, *sV = sK + BKV * LD;
            float s[NS][4], dp[NS][4];
#pragma unroll
            for (int i = 0; i < NS; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[i][e] = dp[i][e] = 0.0f;
            mma_abt<NS>(s, sQw, sK);
            mma_abt<NS>(dp, sdOw, sV);
            const int k0 = j * BKV;
#pragma unroll
            for (int ni = 0; ni < NS; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + ni * 8 + 2 * q4 + (e & 1), row = r0 + (e >> 1) * 8;
                    float pv = key <= row && row < S ? exp2f(s[ni][e] * sl2 - lse2[e >> 1]) : 0.0f;
                    s[ni][e] = pv * (dp[ni][e] - dd[e >> 1]);   /* dS */
                }
            mma_pb<BKV / 16, NO>(acc, s, sK, 0, HD);
        }
        mg_cp_async_wait<0>();

        T *dg = (T *)p.dqkv;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = r0 + r * 8;
            if (row >= S) continue;
            unsigned *dst = (unsigned *)(dg + ((long long)b * S + row) * W + h * HD + 2 * q4);
#pragma unroll
            for (int nt = 0; nt < NO; nt++) dst[nt * 4] = lm_pack2<T>(acc[nt][2 * r] * scale, acc[nt][2 * r + 1] * scale);
        }
    }

    /* ---------------------------------------------------------------- dk, dv */
    MG_DEV static void dkdv(const lm_attn_bwd_params &p, unsigned char *smem_raw)
    {
        constexpr int BK = LM_ATTN_BKEYS, BQB = LM_ATTN_BQB, NQ = BQB / 8;
        constexpr int NCH = LM_ATTN_NCH(HD), HC = LM_ATTN_HC(HD), NC = HC / 8;
        T *sK = (T *)smem_raw, *sV = sK + BK * LD, *sQd = sV + BK * LD;   /* stage s: Q, dO at sQd + 2s·BQB·LD */
        float *sLD = (float *)(sQd + 4 * BQB * LD);                     /* stage s: lse2, D at sLD + 2s·BQB */
        const int kb = blockIdx.x, gkv = blockIdx.y / NCH, ch = blockIdx.y % NCH, b = blockIdx.z, S = p.S;
        const int k0 = kb * BK, c0 = ch * HC;
        if (k0 >= S) return;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q4 = lane & 3;
        const T *qkv = (const T *)p.qkv, *dout = (const T *)p.dout;
        const float scale = lm_attn_scale(), sl2 = scale * LM_LOG2E;
        const int qt0 = k0 / BQB, nqt = (S + BQB - 1) / BQB - qt0, n_it = G * nqt;

        zero_pad(sK, 2 * BK);
        zero_pad(sQd, 4 * BQB);
        load_rows(sK, qkv, W, (H + gkv) * HD, b, S, k0, BK);
        load_rows(sV, qkv, W, (H + KV + gkv) * HD, b, S, k0, BK);
        auto load_q = [&](int it, int st) {
            const int hq = gkv * G + it / nqt, qs = (qt0 + it % nqt) * BQB;
            T *sQ = sQd + st * 2 * BQB * LD;
            load_rows(sQ, qkv, W, hq * HD, b, S, qs, BQB);
            load_rows(sQ + BQB * LD, dout, WO, hq * HD, b, S, qs, BQB);
            float *sl = sLD + st * 2 * BQB;
            for (int i = threadIdx.x; i < BQB; i += NT) {
                long long x = ((long long)b * H + hq) * S + qs + i;
                bool ok = qs + i < S;
                sl[i] = ok ? p.lse[x] * LM_LOG2E : 0.0f;
                sl[BQB + i] = ok ? p.dsum[x] : 0.0f;
            }
        };
        load_q(0, 0);
        mg_cp_async_commit();

        float dk[NC][4], dv[NC][4];
#pragma unroll
        for (int i = 0; i < NC; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.0f;
        const int kr0 = k0 + warp * 16 + g;   /* this thread's keys kr0, kr0 + 8 */
        const T *sKw = sK + warp * 16 * LD, *sVw = sV + warp * 16 * LD;

        for (int it = 0; it < n_it; it++) {
            mg_cp_async_wait<0>();
            __syncthreads();
            if (it + 1 < n_it) load_q(it + 1, (it + 1) & 1);
            mg_cp_async_commit();
            const T *sQ = sQd + (it & 1) * 2 * BQB * LD, *sdO = sQ + BQB * LD;
            const float *sl = sLD + (it & 1) * 2 * BQB;
            const int qs = (qt0 + it % nqt) * BQB;
            float st[NQ][4], dpt[NQ][4];
#pragma unroll
            for (int i = 0; i < NQ; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.0f;
            mma_abt<NQ>(st, sKw, sQ);     /* Sᵀ[key][query] */
            mma_abt<NQ>(dpt, sVw, sdO);   /* dPᵀ[key][query] */
#pragma unroll
            for (int ni = 0; ni < NQ; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int ql = ni * 8 + 2 * q4 + (e & 1), qi = qs + ql, key = kr0 + (e >> 1) * 8;
                    float pv = qi >= key && qi < S ? exp2f(st[ni][e] * sl2 - sl[ql]) : 0.0f;
                    st[ni][e] = pv;                              /* Pᵀ */
                    dpt[ni][e] = pv * (dpt[ni][e] - sl[BQB + ql]);   /* dSᵀ */
                }
            mma_pb<BQB / 16, NC>(dv, st, sdO, c0, HD);
            mma_pb<BQB / 16, NC>(dk, dpt, sQ, c0, HD);
        }
        mg_cp_async_wait<0>();

        T *dg = (T *)p.dqkv;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int key = kr0 + r * 8;
            if (key >= S) continue;
            T *row = dg + ((long long)b * S + key) * W;
            unsigned *dkp = (unsigned *)(row + (H + gkv) * HD + c0 + 2 * q4);
            unsigned *dvp = (unsigned *)(row + (H + KV + gkv) * HD + c0 + 2 * q4);
#pragma unroll
            for (int nt = 0; nt < NC; nt++) {
                if (c0 + nt * 8 >= HD) continue;
                dkp[nt * 4] = lm_pack2<T>(dk[nt][2 * r] * scale, dk[nt][2 * r + 1] * scale);
                dvp[nt * 4] = lm_pack2<T>(dv[nt][2 * r], dv[nt][2 * r + 1]);
            }
        }
    }
};

/* ======================================================================== fp32 FFMA path
 * One warp per row on the tensor-core grid (each warp walks 16 rows of its block's 64).
 * Lane l owns head-dim columns l, l+32, ...; dot products are warp butterflies, so every
 * lane holds every score. */
struct lm_attn_f32 : lm_attn_dims {
    static constexpr int NL = (HD + 31) / 32;   /* columns per lane */

    MG_DEV static void load_vec(float (&v)[NL], const float *row)
    {
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int t = 0; t < NL; t++) v[t] = lane + 32 * t < HD ? row[lane + 32 * t] : 0.0f;
    }
    MG_DEV static float dot(const float (&v)[NL], const float *row)
    {
        const int lane = threadIdx.x & 31;
        float acc = 0.0f;
#pragma unroll
        for (int t = 0; t < NL; t++)
            if (lane + 32 * t < HD) acc = fmaf(v[t], row[lane + 32 * t], acc);
        return mg_warp_sum(acc);
    }

    MG_DEV static void fwd(const lm_attn_fwd_params &p)
    {
        const int h = blockIdx.y, b = blockIdx.z, S = p.S, gkv = h / G, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const float *qkv = (const float *)p.qkv, scale = lm_attn_scale();
        for (int rr = 0; rr < 16; rr++) {
            const int i = blockIdx.x * LM_ATTN_BQ + warp * 16 + rr;
            if (i >= S) return;
            float q[NL], o[NL], m = -mg_inf(), l = 0.0f;
            load_vec(q, qkv + ((long long)b * S + i) * W + h * HD);
#pragma unroll
            for (int t = 0; t < NL; t++) o[t] = 0.0f;
            for (int j0 = 0; j0 <= i; j0 += 32) {
                float mine = -mg_inf();
                const int nj = min(32, i + 1 - j0);
                for (int jj = 0; jj < nj; jj++) {
                    float sv = scale * dot(q, qkv + ((long long)b * S + j0 + jj) * W + (H + gkv) * HD);
                    if (lane == jj) mine = sv;
                }
                float mn = fmaxf(m, mg_warp_max(mine)), corr = expf(m - mn);
                float pe = lane < nj ? expf(mine - mn) : 0.0f;
                l = l * corr + mg_warp_sum(pe);
                m = mn;
#pragma unroll
                for (int t = 0; t < NL; t++) o[t] *= corr;
                for (int jj = 0; jj < nj; jj++) {
                    float pj = __shfl_sync(MG_FULL_MASK, pe, jj);
                    const float *v = qkv + ((long long)b * S + j0 + jj) * W + (H + KV + gkv) * HD;
#pragma unroll
                    for (int t = 0; t < NL; t++)
                        if (lane + 32 * t < HD) o[t] = fmaf(pj, v[lane + 32 * t], o[t]);
                }
            }
            float *og = (float *)p.o + ((long long)b * S + i) * WO + h * HD;
#pragma unroll
            for (int t = 0; t < NL; t++)
                if (lane + 32 * t < HD) og[lane + 32 * t] = o[t] / l;
            if (lane == 0) p.lse[((long long)b * H + h) * S + i] = m + logf(l);
        }
    }

    MG_DEV static void dq(const lm_attn_bwd_params &p)
    {
        const int h = blockIdx.y, b = blockIdx.z, S = p.S, gkv = h / G, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const float *qkv = (const float *)p.qkv, scale = lm_attn_scale();
        for (int rr = 0; rr < 16; rr++) {
            const int i = blockIdx.x * LM_ATTN_BQ + warp * 16 + rr;
            if (i >= S) return;
            float q[NL], go[NL], acc[NL];
            load_vec(q, qkv + ((long long)b * S + i) * W + h * HD);
            load_vec(go, (const float *)p.dout + ((long long)b * S + i) * WO + h * HD);
            const float L = p.lse[((long long)b * H + h) * S + i], D = p.dsum[((long long)b * H + h) * S + i];
#pragma unroll
            for (int t = 0; t < NL; t++) acc[t] = 0.0f;
            for (int j = 0; j <= i; j++) {
                const float *k = qkv + ((long long)b * S + j) * W + (H + gkv) * HD;
                float pv = expf(scale * dot(q, k) - L);
                float ds = pv * (dot(go, k + KV * HD) - D);
#pragma unroll
                for (int t = 0; t < NL; t++)
                    if (lane + 32 * t < HD) acc[t] = fmaf(ds, k[lane + 32 * t], acc[t]);
            }
            float *dg = (float *)p.dqkv + ((long long)b * S + i) * W + h * HD;
#pragma unroll
            for (int t = 0; t < NL; t++)
                if (lane + 32 * t < HD) dg[lane + 32 * t] = acc[t] * scale;
        }
    }

    MG_DEV static void dkdv(const lm_attn_bwd_params &p)
    {
        constexpr int NCH = LM_ATTN_NCH(HD);
        if (blockIdx.y % NCH) return;   /* chunk 0 writes every column */
        const int gkv = blockIdx.y / NCH, b = blockIdx.z, S = p.S, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const float *qkv = (const float *)p.qkv, scale = lm_attn_scale();
        for (int rr = 0; rr < 16; rr++) {
            const int j = blockIdx.x * LM_ATTN_BKEYS + warp * 16 + rr;
            if (j >= S) return;
            float k[NL], v[NL], dk[NL], dv[NL];
            load_vec(k, qkv + ((long long)b * S + j) * W + (H + gkv) * HD);
            load_vec(v, qkv + ((long long)b * S + j) * W + (H + KV + gkv) * HD);
#pragma unroll
            for (int t = 0; t < NL; t++) dk[t] = dv[t] = 0.0f;
            for (int hq = gkv * G; hq < (gkv + 1) * G; hq++)
                for (int i = j; i < S; i++) {
                    const float *q = qkv + ((long long)b * S + i) * W + hq * HD;
                    const float *go = (const float *)p.dout + ((long long)b * S + i) * WO + hq * HD;
                    const long long x = ((long long)b * H + hq) * S + i;
                    float pv = expf(scale * dot(k, q) - p.lse[x]);
                    float ds = pv * (dot(v, go) - p.dsum[x]);
#pragma unroll
                    for (int t = 0; t < NL; t++)
                        if (lane + 32 * t < HD) {
                            dv[t] = fmaf(pv, go[lane + 32 * t], dv[t]);
                            dk[t] = fmaf(ds, q[lane + 32 * t], dk[t]);
                        }
                }
            float *row = (float *)p.dqkv + ((long long)b * S + j) * W;
#pragma unroll
            for (int t = 0; t < NL; t++)
                if (lane + 32 * t < HD) {
                    row[(H + gkv) * HD + lane + 32 * t] = dk[t] * scale;
                    row[(H + KV + gkv) * HD + lane + 32 * t] = dv[t];
                }
        }
    }
};

template <int DT> MG_DEV void lm_attn_fwd_impl(const lm_attn_fwd_params &p, unsigned char *smem)
{
    if constexpr (DT == 2) lm_attn_f32::fwd(p);
    else lm_attn_tc<typename mg_dtype_of<DT>::type>::fwd(p, smem);
}
template <int DT> MG_DEV void lm_attn_dq_impl(const lm_attn_bwd_params &p, unsigned char *smem)
{
    if constexpr (DT == 2) lm_attn_f32::dq(p);
    else lm_attn_tc<typename mg_dtype_of<DT>::type>::dq(p, smem);
}
template <int DT> MG_DEV void lm_attn_dkdv_impl(const lm_attn_bwd_params &p, unsigned char *smem)
{
    if constexpr (DT == 2) lm_attn_f32::dkdv(p);
    else lm_attn_tc<typename mg_dtype_of<DT>::type>::dkdv(p, smem);
}

/* fwd. grid: (ceil(S/64), H, B); block 128; dynamic smem LM_ATTN_FWD_SMEM(hd, esz). */
extern "C" __global__ void __launch_bounds__(128)
/*$fwd*/lm_attn_fwd(const lm_attn_fwd_params p)
{
    extern __shared__ __align__(16) unsigned char lm_smem[];
    lm_attn_fwd_impl<MG_DTYPE>(p, lm_smem);
}

/* bwd_pre: D[b,h,i] = Σ_c dO[b·S+i, h·hd+c]·O[b·S+i, h·hd+c]. grid: ceil(B·S·H/4); block 128
 * (one warp per (row, head)). */
extern "C" __global__ void __launch_bounds__(128)
/*$bwd_pre*/lm_attn_bwd_pre(const lm_attn_bwd_params p)
{
    const long long wid = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31, HD = MG_HEAD_DIM, H = MG_N_HEAD;
    if (wid >= (long long)p.B * p.S * H) return;
    const long long row = wid / H;   /* b·S + i */
    const int h = (int)(wid % H);
    const mg_t *o = (const mg_t *)p.o + row * (H * HD) + h * HD, *d = (const mg_t *)p.dout + row * (H * HD) + h * HD;
    float acc = 0.0f;
    for (int c = lane; c < HD; c += 32) acc = fmaf(mg_to_f32(o[c]), mg_to_f32(d[c]), acc);
    acc = mg_warp_sum(acc);
    const long long b = row / p.S, i = row % p.S;
    if (lane == 0) p.dsum[(b * H + h) * p.S + i] = acc;
}

/* bwd_dkdv. grid: (ceil(S/64), KV·LM_ATTN_NCH(hd), B); block 128; smem LM_ATTN_DKDV_SMEM(hd, esz). */
extern "C" __global__ void __launch_bounds__(128)
/*$bwd_dkdv*/lm_attn_bwd_dkdv(const lm_attn_bwd_params p)
{
    extern __shared__ __align__(16) unsigned char lm_smem[];
    lm_attn_dkdv_impl<MG_DTYPE>(p, lm_smem);
}

/* bwd_dq. grid: (ceil(S/64), H, B); block 128; smem LM_ATTN_DQ_SMEM(hd, esz). */
extern "C" __global__ void __launch_bounds__(128)
/*$bwd_dq*/lm_attn_bwd_dq(const lm_attn_bwd_params p)
{
    extern __shared__ __align__(16) unsigned char lm_smem[];
    lm_attn_dq_impl<MG_DTYPE>(p, lm_smem);
}
