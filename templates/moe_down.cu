/* moe_down: the expert down projection as a grouped GEMM over variable-size expert groups.
 *   fwd:   z[s] = h[s] · W_dn[g]ᵀ                       (fp32 per-slot output)
 *   dgrad: dh[s] = dz[s] · W_dn[g], with the activation gradient fused in the epilogue:
 *          GLU: da_gate = dh·f'(gate)·up, da_up = dh·f(gate); else da = dh·f'(a)
 *   wgrad: dW_dn[g] = Σ_{s in g} dz[s]ᵀ ⊗ h[s]          (one CTA per output tile, no atomics)
 * Shared experts run the same entries with identity routing (offsets/tile_off NULL, rows =
 * tokens, dz = dy). */
// moegen:entries fwd dgrad wgrad
// moegen:parts mg_vec
// moegen:grid fwd: (ceil(T*k/BM)+E routed | ceil(T/BM) identity, ceil(d/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1)
// moegen:grid dgrad: (ceil(T*k/BM)+E | ceil(T/BM), ceil(FF/BN)) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,1,0)
// moegen:grid wgrad: (ceil(d/BM)*ceil(FF/BN), groups) x 32*WARPS, smem MG_GEMM_SMEM_BYTES(..,0,0)
// moegen:grid sm_90a (16-bit, BM 128), every entry: (SMs) x 384 persistent, smem MG_WG_SMEM_BYTES(MG_WG_BN(N)), N = d | FF | FF
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "mg_wgmma.cuh"
#include "mg_vec.cuh"
#endif

typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, true> moe_down_fwd_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, true, false> moe_down_dgrad_gemm;
typedef mg_gemm<mg_t, MG_BM, MG_BN, MG_BK, MG_STAGES, MG_WARPS, false, false> moe_down_wgrad_gemm;

#if MG_WG_ARCH
/* ---- Hopper path (mg_wgmma.cuh): one problem struct per entry. */
/* fwd: A = h rows, B = W_dn rows (K = FF). */
struct moe_down_fwd_wg {
    static constexpr int BN = MG_WG_BN_PICK(MG_WG_BN_DN_FWD, MG_D), NTN = (MG_D + BN - 1) / BN;
    typedef mg_wg<mg_t, BN, true, true> G;
    static constexpr int NS_CAP = MG_WG_NS_PICK(MG_WG_NS_DN_FWD, MG_FF);   /* K = FF */
    static constexpr bool A_TMA = true, B_TMA = true, K_JAGGED = false, A_GATHER = false;
    static constexpr int EPI_BYTES = 0, SCRATCH_BYTES = 0, ASYNC_BYTES = 0;
    static constexpr bool PAIRS = true;   /* CTA pairs (MG_WG_CLUSTER 2): row GEMMs */
    const moe_down_fwd_params &p;
    MG_DEV void tma_a(const mg_wtile &w, int k0, unsigned dst, unsigned bar) const
    {
        mg_tma_rows<128>(dst, p.tm_a, k0, w.m0, 0, bar);
    }
    MG_DEV void tma_b(const mg_wtile &w, int k0, unsigned dst, unsigned bar, const mg_tsplit &sp = mg_tsplit{}) const
    {
        mg_tma_rows<BN>(dst, p.tm_b, k0, w.nt * BN, w.g, bar, sp);
    }
    MG_DEV int n_tiles() const { return mg_wg_rows_ntiles(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV void tile(int t, mg_wtile &w) const
    {
        mg_wg_rows_tile(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, w);
        w.kb = 0;
        w.ke = MG_FF;
    }
    MG_DEV int n_pairs() const { return mg_wg_rows_npairs(p.tile_off, p.n_groups, p.T, NTN); }
    MG_DEV bool pair_tile(int t, int rank, mg_wtile &w) const
    {
        const bool mc = mg_wg_rows_pair(p.offsets, p.tile_off, p.n_groups, p.T, NTN, t, rank, w);
        w.kb = 0;
        w.ke = MG_FF;
        return mc;
    }
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &) const { return {(const mg_t *)p.h, 0, 0, 0, 1, 0, 0}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.w_dn + (long long)w.g * MG_D * MG_FF, 0, 0, 0, 1, 0, 0};
    }
    MG_DEV long long row_a(const mg_wtile &w, int r) const
    {
        int s = w.m0 + r;
        return s < w.m_end ? (long long)s * MG_FF : -1;
    }
    MG_DEV long long row_b(const mg_wtile &w, int n) const
    {
        int c = w.nt * BN + n;
        return c < MG_D ? (long long)c * MG_FF : -1;
    }
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        if (w.m0 + 64 <= w.m_end && w.nt * BN + BN <= MG_D) {
            mg_t *b = (mg_t *)p.z + (long long)w.m0 * MG_D + w.nt * BN + mg_wg_pair_origin(MG_D, 1);
            mg_wg_foreach_pair_full<MG_D, 1>(acc, [&](long long o, float v0, float v1) { mg_wg_st2t(b, o, v0, v1); });
            return;
        }
        mg_wg_foreach_pair(acc, [&](int m, int n, float v0, float v1) {
            long long s = w.m0 + m;
            int c = w.nt * BN + n;
            if (s < w.m_end && c < MG_D) mg_wg_st2t((mg_t *)p.z, s * MG_D + c, v0, v1);
        });
    }
};
/* dgrad: A = dz rows (K = d), B = W_dn[g] MN-contiguous (rows k, columns FF); epilogue
 * applies the activation gradient. */
struct moe_down_dgrad_wg {
    /* 128 wide while MG_WG_EPI_TMA is on: its a buffer (64 KB) fits beside 4 stages only at
     * BN 128, and a from shared memory is worth more here than the wider tile (bench/NOTES.md
     * v5); the host's smem and 64 x 64 boxes serve either width. */
    static constexpr int BN = MG_WG_EPI_TMA ? 128 : MG_WG_BN_PICK(MG_WG_BN_DN_DGRAD, MG_FF), NTN = (MG_FF + BN - 1) / BN;
    typedef mg_wg<mg_t, BN, true, false> G;
    static constexpr int NS_CAP = MG_WG_NS_DN_DGRAD;
    static constexpr bool A_TMA = true, B_TMA = true, K_JAGGED = false, A_GATHER = false;
    /* MG_WG_EPI_TMA: the tile's a (gate columns, then with GLU the up columns) in shared
     * memory, [sub-tile][64-column block][128 rows][128 B], 128-byte swizzled like a stage:
     * 32 KB a sub-tile. At BN 256 the buffer would leave one stage: global loads there. */
    static constexpr bool EPI = MG_WG_EPI_TMA != 0 && BN == 128;
    static constexpr int EPI_BYTES = EPI ? (MG_GLU ? 2 : 1) * 128 * BN * 2 : 0;
    /* MG_WG_EPI_ASYNC: the epilogue runs on producer warps 1..3 from the consumers' dump of
     * dh (mg_wgmma.cuh epi_worker), overlapped with the next tile's main loop, where the main
     * loop (K = d) is long enough to hide it (MG_WG_EPI_ASYNC_MIN_D); 16-bit storage, 256-wide
     * cooperative tiles and whole 8-column groups of FF (16-byte accesses) only. */
    static constexpr bool ASYNC = MG_WG_EPI_ASYNC != 0 && MG_D >= MG_WG_EPI_ASYNC_MIN_D && !EPI && BN == 256 &&
                                  sizeof(mg_t) == 2 && MG_FF % 8 == 0;
    static constexpr int ASYNC_BYTES = ASYNC ? G::DUMP_BYTES : 0;
    static constexpr int SCRATCH_BYTES = !EPI && !ASYNC && MG_WG_EPI_SMEM ? MG_WG_SCRATCH_BYTES : 0;
    static constexpr bool PAIRS = !EPI;   /* CTA pairs (MG_WG_CLUSTER 2): row GEMMs, not with EPI_TMA */
    const moe_down_dgrad_params &p;
    MG_DEV void tma_epi(const mg_wtile &w, unsigned dst, unsigned bar) const
    {
#pragma unroll
        for (int cb = 0; cb < BN / 64; cb++) {
            mg_tma_rows<128>(dst + cb * (128 * 128), p.tm_c, w.nt * BN + 64 * cb, w.m0, 0, bar);
            if constexpr (MG_GLU)
                mg_tma_rows<128>(dst + 128 * BN * 2 + cb * (128 * 128), p.tm_c, MG_FF + w.nt * BN + 64 * cb, w.m0, 0, bar);
        }
    }
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
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &) const { return {(const mg_t *)p.dz, 0, 0, 0, 1, 0, 0}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.w_dn + (long long)w.g * MG_D * MG_FF, 0, MG_FF, 0, 1, w.nt * BN, MG_FF};
    }
    MG_DEV long long row_a(const mg_wtile &w, int r) const
    {
        int s = w.m0 + r;
        return s < w.m_end ? (long long)s * MG_D : -1;
    }
    MG_DEV long long row_b(const mg_wtile &, int) const { return -1; }
    /* da from dh and the pre-activations a (gate, up). a is read once, from HBM (bench-small:
     * 403 MB of a read and 403 MB of da written), so its reads go in batches
     * (MG_WG_EPI_BATCH, moe_params.h) to keep many in flight. */
    MG_DEV void epi_load(const mg_t *a, long long s, int c, float (&g)[2], float (&u)[2]) const
    {
        mg_ld2(a, s * MG_F2 + c, &g[0], &g[1]);
        if constexpr (MG_GLU) mg_ld2(a, s * MG_F2 + MG_FF + c, &u[0], &u[1]);
    }
    MG_DEV void epi_store(mg_t *da, long long s, int c, float d0, float d1, const float (&g)[2],
                          const float (&u)[2]) const
    {
        if constexpr (MG_GLU) {
            mg_st2(da, s * MG_F2 + c, d0 * mg_act_df<MG_ACT>(g[0]) * u[0], d1 * mg_act_df<MG_ACT>(g[1]) * u[1]);
            mg_st2(da, s * MG_F2 + MG_FF + c, d0 * mg_act_f<MG_ACT>(g[0]), d1 * mg_act_f<MG_ACT>(g[1]));
        } else {
            mg_st2(da, s * MG_F2 + c, d0 * mg_act_df<MG_ACT>(g[0]), d1 * mg_act_df<MG_ACT>(g[1]));
        }
    }
    /* MG_WG_EPI_ASYNC: da of part `part` (G::DUMP_W columns) of tile w from the dump of dh
     * (buf: laid out by mg_wgmma.cuh dump_at), on worker thread wt of 96 (producer warps
     * 1..3). A warp step takes RW whole rows of the part (every third step), a lane 8 columns:
     * one 16-byte read of the dump, 16-byte loads of a's gate and up, 16-byte stores of da, each
     * row's accesses one contiguous run of the part's width, as in session 9 (8 rows of 64 bytes
     * a step measured slower: down dgrad 3.60 ms against 3.20, s10 call 2). A quarter-warp's
     * dump reads (8 chunks of one row) are free of bank conflicts (dump_at's XOR). a runs
     * MG_WG_ASYNC_DEPTH steps ahead of the math: the worker has the next main loop (half of it a
     * part, with MG_WG_ASYNC_HALF) to finish, but one step's loads at a time left it
     * latency-bound (s9 call 3). */
    template <class T = mg_t> MG_DEV void epilogue_async(const mg_wtile &w, const unsigned short *buf, int wt, int part) const
    {
        if constexpr (ASYNC && sizeof(T) == 2) {   /* (a template, so fp32's instantiation discards the body) */
            constexpr int NW = G::ASYNC_WARPS, LR = G::DUMP_W / 8, RW = 32 / LR;   /* lanes a row, rows a step */
            const int warp = wt >> 5, lane = wt & 31, cl = lane % LR, sub = lane / LR;
            const int c = w.nt * BN + part * G::DUMP_W + 8 * cl;   /* this lane's first column */
            const int rows = w.m_end - w.m0 < 128 ? w.m_end - w.m0 : 128;
            if (c >= MG_FF) return;
            const T *a = (const T *)p.a + (long long)w.m0 * MG_F2 + c;
            T *da = (T *)p.da + (long long)w.m0 * MG_F2 + c;
            static_assert(128LL * MG_F2 < (1LL << 31), "a tile's offsets in a and da: 32-bit");
            auto ld = [](const T *q) {   /* 8 elements; streaming under MG_WG_STORE_CS (a is read once) */
                mg_v16 v;
                if constexpr (MG_WG_STORE_CS) {
                    const uint4 x = __ldcs((const uint4 *)q);
                    v = mg_v16{{x.x, x.y, x.z, x.w}};
                } else {
                    v = mg_v16_ld(q);
                }
                return v;
            };
            auto st = [](T *q, const mg_v16 &v) {
                if constexpr (MG_WG_STORE_CS) __stcs((uint4 *)q, uint4{v.u[0], v.u[1], v.u[2], v.u[3]});
                else mg_v16_st(q, v);
            };
            /* a of the warp's next D steps in flight: step v + NW·i in buffer i (D steps ahead of
             * the one being processed once the ring is full); step v is rows RW·v.., this lane's
             * row RW·v + sub. Rows only grow with v: the first row past the tile ends the walk. */
            constexpr int D = MG_WG_ASYNC_DEPTH;
            mg_v16 g[D], u[D];
            auto fetch = [&](int v, int i) {
                const int r = RW * v + sub;
                if (r < rows) {
                    g[i] = ld(a + r * MG_F2);
                    if constexpr (MG_GLU) u[i] = ld(a + r * MG_F2 + MG_FF);
                }
            };
#pragma unroll
            for (int i = 0; i < D; i++) fetch(warp + NW * i, i);
            for (int v0 = warp; RW * v0 + sub < rows; v0 += NW * D) {
#pragma unroll
                for (int i = 0; i < D; i++) {
                    const int v = v0 + NW * i, r = RW * v + sub;
                    if (r >= rows) break;
                    float dv[MG_VEC], gv[MG_VEC], uv[MG_VEC] = {}, o[MG_VEC], q[MG_VEC];
                    mg_v16_unpack(mg_v16_ld(buf + G::dump_at(r, 8 * cl)), dv);
                    mg_v16_unpack(g[i], gv);
                    if constexpr (MG_GLU) mg_v16_unpack(u[i], uv);
                    fetch(v + NW * D, i);   /* buffer i is free again */
#pragma unroll
                    for (int e = 0; e < MG_VEC; e++) {
                        float f, df;
                        mg_act_fdf_fast<MG_ACT>(gv[e], &f, &df);
                        o[e] = MG_GLU ? dv[e] * df * uv[e] : dv[e] * df;
                        q[e] = dv[e] * f;
                    }
                    st(da + r * MG_F2, mg_v16_pack<T>(o));
                    if constexpr (MG_GLU) st(da + r * MG_F2 + MG_FF, mg_v16_pack<T>(q));
                }
            }
        }
    }
    /* MG_WG_EPI_TMA: a from the shared-memory buffer (ea: this 64-row half's first row).
     * Element (m, n) of a sub-tile sits in 64-column block n / 64, row m, 16-byte chunk
     * ((n % 64) / 8) ^ (m & 7): the 8 rows a warp's quarter reads hit 8 different chunks, so
     * the 4-byte reads of a pair are free of bank conflicts. Reads in batches like the v4
     * global ones (the stores to da may alias them as far as the compiler knows). */
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA], const unsigned char *ea) const
    {
        mg_t *da = (mg_t *)p.da;
        constexpr int NB = MG_WG_EPI_BATCH > 0 ? MG_WG_EPI_BATCH : 1;
        float g[2 * NB][2], u[2 * NB][2] = {};   /* (u: GLU only) */
        mg_wg_foreach_pair_batched<NB>(
            acc,
            [&](int m, int n, int i) {
                const unsigned char *e = ea + (n >> 6) * (128 * 128) + m * 128 + ((((n & 63) >> 3) ^ (m & 7)) << 4) + (n & 7) * 2;
                mg_ld2((const mg_t *)e, 0, &g[i][0], &g[i][1]);
                if constexpr (MG_GLU) mg_ld2((const mg_t *)(e + 128 * BN * 2), 0, &u[i][0], &u[i][1]);
            },
            [&](int m, int n, float d0, float d1, int i) {
                long long s = w.m0 + m;
                int c = w.nt * BN + n;
                if (s < w.m_end && c < MG_FF) epi_store(da, s, c, d0, d1, g[i], u[i]);
            });
    }
    /* MG_WG_EPI_SMEM: dh through this warpgroup's scratch scr ([64][MG_WG_SCRATCH_LD] fp32),
     * 32 columns at a time; bar: the warpgroup's named barrier (128 threads). The accumulator's
     * pairs go in as float2. Each thread then takes rows 16·warp + lane/8 + 4v (v < 4), columns
     * 4·(lane % 8) .. +3 of the chunk: 8 lanes read one 128-byte scratch row (no bank
     * conflicts) and 64 contiguous bytes of a row of a (and of da), 8 bytes a lane. A chunk's a
     * loads are issued two chunks ahead (PF), so three chunks' loads are in flight. The
     * activation is mg_act_fdf_fast's (one exp, one reciprocal): the math, not memory, bound
     * this epilogue on an H100 (ncu, bench/NOTES.md). */
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA], float *scr, int bar) const
    {
        constexpr int LD = MG_WG_SCRATCH_LD, NCH = BN / 32, NV = 4;
        static_assert(NA == BN / 2, "one m64 accumulator");
        const mg_t *a = (const mg_t *)p.a;
        mg_t *da = (mg_t *)p.da;
        const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
        const int wm = mg_wg_acc_m(), wn = mg_wg_acc_n();   /* accumulator pairs */
        const int rr = warp * 16 + (lane >> 3), rc = (lane & 7) * 4;    /* read side */
        /* a of chunks ch + 1 .. ch + PF - 1 in flight (packed, 8 bytes a load), in PF buffers */
        constexpr int PF = 3;
        struct alignas(4 * sizeof(mg_t)) q4 { mg_t e[4]; };
        q4 g[PF][NV], u[PF][NV];
        /* a is read once: a streaming load (ld.global.cs) under MG_WG_STORE_CS */
        auto ld_a = [](const auto *q) {   /* (generic: the 16-bit branch is not instantiated for fp32) */
            if constexpr (sizeof(*q) == 2 && MG_WG_STORE_CS) {
                const uint2 v = __ldcs((const uint2 *)q);
                q4 r;
                r.e[0].u = (unsigned short)(v.x & 0xffffu);
                r.e[1].u = (unsigned short)(v.x >> 16);
                r.e[2].u = (unsigned short)(v.y & 0xffffu);
                r.e[3].u = (unsigned short)(v.y >> 16);
                return r;
            } else {
                return *(const q4 *)q;
            }
        };
        auto load = [&](int ch, int b) {
#pragma unroll
            for (int v = 0; v < NV; v++) {
                const long long s = w.m0 + rr + 4 * v;
                const int c = w.nt * BN + 32 * ch + rc;
                if (s < w.m_end && c < MG_FF) {
                    g[b][v] = ld_a(a + s * MG_F2 + c);
                    if constexpr (MG_GLU) u[b][v] = ld_a(a + s * MG_F2 + MG_FF + c);
                }
            }
        };
#pragma unroll
        for (int ch = 0; ch < PF - 1 && ch < NCH; ch++) load(ch, ch);
#pragma unroll
        for (int ch = 0; ch < NCH; ch++) {
#pragma unroll
            for (int jj = 0; jj < 4; jj++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = 4 * (4 * ch + jj) + 2 * hh;
                    *(float2 *)(scr + (wm + 8 * hh) * LD + 8 * jj + wn) = make_float2(acc[i], acc[i + 1]);
                }
            mg_bar_named(bar, 128);
            if (ch + PF - 1 < NCH) load(ch + PF - 1, (ch + PF - 1) % PF);
            const int b = ch % PF;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                const long long s = w.m0 + rr + 4 * v;
                const int c = w.nt * BN + 32 * ch + rc;
                const float4 d4 = *(const float4 *)(scr + (rr + 4 * v) * LD + rc);
                const float d[4] = {d4.x, d4.y, d4.z, d4.w};
                if (s < w.m_end && c < MG_FF) {
                    float gv[4], uv[4], o[4], q[4];
                    mg_ld4(g[b][v].e, gv);
                    if constexpr (MG_GLU) mg_ld4(u[b][v].e, uv);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float f, df;
                        mg_act_fdf_fast<MG_ACT>(gv[e], &f, &df);
                        if constexpr (MG_GLU) {
                            o[e] = d[e] * df * uv[e];
                            q[e] = d[e] * f;
                        } else {
                            o[e] = d[e] * df;
                        }
                    }
                    mg_st4<mg_t, MG_WG_STORE_CS>(da + s * MG_F2 + c, o);
                    if constexpr (MG_GLU) mg_st4<mg_t, MG_WG_STORE_CS>(da + s * MG_F2 + MG_FF + c, q);
                }
            }
            mg_bar_named(bar, 128);         /* the chunk's reads are done before the next's writes */
        }
    }
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        const mg_t *a = (const mg_t *)p.a;
        mg_t *da = (mg_t *)p.da;
        if constexpr (MG_WG_EPI_BATCH > 0) {
            constexpr int NB = MG_WG_EPI_BATCH > 0 ? MG_WG_EPI_BATCH : 1;   /* (both branches must compile) */
            float g[2 * NB][2], u[2 * NB][2];
            mg_wg_foreach_pair_batched<NB>(
                acc,
                [&](int m, int n, int i) {
                    long long s = w.m0 + m;
                    int c = w.nt * BN + n;
                    g[i][0] = g[i][1] = u[i][0] = u[i][1] = 0.0f;
                    if (s < w.m_end && c < MG_FF) epi_load(a, s, c, g[i], u[i]);
                },
                [&](int m, int n, float d0, float d1, int i) {
                    long long s = w.m0 + m;
                    int c = w.nt * BN + n;
                    if (s < w.m_end && c < MG_FF) epi_store(da, s, c, d0, d1, g[i], u[i]);
                });
        } else {
            mg_wg_foreach_pair(acc, [&](int m, int n, float d0, float d1) {
                long long s = w.m0 + m;
                int c = w.nt * BN + n;
                if (s < w.m_end && c < MG_FF) {
                    float g[2], u[2];
                    epi_load(a, s, c, g, u);
                    epi_store(da, s, c, d0, d1, g, u);
                }
            });
        }
    }
};
/* wgrad: dW_dn[g] (M = d, N = FF), K = the group's slots; both operands MN-contiguous. */
struct moe_down_wgrad_wg {
    static constexpr int BN = MG_WG_BN_PICK(MG_WG_BN_DN_WGRAD, MG_FF), MT = (MG_D + 127) / 128, NTN = (MG_FF + BN - 1) / BN;
    typedef mg_wg<mg_t, BN, false, false> G;
    static constexpr int NS_CAP = MG_WG_NS_DN_WGRAD;
    static constexpr bool A_TMA = true, B_TMA = true, K_JAGGED = true, A_GATHER = false;
    static constexpr int EPI_BYTES = 0, SCRATCH_BYTES = 0, ASYNC_BYTES = 0;
    static constexpr bool PAIRS = false;   /* CTA pairs (MG_WG_CLUSTER 2): row GEMMs */
    const moe_down_wgrad_params &p;
    MG_DEV void tma_a(const mg_wtile &w, int k0, unsigned dst, unsigned bar) const
    {
        mg_tma_cols<128>(dst, p.tm_a, w.m0, k0, 0, bar);
    }
    MG_DEV void tma_b(const mg_wtile &w, int k0, unsigned dst, unsigned bar) const
    {
        mg_tma_cols<BN>(dst, p.tm_b, w.nt * BN, k0, 0, bar);
    }
    MG_DEV int n_tiles() const { return p.n_groups * MT * NTN; }
    MG_DEV void tile(int t, mg_wtile &w) const { mg_wg_wgrad_tile(p.offsets, p.T, MT, NTN, t, w); }
    MG_DEV mg_opnd<mg_t> opnd_a(const mg_wtile &w) const { return {(const mg_t *)p.dz, 0, MG_D, 0, 1, w.m0, MG_D}; }
    MG_DEV mg_opnd<mg_t> opnd_b(const mg_wtile &w) const
    {
        return {(const mg_t *)p.h, 0, MG_FF, 0, 1, w.nt * BN, MG_FF};
    }
    MG_DEV long long row_a(const mg_wtile &, int) const { return -1; }
    MG_DEV long long row_b(const mg_wtile &, int) const { return -1; }
    template <int NA> MG_DEV void epilogue(const mg_wtile &w, const float (&acc)[NA]) const
    {
        float *dw = p.dw_dn + (long long)w.g * MG_D * MG_FF;
        if (w.m0 + 64 <= MG_D && w.nt * BN + BN <= MG_FF) {
            float *b = dw + (long long)w.m0 * MG_FF + w.nt * BN + mg_wg_pair_origin(MG_FF, 1);
            mg_wg_foreach_pair_full<MG_FF, 1>(acc, [&](long long o, float v0, float v1) { mg_wg_st2f(b, o, v0, v1); });
            return;
        }
        mg_wg_foreach_pair(acc, [&](int m, int n, float v0, float v1) {
            int r = w.m0 + m, c = w.nt * BN + n;
            if (r < MG_D && c < MG_FF) mg_wg_st2f(dw, (long long)r * MG_FF + c, v0, v1);
        });
    }
};
#endif

/* fwd: z[s, :] = h[s, :] · W_dn[g]ᵀ (K = FF). grid: x = ceil(T*k/BM) + E when routed
 * (blocks past tile_off[E] exit), ceil(T/BM) for identity; y = ceil(d/BN). block 32*WARPS.
 * dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,1). */
extern "C" __global__ void MG_GEMM_BOUNDS
/*$fwd*/moe_down_fwd(MG_GEMM_PARAM moe_down_fwd_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_down_fwd_wg pb{p};
            moe_down_fwd_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_down_fwd_gemm G;
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
        if (s < m_end && c < MG_D) ((mg_t *)p.z)[s * MG_D + c] = mg_from_f32<mg_t>(v);
    });
}

/* dgrad: dh[s, :] = dz[s, :] · W_dn[g] (K = d, N = FF), epilogue -> da[s, :F2].
 * grid: x as fwd, y = ceil(FF/BN). block 32*WARPS.
 * dynamic smem MG_GEMM_SMEM_BYTES(BM,BN,BK,STAGES,esz,1,0). */
extern "C" __global__ void MG_GEMM_BOUNDS_BWD
/*$dgrad*/moe_down_dgrad(MG_GEMM_PARAM moe_down_dgrad_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH_BWD
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_down_dgrad_wg pb{p};
            moe_down_dgrad_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_down_dgrad_gemm G;
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
extern "C" __global__ void MG_GEMM_BOUNDS_BWD
/*$wgrad*/moe_down_wgrad(MG_GEMM_PARAM moe_down_wgrad_params p)
{
    extern __shared__ __attribute__((aligned(16))) unsigned char mg_smem[];
#if MG_WG_ARCH_BWD
    if constexpr (MG_WG_ON) {
        if (blockDim.x == MG_WG_THREADS) {   /* launched for the Hopper path (mg_launch.c) */
            const moe_down_wgrad_wg pb{p};
            moe_down_wgrad_wg::G::run(pb, mg_smem);
            return;
        }
    }
#endif
    typedef moe_down_wgrad_gemm G;
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
