/* moe_down: the expert down projection as a grouped GEMM over variable-size expert groups.
 *   fwd:   z[s] = h[s] · W_dn[g]ᵀ                       (fp32 per-slot output)
 *   dgrad: dh[s] = dz[s] · W_dn[g], with the activation gradient fused in the epilogue:
 *          GLU: da_gate = dh·f'(gate)·up, da_up = dh·f(gate); else da = dh·f'(a)
 *   wgrad: dW_dn[g] = Σ_{s in g} dz[s]ᵀ ⊗ h[s]          (one CTA per output tile, no atomics)
 * Shared experts run the same entries with identity routing (offsets/tile_off NULL, rows =
 * tokens, dz = dy). */
// moegen:entries fwd dgrad wgrad
// moegen:grid fwd: (ceil(T*k/BM)+E routed | ceil(T/BM) identity, ceil(d/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1)
// moegen:grid dgrad: (ceil(T*k/BM)+E | ceil(T/BM), ceil(FF/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,1,0)
// moegen:grid wgrad: (ceil(d/BM)*ceil(FF/BN), groups) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,0,0)
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#endif

typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, true> moe_down_fwd_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, false> moe_down_dgrad_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, false, false> moe_down_wgrad_gemm;

/* fwd: z[s, :] = h[s, :] · W_dn[g]ᵀ (K = FF). grid: x = ceil(T*k/BM) + E when routed
 * (blocks past tile_off[E] exit), ceil(T/BM) for identity; y = ceil(d/BN). block 32*WARPS.
 * dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1). */
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$fwd*/moe_down_fwd(const moe_down_fwd_params p)
{
    typedef moe_down_fwd_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
    __shared__ long long rowA[MG_BM], rowB[MG_BN];
    int g, m0, m_end;
    if (!mg_sched_mtile(p.offsets, p.tile_off, p.n_groups, p.T, MG_BM, &g, &m0, &m_end)) return;
    const int nt = blockIdx.y;
    for (int r = threadIdx.x; r < MG_BM; r += G::NT) {
        int s = m0 + r;
        rowA[r] = s < m_end ? (long long)s * MG_FF : -1;
    }
    for (int n = threadIdx.x; n < MG_BN; n += G::NT) {
        int c = nt * MG_BN + n;
        rowB[n] = c < MG_D ? (long long)c * MG_FF : -1;
    }
    __syncthreads();
    mg_opnd<mg_t> A = {(const mg_t *)p.h, rowA, 0, 0, 1, 0, 0};
    mg_opnd<mg_t> B = {(const mg_t *)p.w_dn + (long long)g * MG_D * MG_FF, rowB, 0, 0, 1, 0, 0};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, 0, MG_FF, acc);
    G::foreach(acc, [&](int m, int n, float v) {
        long long s = m0 + m;
        int c = nt * MG_BN + n;
        if (s < m_end && c < MG_D) p.z[s * MG_D + c] = v;
    });
}

/* dgrad: dh[s, :] = dz[s, :] · W_dn[g] (K = d, N = FF), epilogue -> da[s, :F2].
 * grid: x as fwd, y = ceil(FF/BN). block 32*WARPS.
 * dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,0). */
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$dgrad*/moe_down_dgrad(const moe_down_dgrad_params p)
{
    typedef moe_down_dgrad_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
    __shared__ long long rowA[MG_BM];
    int g, m0, m_end;
    if (!mg_sched_mtile(p.offsets, p.tile_off, p.n_groups, p.T, MG_BM, &g, &m0, &m_end)) return;
    const int nt = blockIdx.y;
    for (int r = threadIdx.x; r < MG_BM; r += G::NT) {
        int s = m0 + r;
        rowA[r] = s < m_end ? (long long)s * MG_D : -1;
    }
    __syncthreads();
    mg_opnd<mg_t> A = {(const mg_t *)p.dz, rowA, 0, 0, 1, 0, 0};
    mg_opnd<mg_t> B = {(const mg_t *)p.w_dn + (long long)g * MG_D * MG_FF, 0, MG_FF, 0, 1, nt * MG_BN, MG_FF};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, 0, MG_D, acc);
    const mg_t *a = (const mg_t *)p.a;
    mg_t *da = (mg_t *)p.da;
    G::foreach(acc, [&](int m, int n, float dh) {
        long long s = m0 + m;
        int c = nt * MG_BN + n;
        if (s < m_end && c < MG_FF) {
            if constexpr (MG_GLU) {
                float gv = mg_ld(a, s * MG_F2 + c), uv = mg_ld(a, s * MG_F2 + MG_FF + c);
                mg_st(da, s * MG_F2 + c, dh * mg_act_df<MG_ACT>(gv) * uv);
                mg_st(da, s * MG_F2 + MG_FF + c, dh * mg_act_f<MG_ACT>(gv));
            } else {
                mg_st(da, s * MG_F2 + c, dh * mg_act_df<MG_ACT>(mg_ld(a, s * MG_F2 + c)));
            }
        }
    });
}

/* wgrad: dW_dn[g][m, n] = Σ_{s in group g} dz[s, m] · h[s, n] (M = d, N = FF, K = the
 * group's slots). grid: x = ceil(d/BM) * ceil(FF/BN) (x / ceil(FF/BN) = m tile),
 * y = n_groups. block 32*WARPS. dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,0,0).
 * Empty groups write zeros. */
extern "C" __global__ void __launch_bounds__(MG_WARPS * 32)
/*$wgrad*/moe_down_wgrad(const moe_down_wgrad_params p)
{
    typedef moe_down_wgrad_gemm G;
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
    constexpr int NTN = (MG_FF + MG_BN - 1) / MG_BN;
    const int g = blockIdx.y, mt = blockIdx.x / NTN, nt = blockIdx.x % NTN;
    const int kb = p.offsets ? p.offsets[g] : 0, ke = p.offsets ? p.offsets[g + 1] : p.T;
    mg_opnd<mg_t> A = {(const mg_t *)p.dz, 0, MG_D, 0, 1, mt * MG_BM, MG_D};
    mg_opnd<mg_t> B = {(const mg_t *)p.h, 0, MG_FF, 0, 1, nt * MG_BN, MG_FF};
    float acc[G::NACC];
    G::mainloop((mg_t *)mg_smem, A, B, kb, ke, acc);
    float *dw = p.dw_dn + (long long)g * MG_D * MG_FF;
    G::foreach(acc, [&](int m, int n, float v) {
        int r = mt * MG_BM + m, c = nt * MG_BN + n;
        if (r < MG_D && c < MG_FF) dw[(long long)r * MG_FF + c] = v;
    });
}
