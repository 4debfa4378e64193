/* moe_up: the expert up projection as a grouped GEMM over variable-size expert groups.
 *   fwd:   a[s] = x[row(s)] · W_up[g]ᵀ  (x rows gathered through perm in the loader; no
 *          permuted copy of x), h[s] = act(a[s]) in the epilogue (GLU: silu/gelu(gate)·up).
 *   dgrad: dxs[s] = da[s] · W_up[g]       (per-slot dx, summed per token by combine/dx)
 *   wgrad: dW_up[g] = Σ_{s in g} da[s]ᵀ ⊗ x[row(s)]   (one CTA owns one output tile and
 *          walks all of the group's slots: deterministic, no atomics)
 * Shared experts run the same entries with identity routing (offsets/tile_off/perm NULL,
 * rows = tokens), one launch per shared expert. */
// moegen:entries fwd dgrad wgrad
// moegen:grid fwd: (ceil(T*k/BM)+E routed | ceil(T/BM) identity, ceil(F2/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1)
// moegen:grid dgrad: (ceil(T*k/BM)+E | ceil(T/BM), ceil(d/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,1,0)
// moegen:grid wgrad: (ceil(F2/BM)*ceil(d/BN), groups) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,0,0)
// moegen:grid sm_90a (16-bit, BM 128), every entry: (SMs) x 384 persistent, smem MG_WG_SMEM_BYTES(MG_WG_BN(N)), N = F2 | d | d (the same bytes for either width: wgrad's tile is F2 wide)
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "mg_wgmma.cuh"
#endif

typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, true> moe_up_fwd_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, false> moe_up_dgrad_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, false, false> moe_up_wgrad_gemm;

#if MG_WG_ARCH
/* ---- Hopper path (mg_wgmma.cuh): one problem struct per entry. */
/* fwd: A = x rows gathered through perm, B = W_up rows; GLU tiles load BN/2 gate rows then
 * the matching BN/2 up rows, so the epilogue holds gate and up of one h column. */
struct moe_up_fwd_wg {
    static constexpr int BN = MG_WG_BN_UP_FWD_PICK(MG_D, MG_F2), HB = MG_GLU ? BN / 2 : BN, NTN = (MG_FF + HB - 1) / HB;
    typedef mg_wg<mg_t, BN, true, true> G;
    static constexpr int NS_CAP = MG_WG_NS_UP_FWD;
    /* A: gathered x rows, by one-row TMA boxes of tm_a (MG_WG_TMA_GATHER) or by cp.async */
    static constexpr bool GT = MG_WG_TMA_GATHER != 0;
    static constexpr bool A_TMA = GT, B_TMA = true, K_JAGGED = false, A_GATHER = GT;
    /* GLU: a and h stored through a shared-memory scratch (MG_WG_EPI_SMEM_UP) */
    static constexpr int EPI_BYTES = 0, SCRATCH_BYTES = MG_GLU && MG_WG_EPI_SMEM_UP ? MG_WG_SCRATCH_BYTES : 0, ASYNC_BYTES = 0;
    static constexpr bool PAIRS = true;   /* CTA pairs (MG_WG_CLUSTER 2): row GEMMs */
    const moe_up_fwd_params &p;
    MG_DEV int n_tiles() const { return mg_wg_rows_ntiles(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV void tile(int t, mg_wtile &w) const
    {
        mg_wg_rows_tile(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, w);
        w.kb = 0;
        w.ke = MG_D;
    }
    MG_DEV int n_pairs() const { return mg_wg_rows_npairs(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV bool pair_tile(int t, int rank, mg_wtile &w) const
    {
        const bool mc = mg_wg_rows_pair(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, rank, w);
        w.kb = 0;
        w.ke = MG_D;
        return mc;
    }
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &) const { return {(const mg_t *)p.x, 0, 0, 0, 1, 0, 0}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.w_up + (long long)w.g * MG_F2 * MG_D, 0, 0, 0, 1, 0, 0};
    }
    /* x row of tile row r (its slot's token), -1 past the group */
    MG_DEV int gather_row_a(const mg_wtile &w, int r) const
    {
        int s = w.m0 + r;
        return s < w.m_end ? (p.perm ? p.perm[s] / MG_TOPK : s) : -1;
    }
    MG_DEV long long row_a(const mg_wtile &w, int r) const
    {
        int x = gather_row_a(w, r);
        return x >= 0 ? (long long)x * MG_D : -1;
    }
    MG_DEV const mg_tmap &tm_gather() const { return p.tm_a; }
    MG_DEV void tma_a(const mg_wtile &, int, unsigned, unsigned) const {}
    /* W_up[g] rows: the tile's HB gate rows (then, GLU, the matching HB up rows) */
    MG_DEV void tma_b(const mg_wtile &w, int k0, unsigned dst, unsigned bar, mg_tsplit sp = mg_tsplit{}) const
    {
        mg_tma_rows<HB>(dst, p.tm_b, k0, w.nt * HB, w.g, bar, sp);
        sp.i0 = HB / 64;   /* the up boxes continue the gate boxes' numbering (CTA-pair split) */
        if constexpr (MG_GLU) mg_tma_rows<HB>(dst + HB * 128, p.tm_b, k0, MG_FF + w.nt * HB, w.g, bar, sp);
    }
    MG_DEV long long row_b(const mg_wtile &w, int n) const
    {
        int c = w.nt * HB + n % HB;
        if (c >= MG_FF) return -1;
        return (long long)(c + (MG_GLU && n >= HB ? MG_FF : 0)) * MG_D;
    }
    /* MG_WG_EPI_SMEM_UP (GLU): gate and up through this warpgroup's scratch scr ([64][40]
     * fp32), 16 h columns at a time (gate in floats 0-15 of a row, up in 16-31: the
     * accumulator's float2 writes land 8 banks apart per row, free of conflicts). Each thread
     * then takes rows 16·warp + lane/4 + 8v (v < 2) and h columns 4·(lane % 4) .. +3 of the
     * chunk, and writes 8 bytes each of a's gate, a's up and h: 4 lanes on 32 contiguous bytes
     * (a whole sector) of a row, where the register epilogue wrote 4 bytes at 8 rows a warp
     * instruction. The same fp32 values and the same arithmetic as the register epilogue. */
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA], float *scr, int bar) const
    {
        constexpr int LD = MG_WG_SCRATCH_LD, HJ = NA / 8, NCH = HB / 16;
        static_assert(NA == BN / 2 && HB % 16 == 0 && LD >= 32, "one m64 GLU accumulator");
        mg_t *a = (mg_t *)p.a, *h = (mg_t *)p.h;
        const int lane = threadIdx.x & 31;
        const int wm = mg_wg_acc_m(), wn = mg_wg_acc_n();   /* accumulator pairs */
        const int rr = wm, rc = (lane & 3) * 4;              /* read side */
#pragma unroll
        for (int ch = 0; ch < NCH; ch++) {
#pragma unroll
            for (int jj = 0; jj < 2; jj++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int ig = 4 * (2 * ch + jj) + 2 * hh, iu = 4 * (HJ + 2 * ch + jj) + 2 * hh;
                    float *row = scr + (wm + 8 * hh) * LD + 8 * jj + wn;
                    *(float2 *)row = make_float2(acc[ig], acc[ig + 1]);
                    *(float2 *)(row + 16) = make_float2(acc[iu], acc[iu + 1]);
                }
            mg_bar_named(bar, 128);
#pragma unroll
            for (int v = 0; v < 2; v++) {
                const long long s = w.m0 + rr + 8 * v;
                const int hc = w.nt * HB + 16 * ch + rc;
                const float *row = scr + (rr + 8 * v) * LD + rc;
                const float4 g4 = *(const float4 *)row, u4 = *(const float4 *)(row + 16);
                if (s < w.m_end && hc < MG_FF) {
                    const float g[4] = {g4.x, g4.y, g4.z, g4.w}, u[4] = {u4.x, u4.y, u4.z, u4.w};
                    float hv[4];
#pragma unroll
                    for (int e = 0; e < 4; e++) hv[e] = mg_act_f_fast<MG_ACT>(g[e]) * u[e];
                    mg_st4<mg_t, MG_WG_STORE_CS>(a + s * MG_F2 + hc, g);
                    mg_st4<mg_t, MG_WG_STORE_CS>(a + s * MG_F2 + MG_FF + hc, u);
                    mg_st4<mg_t, MG_WG_STORE_CS>(h + s * MG_FF + hc, hv);
                }
            }
            mg_bar_named(bar, 128);         /* the chunk's reads are done before the next's writes */
        }
    }
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        mg_t *a = (mg_t *)p.a, *h = (mg_t *)p.h;
        if constexpr (MG_GLU) {
            mg_wg_foreach_glu(acc, [&](int m, int hl, float g0, float g1, float u0, float u1) {
                long long s = w.m0 + m;
                int hc = w.nt * HB + hl;
                if (s < w.m_end && hc < MG_FF) {
                    mg_st2(a, s * MG_F2 + hc, g0, g1);
                    mg_st2(a, s * MG_F2 + MG_FF + hc, u0, u1);
                    mg_st2(h, s * MG_FF + hc, mg_act_f_fast<MG_ACT>(g0) * u0, mg_act_f_fast<MG_ACT>(g1) * u1);
                }
            });
        } else {
            mg_wg_foreach_pair(acc, [&](int m, int n, float v0, float v1) {
                long long s = w.m0 + m;
                int c = w.nt * BN + n;
                if (s < w.m_end && c < MG_FF) {
                    mg_st2(a, s * MG_F2 + c, v0, v1);
                    mg_st2(h, s * MG_FF + c, mg_act_f_fast<MG_ACT>(v0), mg_act_f_fast<MG_ACT>(v1));
                }
            });
        }
    }
};
/* dgrad: A = da rows (K = F2), B = W_up[g] MN-contiguous (rows k, columns d). */
struct moe_up_dgrad_wg {
    static constexpr int BN = MG_WG_BN_PICK(MG_WG_BN_UP_DGRAD, MG_D), NTN = (MG_D + BN - 1) / BN;
    typedef mg_wg<mg_t, BN, true, false> G;
    static constexpr int NS_CAP = MG_WG_NS_PICK(MG_WG_NS_UP_DGRAD, MG_F2);   /* K = F2 */
    static constexpr bool A_TMA = true, B_TMA = true, K_JAGGED = false, A_GATHER = false;
    static constexpr int EPI_BYTES = 0, SCRATCH_BYTES = 0, ASYNC_BYTES = 0;
    static constexpr bool PAIRS = true;   /* CTA pairs (MG_WG_CLUSTER 2): row GEMMs */
    const moe_up_dgrad_params &p;
    MG_DEV void tma_a(const mg_wtile &w, int k0, unsigned dst, unsigned bar) const
    {
        mg_tma_rows<128>(dst, p.tm_a, k0, w.m0, 0, bar);
    }
    MG_DEV void tma_b(const mg_wtile &w, int k0, unsigned dst, unsigned bar, const mg_tsplit &sp = mg_tsplit{}) const
    {
        mg_tma_cols<BN>(dst, p.tm_b, w.nt * BN, k0, w.g, bar, sp);
    }
    MG_DEV int n_tiles() const { return mg_wg_rows_ntiles(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV void tile(int t, mg_wtile &w) const
    {
        mg_wg_rows_tile(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, w);
        w.kb = 0;
        w.ke = MG_F2;
    }
    MG_DEV int n_pairs() const { return mg_wg_rows_npairs(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV bool pair_tile(int t, int rank, mg_wtile &w) const
    {
        const bool mc = mg_wg_rows_pair(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, rank, w);
        w.kb = 0;
        w.ke = MG_F2;
        return mc;
    }
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &) const { return {(const mg_t *)p.da, 0, 0, 0, 1, 0, 0}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.w_up + (long long)w.g * MG_F2 * MG_D, 0, MG_D, 0, 1, w.nt * BN, MG_D};
    }
    MG_DEV long long row_a(const mg_wtile &w, int r) const
    {
        int s = w.m0 + r;
        return s < w.m_end ? (long long)s * MG_F2 : -1;
    }
    MG_DEV long long row_b(const mg_wtile &, int) const { return -1; }
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        if (w.m0 + 64 <= w.m_end && w.nt * BN + BN <= MG_D) {
            mg_t *b = (mg_t *)p.dxs + (long long)w.m0 * MG_D + w.nt * BN + mg_wg_pair_origin(MG_D, 1);
            mg_wg_foreach_pair_full<MG_D, 1>(acc, [&](long long o, float v0, float v1) { mg_wg_st2t(b, o, v0, v1); });
            return;
        }
        mg_wg_foreach_pair(acc, [&](int m, int n, float v0, float v1) {
            long long s = w.m0 + m;
            int c = w.nt * BN + n;
            if (s < w.m_end && c < MG_D) mg_wg_st2t((mg_t *)p.dxs, s * MG_D + c, v0, v1);
        });
    }
};
/* wgrad, transposed: dW_up[g]ᵀ (M = d, N = F2), K = the group's slots; both operands
 * MN-contiguous. A = gathered x rows by cp.async (the 128-wide operand: 16 KB a stage), B = da
 * by TMA (tm_a); the epilogue writes row c of dW_up[g] from column c of the tile. Against
 * M = F2, N = d (x gathered as the 256-wide B, 32 KB a stage) on an H100
 * (bench/results/2026-11-26-s6, call 1, same call): Mixtral 35.77 -> 34.07 ms fwd+bwd, OLMoE
 * 12.28 -> 11.76, fine-grained 10.44 -> 10.28, small 3.78 -> 3.65. */
struct moe_up_wgrad_wg {
    static constexpr int BN = MG_WG_BN_PICK(MG_WG_BN_UP_WGRAD, MG_F2), MT = (MG_D + 127) / 128, NTN = (MG_F2 + BN - 1) / BN;
    typedef mg_wg<mg_t, BN, false, false> G;
    static constexpr int NS_CAP = MG_WG_NS_UP_WGRAD;
    static constexpr bool A_TMA = false, B_TMA = true, K_JAGGED = true, A_GATHER = false;
    static constexpr int EPI_BYTES = 0, SCRATCH_BYTES = 0, ASYNC_BYTES = 0;
    static constexpr bool PAIRS = false;
    const moe_up_wgrad_params &p;
    MG_DEV void tma_a(const mg_wtile &, int, unsigned, unsigned) const {}
    MG_DEV void tma_b(const mg_wtile &w, int k0, unsigned dst, unsigned bar) const
    {
        mg_tma_cols<BN>(dst, p.tm_a, w.nt * BN, k0, 0, bar);
    }
    MG_DEV int n_tiles() const { return p.n_groups * MT * NTN; }
    MG_DEV void tile(int t, mg_wtile &w) const { mg_wg_wgrad_tile(p.offsets, p.T, MT, NTN, t, w); }
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &w) const { return {(const mg_t *)p.x, 0, MG_D, p.perm, MG_TOPK, w.m0, MG_D}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.da, 0, MG_F2, 0, 1, w.nt * BN, MG_F2};
    }
    MG_DEV long long row_a(const mg_wtile &, int) const { return -1; }
    MG_DEV long long row_b(const mg_wtile &, int) const { return -1; }
    /* (a warp's store covers 8 consecutive d columns of 4 dW rows: whole 32-byte sectors) */
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        float *dw = p.dw_up + (long long)w.g * MG_F2 * MG_D;
        if (w.m0 + 64 <= MG_D && w.nt * BN + BN <= MG_F2) {
            /* element (m, n) at (n0 + n)·d + m0 + m */
            float *b = dw + (long long)w.nt * BN * MG_D + w.m0 + mg_wg_pair_origin(1, MG_D);
            mg_wg_foreach_pair_full<1, MG_D>(acc, [&](long long o, float v0, float v1) {
                mg_wg_st1f(b, o, v0);
                mg_wg_st1f(b, o + MG_D, v1);
            });
            return;
        }
        mg_wg_foreach_pair(acc, [&](int m, int n, float v0, float v1) {
            int r = w.m0 + m, c = w.nt * BN + n;
            if (r < MG_D && c < MG_F2) {
                mg_wg_st1f(dw, (long long)c * MG_D + r, v0);
                mg_wg_st1f(dw, (long long)(c + 1) * MG_D + r, v1);
            }
        });
    }
};
#endif

/* fwd. grid: x = ceil(T*k/BM) + E when routed (blocks past tile_off[E] exit), ceil(T/BM)
 * for identity routing; y = ceil(F2/BN). block: 32*WARPS. dynamic smem:
 * MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1). For GLU, CTA column tile y covers h columns
 * [y*BN/2, (y+1)*BN/2) and loads the matching gate and up rows of W_up interleaved. */
extern "C" __global__ void MG_GEMM_BOUNDS
/*$fwd*/moe_up_fwd(MG_GEMM_PARAM moe_up_fwd_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_up_fwd_wg pb{p};
            moe_up_fwd_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_up_fwd_gemm G;
    __shared__ long long rowA[MG_BM], rowB[MG_BN];
    int g, m0, m_end;
    if (!mg_sched_mtile(p.offsets, p.tile_off, p.n_groups, p.T, MG_BM, &g, &m0, &m_end)) return;
    const int nt = blockIdx.y;
    for (int r = threadIdx.x; r < MG_BM; r += G::NT) {
        int s = m0 + r;
        rowA[r] = s < m_end ? (long long)(p.perm ? p.perm[s] / MG_TOPK : s) * MG_D : -1;
    }
    for (int n = threadIdx.x; n < MG_BN; n += G::NT) {
        long long row;
        if constexpr (MG_GLU) {
            int up, hc = nt * (MG_BN / 2) + G::glu_col(n, &up);
            row = hc < MG_FF ? hc + (up ? MG_FF : 0) : -1;
        } else {
            int c = nt * MG_BN + n;
            row = c < MG_FF ? c : -1;
        }
        rowB[n] = row >= 0 ? row * MG_D : -1;
    }
    __syncthreads();
    mg_opnd<mg_t> A = {(const mg_t *)p.x, rowA, 0, 0, 1, 0, 0};
    mg_opnd<mg_t> B = {(const mg_t *)p.w_up + (long long)g * MG_F2 * MG_D, rowB, 0, 0, 1, 0, 0};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, 0, MG_D, acc);

    mg_t *a = (mg_t *)p.a, *h = (mg_t *)p.h;
    if constexpr (MG_GLU) {
        G::foreach_glu(acc, [&](int m, int hl, float gv, float uv) {
            long long s = m0 + m;
            int hc = nt * (MG_BN / 2) + hl;
            if (s < m_end && hc < MG_FF) {
                mg_st(a, s * MG_F2 + hc, gv);
                mg_st(a, s * MG_F2 + MG_FF + hc, uv);
                mg_st(h, s * MG_FF + hc, mg_act_f<MG_ACT>(gv) * uv);
            }
        });
    } else {
        G::foreach(acc, [&](int m, int n, float v) {
            long long s = m0 + m;
            int c = nt * MG_BN + n;
            if (s < m_end && c < MG_FF) {
                mg_st(a, s * MG_F2 + c, v);
                mg_st(h, s * MG_FF + c, mg_act_f<MG_ACT>(v));
            }
        });
    }
}

/* dgrad: dxs[s, :] = da[s, :] · W_up[g]  (K = F2). grid: x as fwd, y = ceil(d/BN).
 * block 32*WARPS. dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,0). */
extern "C" __global__ void MG_GEMM_BOUNDS_BWD
/*$dgrad*/moe_up_dgrad(MG_GEMM_PARAM moe_up_dgrad_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH_BWD
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_up_dgrad_wg pb{p};
            moe_up_dgrad_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_up_dgrad_gemm G;
    __shared__ long long rowA[MG_BM];
    int g, m0, m_end;
    if (!mg_sched_mtile(p.offsets, p.tile_off, p.n_groups, p.T, MG_BM, &g, &m0, &m_end)) return;
    const int nt = blockIdx.y;
    for (int r = threadIdx.x; r < MG_BM; r += G::NT) {
        int s = m0 + r;
        rowA[r] = s < m_end ? (long long)s * MG_F2 : -1;
    }
    __syncthreads();
    mg_opnd<mg_t> A = {(const mg_t *)p.da, rowA, 0, 0, 1, 0, 0};
    mg_opnd<mg_t> B = {(const mg_t *)p.w_up + (long long)g * MG_F2 * MG_D, 0, MG_D, 0, 1, nt * MG_BN, MG_D};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, 0, MG_F2, acc);
    G::foreach(acc, [&](int m, int n, float v) {
        long long s = m0 + m;
        int c = nt * MG_BN + n;
        if (s < m_end && c < MG_D) ((mg_t *)p.dxs)[s * MG_D + c] = mg_from_f32<mg_t>(v);
    });
}

/* wgrad: dW_up[g][m, n] = Σ_{s in group g} da[s, m] · x[row(s), n]  (M = F2, N = d, K =
 * the group's slots). grid: x = ceil(F2/BM) * ceil(d/BN) (x / ceil(d/BN) = m tile),
 * y = n_groups. block 32*WARPS. dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,0,0).
 * Empty groups write zeros. */
extern "C" __global__ void MG_GEMM_BOUNDS_BWD
/*$wgrad*/moe_up_wgrad(MG_GEMM_PARAM moe_up_wgrad_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH_BWD
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_up_wgrad_wg pb{p};
            moe_up_wgrad_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_up_wgrad_gemm G;
    constexpr int NTN = (MG_D + MG_BN - 1) / MG_BN;
    const int g = blockIdx.y, mt = blockIdx.x / NTN, nt = blockIdx.x % NTN;
    const int kb = p.offsets ? p.offsets[g] : 0, ke = p.offsets ? p.offsets[g + 1] : p.T;
    mg_opnd<mg_t> A = {(const mg_t *)p.da, 0, MG_F2, 0, 1, mt * MG_BM, MG_F2};
    mg_opnd<mg_t> B = {(const mg_t *)p.x, 0, MG_D, p.perm, MG_TOPK, nt * MG_BN, MG_D};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, kb, ke, acc);
    float *dw = p.dw_up + (long long)g * MG_F2 * MG_D;
    G::foreach(acc, [&](int m, int n, float v) {
        int r = mt * MG_BM + m, c = nt * MG_BN + n;
        if (r < MG_F2 && c < MG_D) dw[(long long)r * MG_D + c] = v;
    });
}
