/* mg_wgmma: the Hopper (sm_90a) grouped-GEMM core of the up and down families.
 *
 * One CTA of three warpgroups per SM, persistent: warpgroup 0 produces, warpgroups 1 and 2
 * consume. Plain 2-D operand tiles (weights, contiguous slot rows) arrive by TMA
 * (cp.async.bulk.tensor, 64 x 64 boxes with the 128-byte swizzle, issued by one thread that
 * sets the stage's expected bytes on its "full" mbarrier); gathered x rows arrive by one-row
 * TMA boxes from the 32 lanes of the producer's first warp (MG_WG_TMA_GATHER; 0: by
 * cp.async); the last K block of a weight-gradient group (which must stop at the group's
 * end) arrives by 16-byte cp.async from the whole warpgroup, completing on the same barrier
 * through cp.async.mbarrier.arrive. Consumers run wgmma m64nBNk16,
 * operands straight from shared memory, one wgmma group kept in flight, the stage released
 * on its "empty" mbarrier once the group reading it is done (wait_group 1). By default
 * (MG_WG_PINGPONG) the two consumers own alternate tiles, 128 rows each, so one's epilogue
 * overlaps the other's main loop. setmaxnreg moves registers from the producer to the
 * consumers.
 * Every role walks the same tile sequence t = blockIdx.x, +gridDim.x, ... and decodes t
 * into (group, m tile, n tile) from device-side offsets, so no host sync is needed. With
 * MG_WG_CLUSTER 2 on a cluster launch of 2 (opt-in), the row GEMMs walk m-tile pairs on CTA
 * pairs instead and multicast the shared B tile (walk_tile, issue_b, release below).
 * Epilogues that store much (up fwd's a and h, down dgrad's da from a) stage their tile
 * through a consumer scratch after the stages (P::SCRATCH_BYTES), so global accesses are
 * 8-byte coalesced rows, not the accumulator's 4-byte pairs at 8 rows a warp instruction.
 *
 * Tile: BM = 128 (64 rows per consumer), BN = MG_WG_BN(N), BK = 64 (one 128-byte swizzle
 * atom of 16-bit elements). Operand layouts in shared memory, both canonical GMMA layouts:
 *   K-contiguous (A_KC/B_KC): [rows][64 k], row r at r*128 bytes, 16-byte chunk c stored
 *     at chunk c ^ (r & 7). Descriptor: SBO = 1024 (8-row groups), k16 step = +32 bytes.
 *   MN-contiguous: [MN/64 blocks][64 k][64 mn], same swizzle per 128-byte k row.
 *     Descriptor: LBO = 8192 (next 64-wide MN block), SBO = 1024 (next 8 k rows),
 *     k16 step = +2048 bytes; wgmma's transpose bit set for that operand.
 * A 64 x 64 TMA box lands in exactly these layouts (one 8 KB block: 64 rows of 128 bytes,
 * chunk c of row r at c ^ (r & 7), stage bases 1 KB aligned), so a 128-wide operand is two
 * boxes. The tensor maps (rank 3: columns, rows, groups; runtime/mg_launch.c builds them)
 * travel in the kernel's parameter struct, a __grid_constant__ parameter.
 * Operands are described per tile by the kernel's problem struct (see moe_up.cu):
 *   A_TMA / B_TMA (operand by TMA), K_JAGGED (K ranges end inside a tensor: the last partial
 *   K block goes by cp.async), A_GATHER (A is gathered x rows by TMA, by
 *   one-row boxes of tm_gather(): A's x row for tile row r is gather_row_a(w, r), -1 past
 *   the group; MN-contiguous operands by cp.async gather through opnd's gather),
 *   tma_a(w, k0, dst, bar) / tma_b(...)
 *   (issue the boxes of a plain TMA operand),
 *   n_tiles(), tile(t, w), opnd_a(w) / opnd_b(w) (mg_opnd of mg_common.cuh: base, and for
 *   MN-contiguous operands ld, gather, gdiv, mn0, MN), row_a(w, r) / row_b(w, n) for
 *   K-contiguous operands (element offset of the row from base, -1 = zero row), and
 *   epilogue(w, acc) using mg_wg_foreach_pair / mg_wg_foreach_glu.
 * Everything out of range in K is zero-filled: by TMA past a tensor's (or, for weights, a
 * group's) extent, by the masked cp.async of the jagged last block inside a tensor (wgrad
 * K ranges end at a group boundary), so rows of other groups never enter a sum. Rows or
 * columns past a tile's valid range (other groups' slots, n past N) may hold anything: they
 * only reach accumulator rows/columns that the epilogue drops.
 *
 * Only compiled for sm_90a (MG_WG_ARCH); other targets keep mg_gemm's mma.sync path. */
#ifndef MG_WGMMA_CUH
#define MG_WGMMA_CUH

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MG_WG_ARCH 1
#else
#define MG_WG_ARCH 0
#endif

/* Launch bounds of the GEMM entries: the Hopper path needs a register cap at entry for
 * setmaxnreg (384 threads, 1 CTA/SM); mma.sync keeps its own. */
#if MG_WG_ARCH
#define MG_GEMM_BOUNDS __launch_bounds__(MG_WG_THREADS, 1)
#else
#define MG_GEMM_BOUNDS __launch_bounds__(MG_WARPS * 32)
#endif
/* dgrad and wgrad entries carry the Hopper path only when compiled with MG_WG_BWD = 1
 * (runtime/mg_jit.c passes -DMG_WG_BWD from env MOEGEN_WG_BWD). Without it they keep
 * mma.sync's own bounds: under (384, 1) the mma.sync bwd kernels take 168 registers instead
 * of 118-128, i.e. one CTA per SM instead of two (v3 WG_BWD=0 bwd 7.38 ms against main's
 * ~5.9 on bench-small, H100). The host takes the Hopper path for a bwd entry only when the
 * kernel accepts MG_WG_THREADS threads (runtime/mg_launch.c). */
#if MG_WG_ARCH && MG_WG_BWD
#define MG_GEMM_BOUNDS_BWD MG_GEMM_BOUNDS
#define MG_WG_ARCH_BWD 1
#else
#define MG_GEMM_BOUNDS_BWD __launch_bounds__(MG_WARPS * 32)
#define MG_WG_ARCH_BWD 0
#endif
/* The GEMM entries' parameter: __grid_constant__ on sm_90a, so the tensor maps inside it
 * are addressed in parameter space (TMA reads them there). */
#if MG_WG_ARCH
#define MG_GEMM_PARAM const __grid_constant__
#else
#define MG_GEMM_PARAM const
#endif

/* Hopper path for this source: sm_90a, 16-bit storage, the plan's BM = 128 (the dispatch
 * scan counts tiles of tile_m = BM), rows of 16-byte multiples (TMA strides). The host
 * mirrors this rule (runtime/mg_launch.c, mg_launch_wg). */
static constexpr bool MG_WG_ON = MG_WG_ARCH && MG_DTYPE != 2 && MG_BM == 128 && MG_WG_DIMS_OK(MG_D, MG_FF);

/* One output tile of a persistent walk: group, first row (slot) and end of the group's
 * rows, n tile, and the K range [kb, ke). */
struct mg_wtile { int g, m0, m_end, mt, nt, kb, ke; };

/* Band raster inside one group: n tiles in bands of 8, m fastest within a band, so the CTAs
 * in flight share a few B (weight) tiles and a few A row tiles in L2. */
MG_DEV void mg_wg_band(int l, int Mg, int NTN, int *mt, int *nt)
{
    const int BW = MG_WG_BAND;
    int nb = l / (Mg * BW), r = l - nb * Mg * BW;
    int bw = NTN - nb * BW < BW ? NTN - nb * BW : BW;
    *mt = r / bw;
    *nt = nb * BW + r % bw;
}
/* The row and column of a consumer thread's first accumulator value in an m64nN accumulator
 * (wgmma's layout: warp w holds rows 16w .. 16w + 15, lane l row l / 4 and columns 2 (l % 4),
 * +1, then the same 8 columns on); every accumulator walk and epilogue starts from these. */
MG_DEV int mg_wg_acc_m() { return ((threadIdx.x >> 5) & 3) * 16 + ((threadIdx.x & 31) >> 2); }
MG_DEV int mg_wg_acc_n() { return (threadIdx.x & 3) * 2; }
/* The group of global m tile q: the last g with tile_off[g] <= q. */
MG_DEV int mg_wg_group_of(const int *tile_off, int G, int q)
{
    int lo = 0, hi = G - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (tile_off[mid] <= q) lo = mid; else hi = mid - 1;
    }
    return lo;
}
/* Slot-row GEMMs (fwd, dgrad): tiles of 128 slots of one group x NTN n tiles. */
MG_DEV int mg_wg_rows_ntiles(const int *tile_off, int G, int T, int NTN)
{
    return (tile_off ? tile_off[G] : (T + 127) / 128) * NTN;
}
MG_DEV void mg_wg_rows_tile(const int *offsets, const int *tile_off, int G, int T, int NTN, int t, mg_wtile &w)
{
    int g = 0, mt0 = 0, Mg, r0 = 0, r1 = T;
    if (tile_off) {
        g = mg_wg_group_of(tile_off, G, t / NTN);
        mt0 = tile_off[g];
        Mg = tile_off[g + 1] - mt0;
        r0 = offsets[g];
        r1 = offsets[g + 1];
    } else {
        Mg = (T + 127) / 128;
    }
    mg_wg_band(t - mt0 * NTN, Mg, NTN, &w.mt, &w.nt);
    w.g = g;
    w.m0 = r0 + w.mt * 128;
    w.m_end = r1;
}
/* Row GEMMs walked by CTA pairs (MG_WG_CLUSTER 2): pair tile t covers the global m tiles
 * 2·mp and 2·mp + 1 (numbered over all groups, tile_off) and one n tile, in bands of 8 n
 * tiles with n fastest; CTA rank r takes m tile 2·mp + r. Returns whether both m tiles are
 * real and in one group (then the pair shares the B tile: multicast). A rank-1 tile past the
 * last m tile is a phantom: group g0's weights, no rows (m0 = m_end), so it loads and
 * computes in step with its partner and stores nothing. */
MG_DEV int mg_wg_rows_npairs(const int *tile_off, int G, int T, int NTN)
{
    const int Q = tile_off ? tile_off[G] : (T + 127) / 128;
    return (Q + 1) / 2 * NTN;
}
MG_DEV bool mg_wg_rows_pair(const int *offsets, const int *tile_off, int G, int T, int NTN, int t, int rank, mg_wtile &w)
{
    const int Q = tile_off ? tile_off[G] : (T + 127) / 128;
    int mp, nt;
    mg_wg_band(t, (Q + 1) / 2, NTN, &mp, &nt);
    const int q0 = 2 * mp, q1 = q0 + 1;
    const int g0 = tile_off ? mg_wg_group_of(tile_off, G, q0) : 0;
    const int g1 = q1 >= Q ? -1 : tile_off ? mg_wg_group_of(tile_off, G, q1) : 0;
    const int q = rank ? q1 : q0, g = rank && g1 < 0 ? g0 : rank ? g1 : g0;
    const int mt0 = tile_off ? tile_off[g] : 0, r0 = tile_off ? offsets[g] : 0, r1 = tile_off ? offsets[g + 1] : T;
    w.g = g;
    w.nt = nt;
    w.m_end = r1;
    w.mt = q - mt0;
    w.m0 = rank && g1 < 0 ? r1 : r0 + w.mt * 128;
    return g0 == g1;
}
/* Weight-gradient GEMMs: per group MT x NTN output tiles, K = the group's slots. */
MG_DEV void mg_wg_wgrad_tile(const int *offsets, int T, int MT, int NTN, int t, mg_wtile &w)
{
    const int per = MT * NTN;
    w.g = t / per;
    mg_wg_band(t - w.g * per, MT, NTN, &w.mt, &w.nt);
    w.m0 = w.mt * 128;
    w.m_end = 0;
    w.kb = offsets ? offsets[w.g] : 0;
    w.ke = offsets ? offsets[w.g + 1] : T;
}

/* Two fp32 values rounded to 16-bit T, packed into one word (the first in the low half). */
template <class T> MG_DEV unsigned mg_pack2(float a, float b)
{
    return (unsigned)mg_from_f32<T>(a).u | ((unsigned)mg_from_f32<T>(b).u << 16);
}
/* Two adjacent 16-bit (or fp32) elements, as one 4-byte (8-byte) access. */
template <class T> MG_DEV void mg_st2(T *p, long long i, float a, float b)
{
    if constexpr (sizeof(T) == 2) {
        *(unsigned *)(p + i) = mg_pack2<T>(a, b);
    } else {
        p[i] = mg_from_f32<T>(a);
        p[i + 1] = mg_from_f32<T>(b);
    }
}
template <class T> MG_DEV void mg_ld2(const T *p, long long i, float *a, float *b)
{
    if constexpr (sizeof(T) == 2) {
        unsigned u = *(const unsigned *)(p + i);
        T x, y;
        x.u = (unsigned short)(u & 0xffffu);
        y.u = (unsigned short)(u >> 16);
        *a = mg_to_f32(x);
        *b = mg_to_f32(y);
    } else {
        *a = mg_to_f32(p[i]);
        *b = mg_to_f32(p[i + 1]);
    }
}

/* Four adjacent elements (8 bytes of 16-bit storage) from / to p, 4-element aligned. */
template <class T> MG_DEV void mg_ld4(const T *p, float (&f)[4])
{
    if constexpr (sizeof(T) == 2) {
        const uint2 u = *(const uint2 *)p;
        mg_ld2((const T *)&u.x, 0, &f[0], &f[1]);
        mg_ld2((const T *)&u.y, 0, &f[2], &f[3]);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++) f[e] = mg_to_f32(p[e]);
    }
}
/* (CS: a streaming store, st.global.cs, evict-first in L2: the Hopper epilogues' outputs are
 * written once and read by a later kernel, and MG_WG_STORE_CS keeps them from evicting the
 * operands the other CTAs still read) */
template <class T, bool CS = false> MG_DEV void mg_st4(T *p, const float (&f)[4])
{
    if constexpr (sizeof(T) == 2) {
        uint2 u;
        mg_st2((T *)&u.x, 0, f[0], f[1]);
        mg_st2((T *)&u.y, 0, f[2], f[3]);
        if constexpr (CS) __stcs((uint2 *)p, u);
        else *(uint2 *)p = u;
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++) p[e] = mg_from_f32<T>(f[e]);
    }
}

/* One fp32 output of a Hopper epilogue (the transposed dW of MG_WG_UP_WGRAD_T). */
MG_DEV void mg_wg_st1f(float *p, long long i, float a)
{
    if constexpr (MG_WG_STORE_CS) __stcs(p + i, a);
    else p[i] = a;
}
/* Four adjacent fp32 outputs (16-byte aligned) of a Hopper epilogue, streaming under MG_WG_STORE_CS. */
MG_DEV void mg_wg_st4f(float *p, float4 v)
{
    if constexpr (MG_WG_STORE_CS) __stcs((float4 *)p, v);
    else *(float4 *)p = v;
}
/* Two adjacent fp32 outputs of a Hopper epilogue (dW), streaming under MG_WG_STORE_CS. */
MG_DEV void mg_wg_st2f(float *p, long long i, float a, float b)
{
    if constexpr (MG_WG_STORE_CS) __stcs((float2 *)(p + i), make_float2(a, b));
    else mg_st2f(p, i, a, b);
}
/* Two adjacent outputs of a Hopper epilogue as storage type T (z, dxs), streaming under
 * MG_WG_STORE_CS. */
template <class T> MG_DEV void mg_wg_st2t(T *p, long long i, float a, float b)
{
    if constexpr (sizeof(T) == 4) mg_wg_st2f((float *)p, i, a, b);
    else if constexpr (MG_WG_STORE_CS) __stcs((unsigned *)(p + i), mg_pack2<T>(a, b));
    else mg_st2(p, i, a, b);
}

#if MG_WG_ARCH
/* ------------------------------------------------------------------ PTX wrappers (sm_90a) */
MG_DEV void mg_mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
MG_DEV void mg_mbar_arrive(unsigned bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}
/* Arrives (counting as one of the expected arrivals) once this thread's cp.asyncs land. */
MG_DEV void mg_mbar_arrive_cp_async(unsigned bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(bar) : "memory");
}
/* Arrives once this thread's cp.asyncs land, without counting as an expected arrival. */
MG_DEV void mg_mbar_arrive_cp_async_inc(unsigned bar)
{
    asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" :: "r"(bar) : "memory");
}
/* Arrives and raises the phase's expected transaction bytes (TMA completes them). */
MG_DEV void mg_mbar_arrive_tx(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
/* One box of a rank-2 tensor map into shared memory, completing bytes on bar (gathered x:
 * one row of 64 columns). */
MG_DEV void mg_tma2(unsigned dst, const mg_tmap *map, int c0, int c1, unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}
/* One box of a rank-3 tensor map into shared memory, completing bytes on bar. */
MG_DEV void mg_tma3(unsigned dst, const mg_tmap *map, int c0, int c1, int c2, unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n"
                 :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
/* The same box multicast to the CTAs of this cluster in mask: it lands at dst and completes
 * its bytes on bar in each of them (the same shared-memory offsets there). */
MG_DEV void mg_tma3_mc(unsigned dst, const mg_tmap *map, int c0, int c1, int c2, unsigned bar, unsigned short mask)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3, %4}], [%5], %6;\n"
                 :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(mask)
                 : "memory");
}
/* Arrive on the mbarrier at the same shared-memory offset in cluster CTA cta. Default
 * semantics (release at CTA scope): a consumer releasing a stage has no writes to publish,
 * and wgmma.wait_group already ordered its reads; .release.cluster compiled to a cluster-scope
 * MEMBAR that waited for the warp's epilogue stores (ncu: 40% of the stalls, s5 call 9). */
MG_DEV void mg_mbar_arrive_cta(unsigned bar, unsigned cta)
{
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n"
                 :: "r"(bar), "r"(cta) : "memory");
}
MG_DEV unsigned mg_cluster_rank() { unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r)); return r; }
MG_DEV unsigned mg_cluster_size() { unsigned r; asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r)); return r; }
MG_DEV unsigned mg_cluster_id() { unsigned r; asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r)); return r; }
MG_DEV unsigned mg_cluster_count() { unsigned r; asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r)); return r; }
/* All threads of all CTAs of the cluster (release what this CTA wrote, acquire the others'). */
MG_DEV void mg_cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
MG_DEV void mg_mbar_wait(unsigned bar, unsigned parity)
{
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
/* one look at the barrier, no waiting: whether the phase of that parity has completed */
MG_DEV bool mg_mbar_test(unsigned bar, unsigned parity)
{
    unsigned done;
    asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    return done != 0;
}
MG_DEV void mg_fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
MG_DEV void mg_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
MG_DEV void mg_cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
MG_DEV void mg_bar_named(unsigned id, unsigned n) { asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(n) : "memory"); }
MG_DEV void mg_bar_arrive(unsigned id, unsigned n) { asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory"); }
MG_DEV void mg_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
MG_DEV void mg_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> MG_DEV void mg_wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }
template <int R> MG_DEV void mg_setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(R)); }
template <int R> MG_DEV void mg_setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(R)); }
/* Keeps the compiler from moving accumulator accesses across wgmma issue/wait. */
template <int N> MG_DEV void mg_wg_fence_acc(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i]) :: "memory");
}
MG_DEV void mg_cp_async16_u32(unsigned dst, const void *src, bool pred)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(pred ? 16 : 0) : "memory");
}
/* Shared-memory matrix descriptor, 128-byte swizzle. */
MG_DEV unsigned long long mg_wg_desc(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3ffffu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

/* D[64 x N] (+)= A · B over one k16 step; TA/TB = 1 for an MN-contiguous operand. The
 * primary template is never executed (it lets fp32 sources instantiate the dead path). */
template <int N, class T> struct mg_wgmma_op {
    template <int TA, int TB> MG_DEV static void mma(float (&)[N / 2], unsigned long long, unsigned long long) {}
};
template <> struct mg_wgmma_op<128, mg_bf16> {
    template <int TA, int TB> MG_DEV static void mma(float (&d)[64], unsigned long long a, unsigned long long b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                     "{"
                     "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                     "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                     "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
                     "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
    }
};
template <> struct mg_wgmma_op<128, mg_f16> {
    template <int TA, int TB> MG_DEV static void mma(float (&d)[64], unsigned long long a, unsigned long long b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                     "{"
                     "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                     "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                     "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
                     "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
    }
};
template <> struct mg_wgmma_op<256, mg_bf16> {
    template <int TA, int TB> MG_DEV static void mma(float (&d)[128], unsigned long long a, unsigned long long b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
                     "{"
                     "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                     "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                     "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"
                     "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"
                     "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"
                     "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"
                     "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
                     "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
                       "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
                       "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
                       "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
                       "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
                       "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
                       "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
                       "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
                       "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                     : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
    }
};
template <> struct mg_wgmma_op<256, mg_f16> {
    template <int TA, int TB> MG_DEV static void mma(float (&d)[128], unsigned long long a, unsigned long long b)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
                     "{"
                     "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                     "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                     "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"
                     "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"
                     "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"
                     "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"
                     "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
                     "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
                       "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
                       "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
                       "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
                       "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
                       "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
                       "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
                       "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
                       "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                     : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));
    }
};

/* TMA boxes (64 x 64, 8 KB each) of one operand stage. K-contiguous: R rows from r0 at k0
 * (row-major tensor [.., K]); MN-contiguous: R columns from c0 at k rows from k0. */
/* A stage's boxes split over a CTA pair (MG_WG_CLUSTER 2): this CTA issues the boxes with
 * (i0 + i) % np == part, multicast to mask (0: no split, every box to this CTA alone). */
struct mg_tsplit { int part = 0, np = 1, i0 = 0; unsigned short mask = 0; };
MG_DEV void mg_tma3_split(unsigned dst, const mg_tmap *m, int c0, int c1, int c2, unsigned bar, const mg_tsplit &sp, int i)
{
    if ((sp.i0 + i) % sp.np != sp.part) return;
    if (sp.mask) mg_tma3_mc(dst, m, c0, c1, c2, bar, sp.mask);
    else mg_tma3(dst, m, c0, c1, c2, bar);
}
template <int R> MG_DEV void mg_tma_rows(unsigned dst, const mg_tmap &m, int k0, int r0, int g, unsigned bar,
                                         const mg_tsplit &sp = mg_tsplit{})
{
#pragma unroll
    for (int i = 0; i < R / 64; i++) mg_tma3_split(dst + i * 8192, &m, k0, r0 + 64 * i, g, bar, sp, i);
}
template <int R> MG_DEV void mg_tma_cols(unsigned dst, const mg_tmap &m, int c0, int k0, int g, unsigned bar,
                                         const mg_tsplit &sp = mg_tsplit{})
{
#pragma unroll
    for (int i = 0; i < R / 64; i++) mg_tma3_split(dst + i * 8192, &m, c0 + 64 * i, k0, g, bar, sp, i);
}

/* ------------------------------------------------------------------ the core */
template <class T, int BN, bool A_KC, bool B_KC> struct mg_wg {
    static constexpr int BM = 128, BK = 64;
    static constexpr int STAGES = MG_WG_STAGES_DEV < MG_WG_STAGES(BN) ? MG_WG_STAGES_DEV : MG_WG_STAGES(BN);
    static_assert(STAGES >= 2, "MG_WG_STAGES_DEV: at least 2 stages");
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int NACC = BN / 2;              /* fp32 accumulators per consumer thread */
    static constexpr int SMEM_BYTES = MG_WG_SMEM_BYTES(BN);
    static constexpr unsigned MN_LBO = 64 * 128, SW_SBO = 1024;
    static_assert(BN == 128 || BN == 256, "BN must be 128 or 256");
    static_assert(SMEM_BYTES >= 1024 + STAGES * STAGE_BYTES + 16 * STAGES + (BM + BN) * 8, "smem layout");
    /* A problem with an epilogue operand (P::EPI_BYTES > 0, MG_WG_EPI_TMA: down dgrad's a)
     * gets one buffer of that size after the stages, 3 more mbarriers (efull[2], eempty), and
     * as many stages as still fit in SMEM_BYTES (the host's size, unchanged): 4 at BN 128 with
     * GLU's 64 KB. */
    static constexpr int EPI_BARS = 24;
    /* A problem with an asynchronous epilogue (P::ASYNC_BYTES > 0, MG_WG_EPI_ASYNC: down dgrad)
     * gets its dump buffer (DUMP_BYTES: one part of DUMP_NH a tile, BM x DUMP_W 16-bit values)
     * after the stages, in the dynamic shared memory the host gives that kernel
     * (MG_WG_EXTRA_SMEM), and as many stages as still fit there without the row tables it does
     * not use: 4 at BN 256 with halves (32 KB), 3 with whole tiles (64 KB). */
    static constexpr int DUMP_NH = MG_WG_ASYNC_HALF ? 2 : 1, DUMP_W = BN / DUMP_NH, DUMP_BYTES = BM * DUMP_W * 2;
    /* Element (r, n) of a part: 16-byte chunks column-group major, the row XOR the chunk's low 3
     * bits: [n / 8][r ^ ((n / 8) & 7)][n % 8]. A warp's accumulator stores (8 rows of one chunk)
     * cover 128 contiguous bytes, and a quarter-warp's 16-byte reads (8 chunks of one row) land on
     * 8 different bank groups: both free of conflicts. A thread's stores take 8 distinct offsets
     * (the XOR's), constant across parts and tiles (a row-major layout with the chunk XOR the row
     * had ptxas keep 16-32 store addresses live through the main loop, and spill them). */
    MG_DEV static int dump_at(int r, int n) { return ((n >> 3) * BM + (r ^ ((n >> 3) & 7))) * 8 + (n & 7); }
    /* the dynamic shared memory the host gives problem P (down dgrad's MG_WG_EXTRA_SMEM holds
     * an async problem's dump) */
    template <class P> static constexpr int HOST_SMEM = SMEM_BYTES + (P::ASYNC_BYTES > 0 ? MG_WG_EXTRA_SMEM(1, 1) : P::SCRATCH_BYTES);
    /* the row tables (A, B), for problems whose producer may fill them */
    template <class P> static constexpr int ROWS_BYTES = P::ASYNC_BYTES > 0 ? 0 : (BM + BN) * 8;
    template <class P> static constexpr int NS_ROOM = HOST_SMEM<P> - P::SCRATCH_BYTES - 1024 - P::EPI_BYTES - P::ASYNC_BYTES -
                                                      EPI_BARS - ROWS_BYTES<P>;
    template <class P> static constexpr int NS_FIT = P::EPI_BYTES == 0 && P::ASYNC_BYTES == 0 ? STAGES
        : NS_ROOM<P> / (STAGE_BYTES + 16) < STAGES ? NS_ROOM<P> / (STAGE_BYTES + 16) : STAGES;
    /* the stages of problem P: as many as fit, at most P::NS_CAP where that is set (moe_params.h,
     * MG_WG_NS_*) */
    template <class P> static constexpr int NS = P::NS_CAP > 0 && P::NS_CAP < NS_FIT<P> ? P::NS_CAP : NS_FIT<P>;
    /* A problem with a consumer scratch (P::SCRATCH_BYTES > 0: down dgrad's dh staged for a
     * coalesced epilogue, MG_WG_EPI_SMEM) gets it after the stages; the host launches that
     * kernel with MG_WG_SMEM_BYTES + MG_WG_SCRATCH_BYTES, so the stages stay as they are. */
    /* Shared-memory addresses of one CTA (shared window; ebuf also as a generic pointer). */
    struct smem_map {
        unsigned sbase, full, empty, ebuf, efull, eempty;
        const unsigned char *ebuf_p;
        unsigned short *dump;       /* the async epilogue's buffer (P::ASYNC_BYTES > 0) */
        float *scratch;
        long long *rowsA, *rowsB;
        /* the tile walk: first, step; pairs: this CTA walks pair tiles with its cluster
         * partner (rank ^ 1), MG_WG_CLUSTER 2 on a cluster launch of 2 */
        int first, step, rank;
        bool pairs;
    };
    /* MG_WG_CLUSTER 2: row GEMMs (P::PAIRS) walk m-tile pairs on CTA pairs and multicast the
     * shared B tile, each CTA issuing half its boxes (bench/NOTES.md v7). The pair runs in
     * lockstep: the same pair tiles, the same k steps; a consumer releases a stage on both
     * CTAs' empty barriers (EMPTY_COUNT doubles), since the partner's multicast writes it. */
    template <class P> static constexpr bool CLP = MG_WG_CLUSTER == 2 && P::PAIRS;
    template <class P> MG_DEV static int walk_n(const P &pb, const smem_map &sm)
    {
        if constexpr (CLP<P>)
            if (sm.pairs) return pb.n_pairs();
        return pb.n_tiles();
    }
    /* decodes walk item t into w; true when the pair shares (multicasts) the B tile */
    template <class P> MG_DEV static bool walk_tile(const P &pb, const smem_map &sm, int t, mg_wtile &w)
    {
        if constexpr (CLP<P>)
            if (sm.pairs) return pb.pair_tile(t, sm.rank, w);
        pb.tile(t, w);
        return false;
    }
    template <class P> MG_DEV static void issue_b(const P &pb, const smem_map &sm, const mg_wtile &w, int k0,
                                                  unsigned sb, unsigned fb, bool mc)
    {
        if constexpr (CLP<P>) {
            if (mc) {
                mg_tsplit sp;
                sp.part = sm.rank;
                sp.np = 2;
                sp.mask = 3;
                pb.tma_b(w, k0, sb, fb, sp);
                return;
            }
        }
        pb.tma_b(w, k0, sb, fb);
    }
    /* (each of these compiles to the single-CTA code where P cannot pair: no cluster code, no
     * extra registers in problems that never use it) */
    template <class P> MG_DEV static void release(const smem_map &sm, unsigned bar)
    {
        mg_mbar_arrive(bar);
        if constexpr (CLP<P>)
            if (sm.pairs) mg_mbar_arrive_cta(bar, (unsigned)sm.rank ^ 1u);
    }
    template <class P> MG_DEV static int walk_first(const smem_map &sm) { return CLP<P> ? sm.first : (int)blockIdx.x; }
    template <class P> MG_DEV static int walk_step(const smem_map &sm) { return CLP<P> ? sm.step : (int)gridDim.x; }

    /* A row table entry: the row's address (0: no row), so a copy adds its k offset and
     * nothing else (ro: the row's element offset from base, -1 for none). */
    MG_DEV static long long table_entry(const T *base, long long ro)
    {
        return ro >= 0 ? (long long)(base + ro) : 0;
    }
    /* One operand's stage: rows [R] x 64 k, K-contiguous (row addresses from the table). The
     * thread's R/16 copies share their chunk kc = ptid & 7, hence their k, their k check and
     * their swizzle (rows r0 + 16 i all have r & 7 = r0 & 7): a copy is a table read, a 64-bit
     * add and the cp.async at a constant offset. The loop it replaced recomputed all of that
     * per copy, ~20 instructions a copy, and ncu found this producer setting the pace of
     * Mixtral's gathered GEMMs (s6 call 3); cut to ~11 (v10), up fwd got faster on every
     * bench shape (s7 call 1). */
    MG_DEV static void load_kc(unsigned dst, const long long *rows, const T *base, int R, int k0, int ke, int ptid)
    {
        const int kc = ptid & 7, r0 = ptid >> 3, k = k0 + kc * 8;
        const bool k_ok = k < ke;
        const long long kb = (long long)k * (long long)sizeof(T);
        const unsigned d0 = dst + r0 * 128 + ((kc ^ (r0 & 7)) << 4);
#pragma unroll
        for (int i = 0; i < R / 16; i++) {
            const long long a = rows[r0 + 16 * i];
            const bool ok = a != 0 && k_ok;
            mg_cp_async16_u32(d0 + i * 2048, ok ? (const void *)(a + kb) : (const void *)base, ok);
        }
    }
    /* load_kc from registers (up fwd's gathered rows): ra[i] = row r0 + 16 i's address, never 0 (a
     * missing row holds the operand's base, a valid address), bit i of okm = the row exists.
     * A copy is then a 64-bit add, a bit test and the cp.async (about 5 SASS instructions, none
     * waiting on another copy's, against 8 with the test and select of a 0 address in the copy,
     * bench-mixtral sm_90a). */
    template <int R>
    MG_DEV static void load_kc_regs(unsigned dst, const long long (&ra)[R / 16], unsigned okm, int k0, int ke, int ptid)
    {
        const int kc = ptid & 7, r0 = ptid >> 3, k = k0 + kc * 8;
        const unsigned km = k < ke ? okm : 0u;
        const long long kb = (long long)k * (long long)sizeof(T);
        const unsigned d0 = dst + r0 * 128 + ((kc ^ (r0 & 7)) << 4);
#pragma unroll
        for (int i = 0; i < R / 16; i++)
            mg_cp_async16_u32(d0 + i * 2048, (const void *)(ra[i] + kb), (km >> i) & 1u);
    }
    /* MN-contiguous: 64 k rows x R columns, k row -> memory row through the gather. Each
     * thread copies R/16 chunks (one column chunk mc, k rows kr0 + 128/CPR * i). The gather
     * reads (perm, a dependent global load per k row) go first, all of them, then the
     * copies: cp.async's asm is a compiler memory barrier, so interleaved they serialize into
     * R/16 load round trips per stage (up wgrad's x, then its B, v3: 8 a stage against ~512
     * tensor-core cycles of a 128 x 128 x 64 step). MG_WG_MN_BATCH 0: the v3 loop (A/B). */
    /* The memory rows of a stage's k rows, spread over lanes (MG_WG_MN_BATCH 2, LANE_ROWS: the
     * operand gathered in every stage, up wgrad's x; jagged blocks keep the loop below): a warp's
     * copies cover 16 k rows a stage (RPW = 32 / CPR rows an instruction, NCH instructions),
     * so lane L < 16 holds the row of the warp's k row wp·RPW + L % RPW + KSTEP·(L / RPW)
     * (-1 past ke) and load_mn takes each from its lane by a shuffle: one gather read a lane,
     * not NCH, and one register, so the producer (MG_WG_PROD_REGS) can read the next stage's
     * rows before it waits for that stage (up wgrad, x then its B: ncu found its producer
     * waiting on these reads, L2 at 20% busy). mn_row returns the raw gather entry: load_mn's lane
     * divides it by gdiv before the shuffles, a stage later, so the load's latency hides behind the empty wait
     * (divided here, the producer sat on it every stage: ncu of Mixtral's up wgrad, s6 call 2,
     * 29% of the producer's samples). Up wgrad's x is its A since session 6. */
    template <int R> MG_DEV static int mn_row(const mg_opnd<T> &o, int k0, int ke, int ptid)
    {
        constexpr int CPR = R / 8, RPW = 32 / CPR, KSTEP = 128 / CPR;
        const int lane = ptid & 31, k = k0 + (ptid >> 5) * RPW + lane % RPW + KSTEP * (lane / RPW);
        return lane >= 16 || k >= ke ? -1 : o.gather ? o.gather[k] : k;
    }
    template <int R, bool LANE_ROWS = false>
    MG_DEV static void load_mn(unsigned dst, const mg_opnd<T> &o, int k0, int ke, int ptid, int lrow = -1)
    {
        constexpr int CPR = R / 8, NCH = 64 * CPR / 128, KSTEP = 128 / CPR, RPW = 32 / CPR;
        static_assert(64 * CPR % 128 == 0 && 128 % CPR == 0, "load_mn: R in {128, 256}");
        static_assert(RPW * NCH == 16, "mn_row: 16 k rows a warp");
        if constexpr (LANE_ROWS) {
            /* The lane divides its own row once (not each of the NCH copies
             * that take it), a copy's source is one multiply-add from its column's address (5
             * SASS instructions a copy with the shuffle and the check, s7; 8 before), and
             * its destination a constant offset: k rows kr0 + KSTEP i (KSTEP 4 or 8) keep
             * kr & 7 = (kr0 & 7) ^ (KSTEP i & 7), so the swizzle is known per i */
            static_assert(KSTEP % 4 == 0, "load_mn lane rows: KSTEP 4 or 8");
            const int kr0 = ptid / CPR, mc = ptid - kr0 * CPR, mn = o.mn0 + mc * 8, sub = (ptid & 31) / CPR;
            const bool mn_ok = mn < o.MN;
            const int lr = lrow >= 0 && o.gather ? lrow / o.gdiv : lrow;
            /* the column's address, opaque to the compiler, which otherwise re-derives each
             * copy's address from the base and an element index (two more instructions a copy) */
            unsigned long long col = (unsigned long long)(o.base + (mn_ok ? mn : 0));
            asm("" : "+l"(col));
            const int ldb = (int)(o.ld * (long long)sizeof(T));
            const unsigned d0 = dst + (mc >> 3) * (64 * 128) + kr0 * 128, sw = ((mc & 7) ^ (kr0 & 7)) << 4;
#pragma unroll
            for (int i = 0; i < NCH; i++) {
                const int row = __shfl_sync(0xffffffffu, lr, i * RPW + sub);
                const bool ok = mn_ok && row >= 0;
                /* row -1 (past ke) reads row 0 with zero bytes: max, not a select of the
                 * address, keeps it one IMAD.WIDE with the column as its addend */
                const char *src = (const char *)(col + (unsigned long long)((long long)max(row, 0) * ldb));
                mg_cp_async16_u32(d0 + KSTEP * i * 128 + (sw ^ (((KSTEP * i) & 7) << 4)), src, ok);
            }
        } else if constexpr (MG_WG_MN_BATCH != 0) {
            const int kr0 = ptid / CPR, mc = ptid - kr0 * CPR, mn = o.mn0 + mc * 8;
            const bool mn_ok = mn < o.MN;
            int row[NCH];
#pragma unroll
            for (int i = 0; i < NCH; i++) {
                const int k = k0 + kr0 + KSTEP * i;
                row[i] = !mn_ok || k >= ke ? -1 : o.gather ? o.gather[k] / o.gdiv : k;
            }
#pragma unroll
            for (int i = 0; i < NCH; i++) {
                const int kr = kr0 + KSTEP * i;
                const T *src = row[i] >= 0 ? o.base + (long long)row[i] * o.ld + mn : o.base;
                mg_cp_async16_u32(dst + (mc >> 3) * (64 * 128) + kr * 128 + (((mc & 7) ^ (kr & 7)) << 4), src,
                                  row[i] >= 0);
            }
        } else {
#pragma unroll 4
            for (int c = ptid; c < 64 * CPR; c += 128) {
                int kr = c / CPR, mc = c - kr * CPR;
                int k = k0 + kr, mn = o.mn0 + mc * 8;
                bool ok = k < ke && mn < o.MN;
                const T *src = o.base;
                if (ok) {
                    long long row = o.gather ? (long long)(o.gather[k] / o.gdiv) : (long long)k;
                    src = o.base + row * o.ld + mn;
                }
                mg_cp_async16_u32(dst + (mc >> 3) * (64 * 128) + kr * 128 + (((mc & 7) ^ (kr & 7)) << 4), src, ok);
            }
        }
    }

    /* Gathered x rows by TMA (MG_WG_TMA_GATHER): issued by the first GW warps of the producer
     * warpgroup. TMA takes its operands from uniform registers, so one warp's 32 lanes with 32
     * different rows compile to a serial loop (ELECT a lane, R2UR its coordinates, UTMALDG,
     * repeat: ~10 instructions a copy, SASS of bench-small); each warp has its own uniform
     * datapath, so 4 warps issue 4 such loops side by side (128 one-row copies a stage, 32 a
     * warp). MG_WG_GATHER_WARPS (1, 2 or 4) picks GW for A/B. */
    static constexpr int GW = MG_WG_GATHER_WARPS;
    static_assert(GW == 1 || GW == 2 || GW == 4, "MG_WG_GATHER_WARPS: 1, 2 or 4");
    template <class P> static constexpr int ISSUERS = P::A_GATHER ? GW : 1;   /* warps */

    /* The producer warpgroup. Plain tiles: thread 0 alone waits for the stage, posts its
     * expected bytes and issues the boxes. Gathered x rows (P::A_GATHER: up fwd's A under
     * MG_WG_TMA_GATHER, tile row r = one token row): one-row boxes of 64 columns from the 32·GW threads of the first GW warps, each thread its share
     * of the stage's rows. The 128-byte swizzle of a TMA write is a function of the
     * shared-memory address (CUDA C++ Programming Guide, 10.29.3.2 "The Swizzle Modes", Table
     * 11: for SWIZZLE_128B, with offset = (smem_ptr / 128) % 8, element [y][x] of the box lands
     * at 16-byte chunk ((y + offset) % 8) ^ x), so a one-row box (y = 0) written at row r of
     * a 1024-byte-aligned stage (offset = r % 8) puts chunk x at x ^ (r & 7): where a 64-row
     * box puts row r.
     * Invariants of the gathered path (on top of those of the whole pipeline, bench/NOTES.md v3):
     *  - the full barrier expects GW arrivals, one per issuing warp, each an arrive.expect_tx
     *    carrying that warp's bytes, posted by its lane 0 before any of the warp's copies (its
     *    own in program order, its lanes' after __syncwarp). So the bytes completed never
     *    exceed the bytes posted (tx-count never goes negative), and the phase cannot complete
     *    before every warp has posted, i.e. before the stage's total is known;
     *  - lane 0 of every issuing warp waits on empty[s] in every stage, in order, so none can
     *    be more than one phase ahead (a parity wait is exact); its lanes follow it through
     *    __syncwarp (the v2 race was threads that skipped waits);
     *  - bytes = the copies issued: gathered A rows past the group's end are not copied (those
     *    tile rows only reach accumulator rows the epilogue drops; whatever bytes the stage
     *    held there are harmless), so a warp counts 128 bytes per row of its share that exists,
     *    the same in every stage of the tile;
     *  - the jagged block (cp.async, every producer thread) ends with GW counted arrivals,
     *    one per issuing warp, after every thread has added its cp.async arrival;
     *  - A's gather indices are read once per tile. */
    template <class P> MG_DEV static void producer(const P &pb, const smem_map &sm)
    {
        const unsigned sbase = sm.sbase, full = sm.full, empty = sm.empty;
        long long *rowsA = sm.rowsA, *rowsB = sm.rowsB;
        constexpr int STAGES = NS<P>;
        constexpr bool ALL_TMA = P::A_TMA && P::B_TMA;
        constexpr bool GATHER = P::A_GATHER;
        static_assert(!P::A_GATHER || (P::A_TMA && A_KC), "gathered A: K-contiguous token rows by TMA");
        constexpr bool TABLE_A = A_KC && !P::A_TMA, TABLE_B = B_KC && !P::B_TMA;
        constexpr unsigned TX = (P::A_TMA ? A_BYTES : 0) + (P::B_TMA ? B_BYTES : 0);
        constexpr int NI = ISSUERS<P> * 32;           /* issuing threads */
        constexpr int GA = P::A_GATHER ? BM / NI : 1;   /* gathered A rows per issuing thread */
        const int ptid = threadIdx.x;       /* warpgroup 0 */
        if constexpr (P::EPI_BYTES > 0) {
            /* warp 1 loads the epilogue operand; the others of warps 1..3 have nothing to do
             * (no row tables, no jagged block, no gathering: no named barrier 1 here) */
            static_assert(!TABLE_A && !TABLE_B && !P::K_JAGGED && !GATHER, "epilogue operand: plain TMA kernels only");
            if (ptid >= 32) {
                if (ptid == 32) epi_producer(pb, sm);
                return;
            }
        }
        if constexpr (P::ASYNC_BYTES > 0) {
            /* warps 1..3 run the epilogue from the consumers' dump; warp 0 issues the TMA boxes
             * (thread 0; no row tables, no jagged block, no named barrier 1 here) */
            static_assert(ALL_TMA && !TABLE_A && !TABLE_B && !P::K_JAGGED && !GATHER, "async epilogue: plain TMA kernels only");
            if (ptid >= 32) {
                epi_worker(pb, sm, ptid - 32);
                return;
            }
        }
        static_assert(!CLP<P> || P::EPI_BYTES == 0, "CTA pairs: no epilogue operand buffer");
        const int n_tiles = walk_n(pb, sm);
        int s = 0;
        unsigned ph = 0;
        /* This thread's A row addresses (TABLE_A: up fwd's gathered x rows), read from the table
         * once a tile: the same 8 rows in every stage, where a per-stage table read (LDS) sat
         * between each copy and the next (ptxas keeps an LDS after an LDGSTS that may write the
         * same shared memory), 8 exposed LDS latencies a stage. On an H100 (ncu, Mixtral, s8
         * call 1) up fwd 5.87 -> 5.67 ms. */
        long long ra[TABLE_A ? BM / 16 : 1];
        unsigned okm = 0;
        for (int t = walk_first<P>(sm); t < n_tiles; t += walk_step<P>(sm)) {
            mg_wtile w;
            const bool mc = walk_tile(pb, sm, t, w);
            /* (the operand descriptors are built where used, not kept across the tile: the
             * producer has 56 registers) */
            if constexpr (TABLE_A || TABLE_B) {
                mg_bar_named(1, 128);       /* everyone issued the last tile's copies */
                if constexpr (TABLE_A)
                    for (int r = ptid; r < BM; r += 128) rowsA[r] = table_entry(pb.opnd_a(w).base, pb.row_a(w, r));
                if constexpr (TABLE_B)
                    for (int r = ptid; r < BN; r += 128) rowsB[r] = table_entry(pb.opnd_b(w).base, pb.row_b(w, r));
                mg_bar_named(1, 128);
                if constexpr (TABLE_A) {
                    okm = 0;
#pragma unroll
                    for (int i = 0; i < BM / 16; i++) {
                        const long long e = rowsA[(ptid >> 3) + 16 * i];
                        okm |= (e != 0 ? 1u : 0u) << i;
                        ra[i] = e != 0 ? e : (long long)pb.opnd_a(w).base;
                    }
                }
            }
            /* This warp's bytes a stage (lane 0 posts them). Gathered A: this thread's x rows
             * (tile rows ptid + NI·i, -1 past the group), the same in every stage of the tile. */
            int grow[GA];
            unsigned tx = GATHER ? (ptid < 32 ? TX - A_BYTES : 0) : TX;
            if constexpr (P::A_GATHER) {
                if (ptid < NI) {
                    unsigned n = 0;
#pragma unroll
                    for (int i = 0; i < GA; i++) {
                        grow[i] = pb.gather_row_a(w, ptid + NI * i);
                        n += __popc(__ballot_sync(0xffffffffu, grow[i] >= 0));
                    }
                    tx += n * 128u;
                }
            }
            const int nk = w.ke > w.kb ? (w.ke - w.kb + BK - 1) / BK : 0;
            /* A by cp.async in every stage (up wgrad's gathered x): this lane's k row of the
             * next stage, read one stage ahead (mn_row) */
            constexpr bool A_MN_EVERY = !P::A_TMA && !A_KC;
            int arow = A_MN_EVERY && MG_WG_MN_BATCH == 2 && nk > 0 ? mn_row<BM>(pb.opnd_a(w), w.kb, w.ke, ptid) : -1;
            for (int kt = 0; kt < nk; kt++) {
                const unsigned sa = sbase + s * STAGE_BYTES, sb = sa + A_BYTES, fb = full + 8 * s;
                const int k0 = w.kb + kt * BK;
                /* jagged last block: the TMA operands go by masked cp.async too */
                const bool jag = P::K_JAGGED && k0 + BK > w.ke;
                if (ALL_TMA && !jag) {
                    /* thread 0 (the first GW warps when gathering): expected bytes, then the
                     * boxes; the others skip the stage */
                    if (GATHER ? ptid < NI : ptid == 0) {
                        if ((ptid & 31) == 0) {
                            mg_mbar_wait(empty + 8 * s, ph ^ 1);
                            if (tx) mg_mbar_arrive_tx(fb, tx);
                            else mg_mbar_arrive(fb);   /* a warp whose A rows all lie past the group */
                            if (ptid == 0) {
                                if constexpr (!P::A_GATHER) pb.tma_a(w, k0, sa, fb);
                                issue_b(pb, sm, w, k0, sb, fb, mc);
                            }
                        }
                        if constexpr (GATHER) {
                            __syncwarp();   /* lane 0 waited and posted the warp's bytes */
                            const mg_tmap *xm = &pb.tm_gather();
#pragma unroll
                            for (int i = 0; i < GA; i++)
                                if (grow[i] >= 0) mg_tma2(sa + (ptid + NI * i) * 128, xm, k0, grow[i], fb);
                        }
                    }
                } else {
                    if constexpr (ALL_TMA) {
                        /* Jagged block, all other stages by TMA: only thread 0 (and the
                         * gathering warps' lane 0) has waited on the empty barriers so far.
                         * The others skipped whole rounds and may
                         * be any number of phases ahead, where a parity wait cannot tell
                         * phase r-1 from r-3: it returned at once and their cp.asyncs
                         * overwrote a stage still being read (the v2 dw_dn race). Thread 0
                         * waits, in order, then releases them through the named barrier. */
                        if (ptid == 0) mg_mbar_wait(empty + 8 * s, ph ^ 1);
                        mg_bar_named(1, 128);
                    } else {
                        mg_mbar_wait(empty + 8 * s, ph ^ 1);
                    }
                    if (ptid == 0 && !ALL_TMA) {
                        if (TX && !jag) {
                            mg_mbar_arrive_tx(fb, TX);
                            if constexpr (P::A_TMA) pb.tma_a(w, k0, sa, fb);
                            if constexpr (P::B_TMA) issue_b(pb, sm, w, k0, sb, fb, mc);
                        } else {
                            mg_mbar_arrive(fb);
                        }
                    }
                    const mg_opnd<T> oa = pb.opnd_a(w), ob = pb.opnd_b(w);
                    if (!P::A_TMA || jag) {
                        if constexpr (A_KC) {
                            if constexpr (TABLE_A) load_kc_regs<BM>(sa, ra, okm, k0, w.ke, ptid);
                            else load_kc(sa, rowsA, oa.base, BM, k0, w.ke, ptid);
                        }
                        else if constexpr (A_MN_EVERY && MG_WG_MN_BATCH == 2) {
                            load_mn<BM, true>(sa, oa, k0, w.ke, ptid, arow);
                            if (kt + 1 < nk) arow = mn_row<BM>(oa, k0 + BK, w.ke, ptid);
                        } else load_mn<BM>(sa, oa, k0, w.ke, ptid);
                    }
                    if (!P::B_TMA || jag) {
                        if constexpr (B_KC) load_kc(sb, rowsB, ob.base, BN, k0, w.ke, ptid);
                        else load_mn<BN>(sb, ob, k0, w.ke, ptid);
                    }
                    if constexpr (ALL_TMA) {
                        /* count of 1 (GW when gathering): every thread's arrive is added to the
                         * phase first, then the counted arrivals (after all added theirs) */
                        mg_mbar_arrive_cp_async_inc(fb);
                        mg_bar_named(1, 128);
                        if ((ptid & 31) == 0 && ptid < 32 * ISSUERS<P>) mg_mbar_arrive(fb);
                    } else {
                        mg_mbar_arrive_cp_async(fb);
                    }
                }
                if (++s == STAGES) { s = 0; ph ^= 1; }
            }
        }
        mg_cp_async_wait_all();
    }

    /* Consumers. Cooperative (MG_WG_PINGPONG 0): both warpgroups work on every tile, 64
     * rows each, and both run the epilogue at the same time, so the tensor cores idle during
     * it. Ping-pong (1): tile j of the CTA's walk belongs to consumer j % 2, which computes
     * all 128 rows (two m64 wgmmas per k16, 2 x NACC accumulators); while one runs its
     * epilogue the other runs its main loop. The producer fills stages in tile order either
     * way; a consumer steps its stage index and phase over the other's tiles. */
    static constexpr bool PP = MG_WG_PINGPONG != 0 && BN == 128;   /* 2 x 128 accumulators at BN 256: too many */
    static constexpr int MH = PP ? 2 : 1;            /* m64 halves per consumer */
    static constexpr unsigned EMPTY_COUNT = PP ? 4 : 8;   /* one arrive per owning warp */

    /* The epilogue operand (P::EPI_BYTES > 0: down dgrad's a, MG_WG_EPI_TMA): one buffer,
     * loaded for tile j of the CTA's walk by thread 32 (producer warp 1) as soon as tile
     * j-1's epilogue has released it, so it arrives while tile j's main loop runs (with
     * ping-pong, tile j-1's epilogue overlaps tile j's main loop: the load waits for it, then
     * has the rest of that main loop to land). Barriers, and why each parity wait is exact:
     *  - efull[j & 1] (count 1 + the bytes) completes when tile j's load lands. Tile j's
     *    consumer (both consumers without ping-pong) waits on it with parity (j >> 1) & 1.
     *    Tiles j and j+2 share it; the load of j+2 needs tile j+1's release, which needs tile
     *    j+1's load, which needs tile j's release, after tile j's wait: efull[j & 1] is never a
     *    phase ahead of that wait. It is never two behind either: its previous use (j-2) was
     *    waited for by the same consumer(s) before tile j. (One barrier for all tiles would
     *    not do: with ping-pong a consumer could reach tile j's wait before tile j-1's load
     *    landed, a phase behind, and pass on the parity.)
     *  - eempty (EMPTY_COUNT: one arrive per warp that read the buffer) completes once per
     *    tile, in tile order (tile j's release needs its load, which needs j-1's release).
     *    The loader waits on it in every tile, for tile j-1's release (parity (j & 1) ^ 1; the
     *    first passes on the fresh barrier), so it is at most one phase ahead of it.
     * The epilogue reads the buffer with generic loads after the efull wait (TMA's writes are
     * visible once the phase completes); each reading warp arrives on eempty after __syncwarp,
     * so the next load (async proxy) is issued after all of the tile's reads. */
    template <class P> MG_DEV static void epi_producer(const P &pb, const smem_map &sm)
    {
        const int n_tiles = pb.n_tiles();
        int j = 0;
        for (int t = blockIdx.x; t < n_tiles; t += gridDim.x, j++) {
            mg_wtile w;
            pb.tile(t, w);
            const unsigned fb = sm.efull + 8 * (j & 1);
            mg_mbar_wait(sm.eempty, (unsigned)(j & 1) ^ 1u);
            mg_mbar_arrive_tx(fb, P::EPI_BYTES);
            pb.tma_epi(w, sm.ebuf, fb);
        }
    }

    /* The asynchronous epilogue (P::ASYNC_BYTES > 0, MG_WG_EPI_ASYNC). Cooperative consumers
     * spend the epilogue with the tensor cores idle; where it is long (down dgrad reads a and
     * writes da, 256 KB a 128 x 256 tile, while every CTA does the same at the same time) they
     * instead dump the accumulators into one shared buffer as 16-bit values (DUMP_BYTES, a few
     * hundred cycles) and start the next tile, and producer warps 1..3, idle in a TMA-only
     * kernel, run the problem's epilogue_async from the buffer during that tile's main loop.
     * Rounding the accumulators to the 16-bit type before the epilogue's math is the one
     * numerical change (the unfused peers round the same GEMM output there too).
     * With DUMP_NH 2 (MG_WG_ASYNC_HALF) a tile goes through the buffer in two parts of 128
     * columns, so that the buffer leaves room for a fourth stage: part 0 at the tile's end,
     * part 1 packed in registers until the workers have read part 0, then stored from within
     * the next tile's main loop (its wgmma groups run meanwhile). Barriers (cooperative only,
     * so every consumer thread dumps every part of every tile, in order; every thread arrives
     * for its own accesses, a release / acquire pair per thread), with q counting parts:
     *  - efull (count 256: each consumer thread once its values are in) completes once per
     *    part; the workers wait for part q with parity q & 1. It cannot run a phase ahead of
     *    them: part q+1 waits for their release of part q.
     *  - eempty (count 96: each worker thread once its reads are done) completes once per part;
     *    part q's dump waits with parity (q & 1) ^ 1 (part q-1 released; the first passes on
     *    the fresh barrier), and it cannot run ahead of that wait either. */
    static constexpr int ASYNC_WARPS = 3;
    template <class P> MG_DEV static void epi_worker(const P &pb, const smem_map &sm, int wt)
    {
        const int n_tiles = walk_n(pb, sm);
        unsigned q = 0;
        for (int t = walk_first<P>(sm); t < n_tiles; t += walk_step<P>(sm)) {
            mg_wtile w;
            walk_tile(pb, sm, t, w);   /* (a pair's phantom tile has no rows: nothing to write) */
#pragma unroll 1
            for (int part = 0; part < DUMP_NH; part++, q++) {
                mg_mbar_wait(sm.efull, q & 1u);
                pb.epilogue_async(w, (const unsigned short *)sm.dump, wt, part);
                mg_mbar_arrive(sm.eempty);
            }
        }
    }
    /* Columns 8j..8j+7 of each of consumer c's 64 rows (h: rows +8) in a part of the dump: the
     * thread's pair of them, packed (v), at row 64c + its accumulator row. */
    MG_DEV static void dump_st(unsigned short *buf, int c, int j, int h, unsigned v)
    {
        *(unsigned *)(buf + dump_at(64 * c + mg_wg_acc_m() + 8 * h, 8 * j + mg_wg_acc_n())) = v;
    }
    /* 8-column groups of the accumulator a part of the dump holds */
    static constexpr int DUMP_J = DUMP_W / 8;
    /* the thread's pair in column group j (rows +8h) of part `part`, rounded to T and packed */
    MG_DEV static unsigned dump_pair(const float (&acc)[NACC], int part, int j, int h)
    {
        const int i = 4 * (part * DUMP_J + j) + 2 * h;
        return mg_pack2<T>(acc[i], acc[i + 1]);
    }
    /* part `part` of consumer c's accumulator, rounded to T, into the dump */
    MG_DEV static void dump(unsigned short *buf, const float (&acc)[NACC], int c, int part)
    {
#pragma unroll
        for (int j = 0; j < DUMP_J; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) dump_st(buf, c, j, h, dump_pair(acc, part, j, h));
    }
    /* The async consumers' pending last part (DUMP_NH 2): packed at the tile's end, stored
     * once the workers have read the part before it (q: parts stored so far). */
    struct dump_pend {
        unsigned v[DUMP_NH > 1 ? 2 * DUMP_J : 1];
        bool on;
        MG_DEV void pack(const float (&acc)[NACC])
        {
#pragma unroll
            for (int j = 0; j < DUMP_J; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) v[2 * j + h] = dump_pair(acc, DUMP_NH - 1, j, h);
            on = true;
        }
        MG_DEV void store(const smem_map &sm, int c, unsigned &q)
        {
            mg_mbar_wait(sm.eempty, (q & 1u) ^ 1u);
#pragma unroll
            for (int j = 0; j < DUMP_J; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) dump_st(sm.dump, c, j, h, v[2 * j + h]);
            mg_mbar_arrive(sm.efull);
            q++;
            on = false;
        }
    };

    template <class P> MG_DEV static void consumer(const P &pb, const smem_map &sm)
    {
        const unsigned sbase = sm.sbase, full = sm.full, empty = sm.empty;
        constexpr int STAGES = NS<P>;
        constexpr bool ALL_TMA = P::A_TMA && P::B_TMA;
        const int c = threadIdx.x / 128 - 1, lane = threadIdx.x & 31;
        const int n_tiles = walk_n(pb, sm);
        int s = 0, j = 0;
        unsigned ph = 0;
        constexpr bool SPLIT = P::ASYNC_BYTES > 0 && DUMP_NH > 1;
        unsigned q = 0;      /* async: dump parts stored */
        dump_pend pend;
        pend.on = false;
        for (int t = walk_first<P>(sm); t < n_tiles; t += walk_step<P>(sm), j++) {
            mg_wtile w;
            walk_tile(pb, sm, t, w);
            const int nk = w.ke > w.kb ? (w.ke - w.kb + BK - 1) / BK : 0;
            if (PP && (j & 1) != c) {       /* the other consumer's tile: skip its stages */
                s += nk;
                ph ^= (unsigned)(s / STAGES) & 1u;
                s %= STAGES;
                continue;
            }
            /* Ping-pong turns (named barriers 2, 3: consumer c waits on 2 + c). A consumer
             * starts tile j's main loop only after the other one has issued all of tile
             * j-1's: then every earlier round of each stage has been waited for, so the
             * full barrier is at most one phase behind and the parity wait is exact (without
             * the turns a consumer that skipped the other's tile could meet a barrier two
             * phases behind and pass). */
            if (PP && j > 0) mg_bar_named(2 + c, 256);
            float acc[MH][NACC];
#pragma unroll
            for (int h = 0; h < MH; h++) {
#pragma unroll
                for (int i = 0; i < NACC; i++) acc[h][i] = 0.0f;
                mg_wg_fence_acc(acc[h]);
            }
            int prev = -1;
            for (int kt = 0; kt < nk; kt++) {
                mg_mbar_wait(full + 8 * s, ph);
                /* generic-proxy (cp.async) writes in this stage: order them before the
                 * wgmma reads (async proxy); stages filled by TMA alone need no fence */
                if (!ALL_TMA || (P::K_JAGGED && w.kb + kt * BK + BK > w.ke)) mg_fence_proxy_async();
                const unsigned st = sbase + s * STAGE_BYTES, sb = st + A_BYTES;
                mg_wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                    unsigned long long db = B_KC ? mg_wg_desc(sb + kk * 32, 16, SW_SBO)
                                                 : mg_wg_desc(sb + kk * 2048, MN_LBO, SW_SBO);
#pragma unroll
                    for (int h = 0; h < MH; h++) {
                        /* rows 64h.. of the A stage: +8 KB in both layouts (K-contiguous: 64
                         * rows of 128 B; MN-contiguous: the second 64-wide MN block) */
                        const unsigned sa = st + (PP ? h : c) * (64 * 128);
                        unsigned long long da = A_KC ? mg_wg_desc(sa + kk * 32, 16, SW_SBO)
                                                     : mg_wg_desc(sa + kk * 2048, MN_LBO, SW_SBO);
                        mg_wgmma_op<BN, T>::template mma<A_KC ? 0 : 1, B_KC ? 0 : 1>(acc[h], da, db);
                    }
                }
                mg_wgmma_commit();
                mg_wgmma_wait<1>();         /* the previous k step's group is done ... */
#pragma unroll
                for (int h = 0; h < MH; h++) mg_wg_fence_acc(acc[h]);
                if (prev >= 0 && lane == 0) release<P>(sm, empty + 8 * prev);   /* ... so its stage is free */
                prev = s;
                if (++s == STAGES) { s = 0; ph ^= 1; }
                if constexpr (SPLIT) {
                    /* the previous tile's last part, once the workers have read the part
                     * before it (lane 0's look decides for the warp: the wgmma ops need the
                     * warp together) */
                    if (pend.on && __shfl_sync(0xffffffffu, (unsigned)mg_mbar_test(sm.eempty, (q & 1u) ^ 1u), 0))
                        pend.store(sm, c, q);
                }
            }
            if (PP && t + walk_step<P>(sm) < n_tiles) mg_bar_arrive(2 + (c ^ 1), 256);   /* its turn */
            mg_wgmma_wait<0>();
#pragma unroll
            for (int h = 0; h < MH; h++) mg_wg_fence_acc(acc[h]);
            if (prev >= 0 && lane == 0) release<P>(sm, empty + 8 * prev);
            if constexpr (P::ASYNC_BYTES > 0) {
                if constexpr (SPLIT)
                    if (pend.on) pend.store(sm, c, q);              /* a main loop too short to have stored it */
                mg_mbar_wait(sm.eempty, (q & 1u) ^ 1u);            /* the workers have read the part before */
                dump(sm.dump, acc[0], c, 0);
                mg_mbar_arrive(sm.efull);
                q++;
                if constexpr (SPLIT) pend.pack(acc[0]);
            } else {
                if constexpr (P::EPI_BYTES > 0) mg_mbar_wait(sm.efull + 8 * (j & 1), (unsigned)(j >> 1) & 1u);
                /* the epilogue sees a 64-row tile starting at this half's first row (and the
                 * epilogue operand's rows from that row on: 128 bytes a row in every block) */
#pragma unroll
                for (int h = 0; h < MH; h++) {
                    mg_wtile wh = w;
                    wh.m0 += 64 * (PP ? h : c);
                    if constexpr (P::EPI_BYTES > 0) pb.epilogue(wh, acc[h], sm.ebuf_p + 64 * (PP ? h : c) * 128);
                    else if constexpr (P::SCRATCH_BYTES > 0) pb.epilogue(wh, acc[h], sm.scratch + c * (P::SCRATCH_BYTES / 8), 4 + c);
                    else pb.epilogue(wh, acc[h]);
                }
                if constexpr (P::EPI_BYTES > 0) {
                    __syncwarp();               /* the warp's reads of the buffer are done */
                    if (lane == 0) mg_mbar_arrive(sm.eempty);
                }
            }
        }
        if constexpr (SPLIT)
            if (pend.on) pend.store(sm, c, q);   /* the last tile's last part */
    }

    /* The whole kernel body. smem: MG_WG_SMEM_BYTES(BN) bytes of dynamic shared memory. */
    template <class P> MG_DEV static void run(const P &pb, unsigned char *smem)
    {
        /* [stages][epilogue buffer or async dump][scratch][full][empty][efull[2], eempty][row tables A, B] */
        constexpr int STAGES = NS<P>, EB = P::EPI_BYTES + P::ASYNC_BYTES, EBARS = EB > 0 ? EPI_BARS : 0, SB = P::SCRATCH_BYTES;
        static_assert(STAGES >= 2 && HOST_SMEM<P> >= 1024 + STAGES * (STAGE_BYTES + 16) + EB + SB + EBARS + ROWS_BYTES<P>,
                      "smem layout");
        static_assert(EB % 1024 == 0 && SB % 1024 == 0, "epilogue buffer, scratch: whole 1 KB blocks");
        static_assert(EB == 0 || SB == 0, "an epilogue buffer or a scratch, not both");
        static_assert(P::ASYNC_BYTES == 0 || (P::EPI_BYTES == 0 && P::ASYNC_BYTES == DUMP_BYTES && !PP),
                      "async epilogue: cooperative consumers, no epilogue operand");
        const unsigned raw = mg_smem_u32(smem), sbase = (raw + 1023u) & ~1023u;
        smem_map sm;
        sm.sbase = sbase;
        sm.ebuf = sbase + STAGES * STAGE_BYTES;
        sm.ebuf_p = smem + (sbase - raw) + STAGES * STAGE_BYTES;
        sm.dump = (unsigned short *)(smem + (sbase - raw) + STAGES * STAGE_BYTES);
        sm.scratch = (float *)(smem + (sbase - raw) + STAGES * STAGE_BYTES + EB);
        sm.full = sm.ebuf + EB + SB;
        sm.empty = sm.full + 8 * STAGES;
        sm.efull = sm.empty + 8 * STAGES;
        sm.eempty = sm.efull + 16;
        sm.rowsA = (long long *)(smem + (sbase - raw) + STAGES * (STAGE_BYTES + 16) + EB + SB + EBARS);
        sm.rowsB = sm.rowsA + BM;
        const unsigned full = sm.full, empty = sm.empty;
        sm.first = blockIdx.x;
        sm.step = gridDim.x;
        sm.rank = 0;
        sm.pairs = false;
        if constexpr (CLP<P>) {
            if (mg_cluster_size() == 2) {   /* launched in clusters of 2 (runtime/mg_launch.c) */
                sm.pairs = true;
                sm.rank = (int)mg_cluster_rank();
                sm.first = (int)mg_cluster_id();
                sm.step = (int)mg_cluster_count();
            }
        }
        /* Producer arrivals a stage's full barrier expects: one (the TMA thread) when both
         * operands come by TMA, one per issuing warp (GW) when one of them is gathered x rows
         * (a jagged cp.async block then adds counted-in arrivals), else one per producer
         * thread (cp.async.mbarrier.arrive.noinc) plus the TMA thread's. */
        constexpr unsigned FULL_COUNT = P::A_TMA && P::B_TMA ? ISSUERS<P> : 129;
        if (threadIdx.x == 0) {
            for (int i = 0; i < STAGES; i++) {
                mg_mbar_init(full + 8 * i, FULL_COUNT);
                mg_mbar_init(empty + 8 * i, CLP<P> && sm.pairs ? 2 * EMPTY_COUNT : EMPTY_COUNT);
            }
            if constexpr (P::ASYNC_BYTES > 0) {
                mg_mbar_init(sm.efull, 256);                 /* the consumer threads' dumps */
                mg_mbar_init(sm.eempty, 32 * ASYNC_WARPS);   /* the worker threads' reads */
            } else if constexpr (EB > 0) {
                mg_mbar_init(sm.efull, 1);
                mg_mbar_init(sm.efull + 8, 1);
                mg_mbar_init(sm.eempty, EMPTY_COUNT);
            }
            mg_fence_mbar_init();
        }
        /* a pair's barriers are initialized before either CTA writes into the other */
        if (CLP<P> && sm.pairs) mg_cluster_sync();
        else __syncthreads();
        /* Registers after setmaxnreg: a producer that copies by cp.async (up fwd's rows, up
         * wgrad's x) gets MG_WG_PROD_REGS, one that only issues TMA boxes MG_WG_PROD_REGS_TMA;
         * the consumers get the rest (moe_params.h). setmaxnreg.inc waits until the CTA has
         * the registers: they come only from what the producer released of the 168 a thread
         * of this 384-thread CTA was launched with (ptxas' cap under MG_GEMM_BOUNDS), so asking
         * for more hangs (80 / 216 did, s8 call 1). */
        constexpr int PR = P::ASYNC_BYTES > 0 ? MG_WG_PROD_REGS_ASYNC : P::A_TMA && P::B_TMA ? MG_WG_PROD_REGS_TMA : MG_WG_PROD_REGS;
        constexpr int CR = P::ASYNC_BYTES > 0 ? MG_WG_CONS_REGS_ASYNC : P::A_TMA && P::B_TMA ? MG_WG_CONS_REGS_TMA : MG_WG_CONS_REGS;
        static_assert(PR % 8 == 0 && CR % 8 == 0 && PR >= 24 && CR >= 168 && CR <= 256 &&
                          128 * PR + 256 * CR <= MG_WG_THREADS * 168,
                      "MG_WG_PROD_REGS[_TMA|_ASYNC] / MG_WG_CONS_REGS[_TMA|_ASYNC]: multiples of 8, 128 * PROD + 256 * CONS <= 384 * 168");
        if (threadIdx.x < 128) {
            mg_setmaxnreg_dec<PR>();
            producer(pb, sm);
        } else {
            mg_setmaxnreg_inc<CR>();
            consumer(pb, sm);
        }
        /* neither CTA of a pair exits while the other may still multicast into it or arrive
         * on its barriers */
        if (CLP<P> && sm.pairs) mg_cluster_sync();
    }
};

/* Accumulator walk of a consumer thread over one m64nN accumulator: f(m, n, v0, v1) for the
 * adjacent columns n, n+1 of row m in [0, 64) (the consumer passes the epilogue a tile whose
 * m0 is that half's first row). */
template <int NACC, class F> MG_DEV void mg_wg_foreach_pair(const float (&acc)[NACC], F f)
{
    const int m = mg_wg_acc_m(), n = mg_wg_acc_n();
#pragma unroll
    for (int j = 0; j < NACC / 4; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) f(m + 8 * h, n + 8 * j, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
}
/* mg_wg_foreach_pair for a half-tile that lies wholly in range, stored at element offset
 * m·RS + n·CS (both compile-time): f(o, v0, v1) with o the offset of the pair's first element
 * from the thread's own first element, mg_wg_pair_origin(RS, CS) = mb·RS + nb·CS. The offsets
 * are constants, so a store is one STG at an immediate offset from one base register; the
 * checked walk spent ~10 instructions on bounds, branches and a 64-bit address a pair (ncu of
 * Mixtral's up wgrad, s8 call 6: its epilogue 16% of the consumers' time, the tensor pipe idle
 * meanwhile). Measured level on Mixtral (s8 call 7: up wgrad 6.10 ms against 6.07-6.09), so the
 * stores' drain, not their instructions, holds that epilogue; kept as the leaner path. */
MG_DEV long long mg_wg_pair_origin(long long RS, long long CS)
{
    return (long long)mg_wg_acc_m() * RS + (long long)mg_wg_acc_n() * CS;
}
template <long long RS, long long CS, int NACC, class F> MG_DEV void mg_wg_foreach_pair_full(const float (&acc)[NACC], F f)
{
#pragma unroll
    for (int j = 0; j < NACC / 4; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) f(8 * h * RS + 8 * j * CS, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
}
/* mg_wg_foreach_pair in batches of NB 8-column blocks (2·NB pairs): ld(m, n, i) for every
 * pair of a batch, then f(m, n, v0, v1, i), i = the pair's slot in the batch (0 .. 2·NB-1).
 * For an epilogue that reads global memory: f's stores may alias the reads, so the compiler
 * cannot hoist the next pair's reads above them; here 2·NB pairs' reads are in flight. */
template <int NB, int NACC, class L, class F> MG_DEV void mg_wg_foreach_pair_batched(const float (&acc)[NACC], L ld, F f)
{
    static_assert(NB > 0 && (NACC / 4) % NB == 0, "batch must divide the 8-column blocks");
    const int m = mg_wg_acc_m(), n = mg_wg_acc_n();
#pragma unroll
    for (int j0 = 0; j0 < NACC / 4; j0 += NB) {
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) ld(m + 8 * h, n + 8 * (j0 + j), 2 * j + h);
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                f(m + 8 * h, n + 8 * (j0 + j), acc[4 * (j0 + j) + 2 * h], acc[4 * (j0 + j) + 2 * h + 1], 2 * j + h);
    }
}
/* GLU tiles hold gate columns in [0, BN/2) and the matching up columns in [BN/2, BN):
 * f(m, hl, gate0, gate1, up0, up1) for h columns hl, hl+1 of the tile's BN/2. */
template <int NACC, class F> MG_DEV void mg_wg_foreach_glu(const float (&acc)[NACC], F f)
{
    const int m = mg_wg_acc_m(), n = mg_wg_acc_n();
    constexpr int HJ = NACC / 8;   /* 8-column blocks in the gate half */
#pragma unroll
    for (int j = 0; j < HJ; j++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            f(m + 8 * h, n + 8 * j, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], acc[4 * (j + HJ) + 2 * h],
              acc[4 * (j + HJ) + 2 * h + 1]);
}
#endif /* MG_WG_ARCH */

#endif
