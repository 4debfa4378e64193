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
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#endif

typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, true> moe_up_fwd_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, false> moe_up_dgrad_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, false, false> moe_up_wgrad_gemm;

/* fwd. grid: x = ceil(T*k/BM) + E when routed (blocks past tile_off[E] exit), ceil(T/BM)
 * for identity routing; y = ceil(F2/BN). block: 32*WARPS. dynamic smem:
 * MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1). For GLU, CTA column tile y covers h columns
 * [y*BN/2, (y+1)*BN/2) and loads the matching gate and up rows of W_up interleaved. */
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$fwd*/moe_up_fwd(const moe_up_fwd_params p)
{
    typedef moe_up_fwd_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
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
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$dgrad*/moe_up_dgrad(const moe_up_dgrad_params p)
{
    typedef moe_up_dgrad_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
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
        if (s < m_end && c < MG_D) p.dxs[s * MG_D + c] = v;
    });
}

/* wgrad: dW_up[g][m, n] = Σ_{s in group g} da[s, m] · x[row(s), n]  (M = F2, N = d, K =
 * the group's slots). grid: x = ceil(F2/BM) * ceil(d/BN) (x / ceil(d/BN) = m tile),
 * y = n_groups. block 32*WARPS. dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,0,0).
 * Empty groups write zeros. */
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$wgrad*/moe_up_wgrad(const moe_up_wgrad_params p)
{
    typedef moe_up_wgrad_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
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
