/* mg_common: device helpers shared by every moegen kernel family.
 *
 * Compiled by NVRTC without any CUDA header, so nothing here includes anything: storage
 * types are 16-bit structs, conversions are bit operations or inline PTX, tensor-core and
 * async-copy instructions are inline PTX. Sections: storage types, math (activations,
 * warp and block reductions), PTX wrappers (cp.async, ldmatrix, mma.sync), and the grouped
 * GEMM core used by the up and down families.
 *
 * Needs the spec constants (MG_DTYPE, ...) to be defined before it: the generated file puts
 * them first; standalone templates include mg_defaults.cuh first. */
#ifndef MG_COMMON_CUH
#define MG_COMMON_CUH

#define MG_DEV __device__ __forceinline__
#define MG_FULL_MASK 0xffffffffu
#define MG_INT_MAX 2147483647

/* ------------------------------------------------------------------ storage types */
struct mg_bf16 { unsigned short u; };
struct mg_f16 { unsigned short u; };

MG_DEV float mg_to_f32(float v) { return v; }
MG_DEV float mg_to_f32(mg_bf16 v) { return __uint_as_float(((unsigned)v.u) << 16); }
MG_DEV float mg_to_f32(mg_f16 v)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.u));
    return f;
}

template <class T> MG_DEV T mg_from_f32(float f);
template <> MG_DEV float mg_from_f32<float>(float f) { return f; }
/* Round to nearest even, NaN stays NaN (quiet); matches the host's mg_f32_to_bf16. */
template <> MG_DEV mg_bf16 mg_from_f32<mg_bf16>(float f)
{
    unsigned u = __float_as_uint(f);
    mg_bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.u = (unsigned short)((u >> 16) | 0x40u); return r; }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.u = (unsigned short)(u >> 16);
    return r;
}
template <> MG_DEV mg_f16 mg_from_f32<mg_f16>(float f)
{
    mg_f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.u) : "f"(f));
    return r;
}

template <int DT> struct mg_dtype_of { typedef mg_bf16 type; };
template <> struct mg_dtype_of<1> { typedef mg_f16 type; };
template <> struct mg_dtype_of<2> { typedef float type; };
/* The spec's storage type. */
typedef mg_dtype_of<MG_DTYPE>::type mg_t;

MG_DEV float mg_ld(const mg_t *p, long long i) { return mg_to_f32(p[i]); }
MG_DEV void mg_st(mg_t *p, long long i, float v) { p[i] = mg_from_f32<mg_t>(v); }
/* Two adjacent fp32 values in one 8-byte store (p + i 8-byte aligned). */
struct alignas(8) mg_f2 { float x, y; };
MG_DEV void mg_st2f(float *p, long long i, float a, float b) { mg_f2 v = {a, b}; *(mg_f2 *)(p + i) = v; }

/* ------------------------------------------------------------------ math */
MG_DEV float mg_inf() { return __int_as_float(0x7f800000); }
MG_DEV float mg_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Activation f and f' for mg_act: 0 swiglu (silu gate), 1 geglu (gelu gate), 2 gelu, 3 relu.
 * gelu is the exact erf form. For GLU acts h = f(gate) * up. */
template <int ACT> MG_DEV float mg_act_f(float x)
{
    if constexpr (ACT == 0) return x / (1.0f + expf(-x));
    else if constexpr (ACT == 1 || ACT == 2) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    else return x > 0.0f ? x : 0.0f;
}
template <int ACT> MG_DEV float mg_act_df(float x)
{
    if constexpr (ACT == 0) {
        float s = mg_sigmoid(x);
        return s * (1.0f + x * (1.0f - s));
    } else if constexpr (ACT == 1 || ACT == 2) {
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
               x * 0.39894228040143268f * expf(-0.5f * x * x);
    } else {
        return x > 0.0f ? 1.0f : 0.0f;
    }
}

/* f (and f') for the Hopper GEMM epilogues, which ncu found issue-bound on the activation:
 * expf and an IEEE divide (with its FCHK slow-path branch) cost ~20 instructions each. SiLU
 * here takes one __expf (MUFU.EX2) and one __fdividef (MUFU.RCP): relative error ~1e-6,
 * far below bf16's 4e-3; a huge 1 + e^-x (x < -87) gives s = 0, f = -0, as the exact form's
 * limit. Other activations fall back to mg_act_f / mg_act_df. */
template <int ACT> MG_DEV float mg_act_f_fast(float x)
{
    if constexpr (ACT == 0) return __fdividef(x, 1.0f + __expf(-x));
    else return mg_act_f<ACT>(x);
}
template <int ACT> MG_DEV void mg_act_fdf_fast(float x, float *f, float *df)
{
    if constexpr (ACT == 0) {
        const float s = __fdividef(1.0f, 1.0f + __expf(-x));
        *f = x * s;
        *df = s * (1.0f + x * (1.0f - s));
    } else {
        *f = mg_act_f<ACT>(x);
        *df = mg_act_df<ACT>(x);
    }
}

/* Butterfly reductions: every lane ends with the same, bitwise reproducible value. */
MG_DEV float mg_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MG_FULL_MASK, v, o);
    return v;
}
MG_DEV float mg_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(MG_FULL_MASK, v, o));
    return v;
}
/* Block sum in a fixed order (warp butterflies, then warp 0 over the warp partials);
 * every thread gets the result. scratch: 32 floats of shared memory. */
MG_DEV float mg_block_sum(float v, float *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = mg_warp_sum(v);
    __syncthreads();                       /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.0f;
    r = mg_warp_sum(r);
    return r;
}

/* Block max in a fixed order; every thread gets it (scratch: 32 floats, as mg_block_sum). */
MG_DEV float mg_block_max(float v, float *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = mg_warp_max(v);
    __syncthreads();                       /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return mg_warp_max(lane < nw ? scratch[lane] : -mg_inf());
}

/* ------------------------------------------------------------------ PTX wrappers */
MG_DEV unsigned mg_smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

/* 16-byte async copy global -> shared; pred false zero-fills the destination. */
MG_DEV void mg_cp_async16(void *smem, const void *gmem, bool pred)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(mg_smem_u32(smem)), "l"(gmem), "r"(pred ? 16 : 0) : "memory");
}
MG_DEV void mg_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> MG_DEV void mg_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

MG_DEV void mg_ldsm_x4(unsigned (&r)[4], const void *smem)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mg_smem_u32(smem)));
}
MG_DEV void mg_ldsm_x4_t(unsigned (&r)[4], const void *smem)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mg_smem_u32(smem)));
}

/* D = A·B + D, m16n8k16, 16-bit inputs, fp32 accumulators. */
template <class T> MG_DEV void mg_mma16816(float *c, const unsigned (&a)[4], const unsigned *b);
template <> MG_DEV void mg_mma16816<mg_bf16>(float *c, const unsigned (&a)[4], const unsigned *b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> MG_DEV void mg_mma16816<mg_f16>(float *c, const unsigned (&a)[4], const unsigned *b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* ------------------------------------------------------------------ grouped GEMM core
 * C[BM,BN] (fp32, in registers) = Σ_k A[m,k]·B[n,k] for one CTA tile, over k in [kb, ke).
 * Operands are described by mg_opnd:
 *   K-contiguous (A_KC / B_KC true): row r of the tile starts at base + rowoff[r] (rowoff is
 *     a shared-memory table the kernel fills before the main loop, -1 = zero row), and
 *     element k sits at +k. K must be a multiple of 16 (d, ff, F2 are).
 *   MN-contiguous: row k (a slot or a weight row) starts at base + row(k)·ld, with
 *     row(k) = gather ? gather[k] / gdiv : k, and the tile's columns are mn0 .. mn0+BM-1
 *     (only those < MN are read). The jagged slot dimension is always a row dimension, so
 *     every 16-byte chunk is either fully valid or fully zero-filled.
 * Tensor-core path (16-bit T): warps tile the CTA as WM_W x WN_W, mma.sync m16n8k16 fed by
 * ldmatrix (.trans for MN-contiguous operands). fp32 path: FFMA, each thread TM x TN
 * outputs at rows tm + NTM·i, cols tn + NTN·j. Both run the same cp.async STAGES pipeline.
 * GLU interleave: for the up projection, local B row n maps to gate/up rows in blocks of
 * GLU_G (even blocks gate, odd blocks up) so that each thread holds gate and up of the same
 * h column (see glu_col and foreach_glu). */
template <class T> struct mg_opnd {
    const T *base;
    const long long *rowoff;   /* K-contiguous: shared table [BM or BN] */
    long long ld;              /* MN-contiguous: row stride in elements */
    const int *gather;         /* MN-contiguous: k row gather, NULL = identity */
    int gdiv;                  /* divisor applied to gather[k] (top-k for slot -> token) */
    int mn0, MN;               /* MN-contiguous: first column of the tile, columns in total */
};

template <class T, int BM, int BN, int BK, int STAGES, int WARPS, bool A_KC, bool B_KC>
struct mg_gemm {
    static constexpr bool F32 = sizeof(T) == 4;
    static constexpr int ESZ = (int)sizeof(T);
    static constexpr int NT = WARPS * 32;
    static constexpr int CH = 16 / ESZ;                 /* elements per 16-byte chunk */
    static constexpr int PAD = MG_GEMM_PAD(ESZ);
    static constexpr int A_LD = A_KC ? BK + PAD : BM + PAD;
    static constexpr int B_LD = B_KC ? BK + PAD : BN + PAD;
    static constexpr int A_ELEMS = MG_GEMM_A_ELEMS(BM, BK, ESZ, A_KC);
    static constexpr int B_ELEMS = MG_GEMM_A_ELEMS(BN, BK, ESZ, B_KC);
    static constexpr int STAGE_ELEMS = A_ELEMS + B_ELEMS;
    static constexpr int SMEM_BYTES = MG_GEMM_SMEM_BYTES(BM, BN, BK, STAGES, ESZ, A_KC, B_KC);
    /* tensor-core warp layout */
    static constexpr int WN_W = WARPS == 8 ? 4 : 2;
    static constexpr int WM_W = WARPS / WN_W;
    static constexpr int WTM = BM / WM_W, WTN = BN / WN_W;
    static constexpr int MI = WTM / 16, NI = WTN / 8;
    /* FFMA thread layout */
    static constexpr int TN = BN == 128 ? 8 : 4;
    static constexpr int NTN = BN / TN, NTM = NT / NTN, TM = BM / NTM;
    static constexpr int NACC = F32 ? TM * TN : MI * NI * 4;
    static constexpr int GLU_G = F32 ? NTN : 8;

    static_assert(BM == 64 || BM == 128, "BM must be 64 or 128");
    static_assert(BN == 64 || BN == 128, "BN must be 64 or 128");
    static_assert(BK == 16 || BK == 32 || BK == 64, "BK must be 16, 32 or 64");
    static_assert(STAGES >= 2 && STAGES <= 4, "STAGES must be 2..4");
    static_assert(WARPS == 4 || WARPS == 8, "WARPS must be 4 or 8");
    static_assert(ESZ == 2 || ESZ == 4, "16-bit or fp32 storage");
    static_assert(F32 || (WTM % 16 == 0 && WTN % 16 == 0), "warp tile must be a multiple of 16x16");
    static_assert(!F32 || (NTM * NTN == NT && TM * NTM == BM && TN % 2 == 0), "FFMA layout");

    /* GLU: local B row n -> (h column within the tile's BN/2, is the up half). */
    MG_DEV static int glu_col(int n, int *is_up)
    {
        int blk = n / GLU_G;
        *is_up = blk & 1;
        return (blk >> 1) * GLU_G + n % GLU_G;
    }

    MG_DEV static void load_kc(T *s, int ld, int rows, const mg_opnd<T> &o, int k0, int ke)
    {
        constexpr int CPR = BK / CH;   /* chunks per row */
        for (int c = threadIdx.x; c < rows * CPR; c += NT) {
            int r = c / CPR, kc = (c % CPR) * CH;
            long long ro = o.rowoff[r];
            int k = k0 + kc;
            bool ok = ro >= 0 && k < ke;
            mg_cp_async16(s + r * ld + kc, ok ? (const void *)(o.base + ro + k) : (const void *)o.base, ok);
        }
    }
    MG_DEV static void load_mn(T *s, int ld, int cols, const mg_opnd<T> &o, int k0, int ke)
    {
        const int CPR = cols / CH;
        for (int c = threadIdx.x; c < BK * CPR; c += NT) {
            int kr = c / CPR, mc = (c % CPR) * CH;
            int k = k0 + kr, m = o.mn0 + mc;
            bool ok = k < ke && m < o.MN;
            const T *src = o.base;
            if (ok) {
                long long row = o.gather ? (long long)(o.gather[k] / o.gdiv) : (long long)k;
                src = o.base + row * o.ld + m;
            }
            mg_cp_async16(s + kr * ld + mc, src, ok);
        }
    }
    MG_DEV static void load_stage(T *st, const mg_opnd<T> &a, const mg_opnd<T> &b, int k0, int ke)
    {
        if constexpr (A_KC) load_kc(st, A_LD, BM, a, k0, ke); else load_mn(st, A_LD, BM, a, k0, ke);
        if constexpr (B_KC) load_kc(st + A_ELEMS, B_LD, BN, b, k0, ke); else load_mn(st + A_ELEMS, B_LD, BN, b, k0, ke);
    }

    MG_DEV static void compute_stage(const T *sA, float (&acc)[NACC]) { compute_ab(sA, sA + A_ELEMS, acc); }
    /* One BK step on A and B tiles anywhere in shared memory (in the stage layout above):
     * for kernels that stage an operand themselves (router dx/dwg: dlogits as bf16 hi + lo). */
    MG_DEV static void compute_ab(const T *sA, const T *sB, float (&acc)[NACC])
    {
        const int tid = threadIdx.x;
        if constexpr (F32) {
            const int tm = tid / NTN, tn = tid % NTN;
#pragma unroll 4
            for (int k = 0; k < BK; k++) {
                float av[TM], bv[TN];
#pragma unroll
                for (int i = 0; i < TM; i++) {
                    int m = tm + NTM * i;
                    av[i] = A_KC ? mg_to_f32(sA[m * A_LD + k]) : mg_to_f32(sA[k * A_LD + m]);
                }
#pragma unroll
                for (int j = 0; j < TN; j++) {
                    int n = tn + NTN * j;
                    bv[j] = B_KC ? mg_to_f32(sB[n * B_LD + k]) : mg_to_f32(sB[k * B_LD + n]);
                }
#pragma unroll
                for (int i = 0; i < TM; i++)
#pragma unroll
                    for (int j = 0; j < TN; j++) acc[i * TN + j] = fmaf(av[i], bv[j], acc[i * TN + j]);
            }
        } else {
            const int lane = tid & 31, warp = tid >> 5;
            const int wm0 = (warp / WN_W) * WTM, wn0 = (warp % WN_W) * WTN;
            const int j8 = lane >> 3, r8 = lane & 7;
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                unsigned af[MI][4], bfr[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; mi++) {
                    if constexpr (A_KC) {
                        int r = wm0 + mi * 16 + (lane & 15), c = kk + (lane >> 4) * 8;
                        mg_ldsm_x4(af[mi], sA + r * A_LD + c);
                    } else {
                        int k = kk + r8 + (j8 >> 1) * 8, m = wm0 + mi * 16 + (j8 & 1) * 8;
                        mg_ldsm_x4_t(af[mi], sA + k * A_LD + m);
                    }
                }
#pragma unroll
                for (int ni = 0; ni < NI; ni += 2) {
                    unsigned r4[4];
                    if constexpr (B_KC) {
                        int n = wn0 + ni * 8 + r8 + (j8 >> 1) * 8, k = kk + (j8 & 1) * 8;
                        mg_ldsm_x4(r4, sB + n * B_LD + k);
                    } else {
                        int k = kk + r8 + (j8 & 1) * 8, n = wn0 + ni * 8 + (j8 >> 1) * 8;
                        mg_ldsm_x4_t(r4, sB + k * B_LD + n);
                    }
                    bfr[ni][0] = r4[0]; bfr[ni][1] = r4[1];
                    bfr[ni + 1][0] = r4[2]; bfr[ni + 1][1] = r4[3];
                }
#pragma unroll
                for (int mi = 0; mi < MI; mi++)
#pragma unroll
                    for (int ni = 0; ni < NI; ni++) mg_mma16816<T>(&acc[(mi * NI + ni) * 4], af[mi], bfr[ni]);
            }
        }
    }

    /* The pipelined main loop over k in [kb, ke) (in BK steps; the last step is masked).
     * smem: SMEM_BYTES of dynamic shared memory. Ends with all copies drained and a
     * barrier, so the caller may reuse smem. */
    MG_DEV static void mainloop(T *smem, const mg_opnd<T> &a, const mg_opnd<T> &b, int kb, int ke,
                                float (&acc)[NACC])
    {
#pragma unroll
        for (int i = 0; i < NACC; i++) acc[i] = 0.0f;
        const int nk = ke > kb ? (ke - kb + BK - 1) / BK : 0;
#pragma unroll
        for (int s = 0; s < STAGES - 1; s++) {
            if (s < nk) load_stage(smem + s * STAGE_ELEMS, a, b, kb + s * BK, ke);
            mg_cp_async_commit();
        }
        for (int kt = 0; kt < nk; kt++) {
            mg_cp_async_wait<STAGES - 2>();
            __syncthreads();
            int nx = kt + STAGES - 1;
            if (nx < nk) load_stage(smem + (nx % STAGES) * STAGE_ELEMS, a, b, kb + nx * BK, ke);
            mg_cp_async_commit();
            compute_stage(smem + (kt % STAGES) * STAGE_ELEMS, acc);
        }
        mg_cp_async_wait<0>();
        __syncthreads();
    }

    /* f(m, n, v) for every accumulator element (local tile coordinates). */
    template <class F> MG_DEV static void foreach(const float (&acc)[NACC], F f)
    {
        const int tid = threadIdx.x;
        if constexpr (F32) {
            const int tm = tid / NTN, tn = tid % NTN;
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) f(tm + NTM * i, tn + NTN * j, acc[i * TN + j]);
        } else {
            const int lane = tid & 31, warp = tid >> 5;
            const int wm0 = (warp / WN_W) * WTM, wn0 = (warp % WN_W) * WTN;
            const int g = lane >> 2, q = lane & 3;
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++)
#pragma unroll
                    for (int r = 0; r < 4; r++)
                        f(wm0 + mi * 16 + g + (r >> 1) * 8, wn0 + ni * 8 + 2 * q + (r & 1),
                          acc[(mi * NI + ni) * 4 + r]);
        }
    }
    /* Tensor-core path: f(m, n, v0, v1) for the adjacent columns n, n+1 (n even) of row m,
     * for 8-byte stores. (The FFMA layout holds no adjacent columns: use foreach there.) */
    template <class F> MG_DEV static void foreach_pair(const float (&acc)[NACC], F f)
    {
        static_assert(!F32, "foreach_pair: tensor-core accumulators only");
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int wm0 = (warp / WN_W) * WTM, wn0 = (warp % WN_W) * WTN;
        const int g = lane >> 2, q = lane & 3;
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int ni = 0; ni < NI; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    f(wm0 + mi * 16 + g + h * 8, wn0 + ni * 8 + 2 * q, acc[(mi * NI + ni) * 4 + 2 * h],
                      acc[(mi * NI + ni) * 4 + 2 * h + 1]);
    }
    /* GLU: f(m, hl, gate, up) with hl the h column within the tile's BN/2 columns. */
    template <class F> MG_DEV static void foreach_glu(const float (&acc)[NACC], F f)
    {
        const int tid = threadIdx.x;
        if constexpr (F32) {
            const int tm = tid / NTN, tn = tid % NTN;
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j += 2)
                    f(tm + NTM * i, (j >> 1) * NTN + tn, acc[i * TN + j], acc[i * TN + j + 1]);
        } else {
            const int lane = tid & 31, warp = tid >> 5;
            const int wm0 = (warp / WN_W) * WTM, wn0 = (warp % WN_W) * WTN;
            const int g = lane >> 2, q = lane & 3;
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni += 2)
#pragma unroll
                    for (int r = 0; r < 4; r++) {
                        int n = wn0 + ni * 8 + 2 * q + (r & 1);
                        int hl = ((n >> 3) >> 1) * 8 + (n & 7);
                        f(wm0 + mi * 16 + g + (r >> 1) * 8, hl, acc[(mi * NI + ni) * 4 + r],
                          acc[(mi * NI + ni + 1) * 4 + r]);
                    }
        }
    }
};

/* Grouped-GEMM tile scheduler for slot-row GEMMs: maps blockIdx.x to (group, first slot,
 * end slot). With tile_off NULL there is one group of rows [0, T). Returns false when the
 * block is past the last tile (the grid is an upper bound). */
MG_DEV bool mg_sched_mtile(const int *offsets, const int *tile_off, int n_groups, int T, int bm,
                           int *g, int *m0, int *m_end)
{
    const int tile = blockIdx.x;
    if (!tile_off) {
        if (tile * bm >= T) return false;
        *g = 0; *m0 = tile * bm; *m_end = T;
        return true;
    }
    if (tile >= tile_off[n_groups]) return false;
    int lo = 0, hi = n_groups - 1;          /* last group with tile_off[g] <= tile */
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (tile_off[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    *g = lo;
    *m0 = offsets[lo] + (tile - tile_off[lo]) * bm;
    *m_end = offsets[lo + 1];
    return true;
}

#endif
