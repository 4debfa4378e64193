/* moe_params: the parameter struct of every moegen kernel entry, one per entry point.
 *
 * Shared verbatim by the generated CUDA sources (device side) and the C runtime (host
 * side): valid C11 and C++, no includes. Every kernel takes exactly one of these by value.
 * Pointers are device pointers. "dtype" buffers hold the spec's storage type (bf16/fp16
 * as 16-bit words, or fp32); everything marked float is fp32 whatever the dtype.
 *
 * Index spaces:
 *   token t in [0,T); assignment i = t*k + j (j-th choice of token t);
 *   slot s in [0, offsets[E]) : assignments sorted by expert (stable), after drops.
 * Grouped-GEMM conventions (families up and down):
 *   offsets  [G+1] slot ranges per group (expert); NULL = one group of rows [0, T)
 *                  (identity routing, used for shared experts);
 *   tile_off [G+1] exclusive scan of ceil(rows_g / BM) (from dispatch/scan); NULL with
 *                  offsets NULL;
 *   perm     [slots] slot -> t*k+j, the x row of a slot is perm[s] / k; NULL = row s.
 */
#ifndef MOE_PARAMS_H
#define MOE_PARAMS_H

/* Assignments per dispatch chunk (one warp walks one chunk in order). */
#define MG_DISPATCH_CHUNK 256
/* Warps (chunks) per block of dispatch count/place. */
#define MG_DISPATCH_WARPS 4
/* Tokens per block of router bwd (one warp per token). */
#define MG_ROUTER_WARPS 4
/* Router fwd: a block computes the logits of MG_RF_TOKENS tokens as one GEMM tile (tensor
 * cores for 16-bit dtypes, FFMA for fp32) into shared memory, then routes them one warp per
 * token. Experts per GEMM pass: MG_RF_BN (64, or 128 when E > 64; E > 128 takes several
 * passes), k step MG_RF_BK, an MG_RF_STAGES-deep cp.async pipeline. The fp32 logits tile (row
 * stride E + 4) reuses the pipeline's shared memory after a single pass, else follows it.
 * Dynamic shared memory MG_RF_SMEM_BYTES(E, esz): at most 95 KB (E = 256, fp32), so that it
 * fits the 99 KB of sm_86/sm_89 too. Host and device use these same macros. */
#define MG_RF_TOKENS 64
#define MG_RF_WARPS 8
#define MG_RF_BN(E) ((E) <= 64 ? 64 : 128)
#define MG_RF_BK(E, esz) ((E) > 128 ? 16 : (esz) == 2 && (E) <= 64 ? 64 : 32)
#define MG_RF_STAGES(E, esz) ((esz) == 4 && (E) > 128 ? 2 : 3)
#define MG_RF_LD(E) ((E) + 4)
#define MG_RF_PIPE_BYTES(E, esz) \
    MG_GEMM_SMEM_BYTES(MG_RF_TOKENS, MG_RF_BN(E), MG_RF_BK(E, esz), MG_RF_STAGES(E, esz), esz, 1, 1)
#define MG_RF_LOGITS_OFF(E, esz) ((E) <= MG_RF_BN(E) ? 0 : MG_RF_PIPE_BYTES(E, esz))
#define MG_RF_LOGITS_END(E, esz) (MG_RF_LOGITS_OFF(E, esz) + MG_RF_TOKENS * MG_RF_LD(E) * 4)
#define MG_RF_SMEM_BYTES(E, esz) \
    (MG_RF_LOGITS_END(E, esz) > MG_RF_PIPE_BYTES(E, esz) ? MG_RF_LOGITS_END(E, esz) : MG_RF_PIPE_BYTES(E, esz))
/* Router dx and dwg: tiled GEMMs of the fp32 dlogits with wg / x (MG_RDL_WARPS warps, static
 * shared memory). dx: MG_RDX_TOKENS x MG_RDX_COLS of dxr per block. dwg: MG_RDWG_EXPERTS x
 * MG_RDWG_COLS of one split's partial per block (E > 64: the expert tiles of one x tile are
 * neighbours in the grid, so x comes from L2 after the first); a split is MG_DWG_SPLIT
 * tokens, and the partials are reduced in split order. */
#define MG_RDL_WARPS 8
#define MG_RDX_TOKENS 64
#define MG_RDX_COLS 128
#define MG_RDWG_EXPERTS 64
#define MG_RDWG_COLS 128
#define MG_DWG_SPLIT 512
/* Elements per thread of router dwgsum (one 16-byte vector of fp32). */
#define MG_DWGSUM_VEC 4

/* Grouped GEMM shared-memory bytes for a tile, element size esz (2 or 4) and operand
 * layouts (a_kc / b_kc: 1 when that operand's K dimension is contiguous in memory).
 * Each 16-byte row is padded by 16 bytes (conflict-free ldmatrix). Host and device use
 * this same macro. */
#define MG_GEMM_PAD(esz) (16 / (esz))
#define MG_GEMM_A_ELEMS(bm, bk, esz, a_kc) \
    ((a_kc) ? (bm) * ((bk) + MG_GEMM_PAD(esz)) : (bk) * ((bm) + MG_GEMM_PAD(esz)))
#define MG_GEMM_SMEM_BYTES(bm, bn, bk, stages, esz, a_kc, b_kc) \
    ((stages) * (MG_GEMM_A_ELEMS(bm, bk, esz, a_kc) + MG_GEMM_A_ELEMS(bn, bk, esz, b_kc)) * (esz))

/* Hopper grouped GEMM (templates/mg_wgmma.cuh; sm_90a, 16-bit dtypes, plan BM = 128): one
 * producer warpgroup + two consumer warpgroups, a persistent grid of one CTA per SM.
 * MG_WG_BN(n): the tile width for a GEMM with n output columns; MG_WG_STAGES: pipeline
 * depth; MG_WG_SMEM_BYTES: dynamic shared memory (1 KB alignment slack, the stages, full and
 * empty mbarriers, the producer's row tables). Host and device use these same macros. */
#define MG_WG_THREADS 384
/* Dims the Hopper path takes: tensor rows of 16-byte multiples (TMA global strides). */
#define MG_WG_DIMS_OK(d, ff) ((d) % 8 == 0 && (ff) % 8 == 0)
/* A TMA tensor map (CUtensorMap: 128 opaque bytes, 64-byte aligned), built on the host by
 * runtime/mg_launch.c and read by the kernel from its __grid_constant__ parameter. GEMM
 * parameter structs end with two (tm_a, tm_b: the A and B operands' tensors; for gathered x
 * rows, x itself in one-row boxes), down dgrad's a third (tm_c: its epilogue's a); zero
 * when a launch takes the mma.sync path. */
#ifdef __cplusplus
#define MG_ALIGN64 alignas(64)
#else
#define MG_ALIGN64 _Alignas(64)
#endif
typedef struct mg_tmap { MG_ALIGN64 unsigned long long q[16]; } mg_tmap;
/* MG_WG_BN_DEV: the widest tile, 256 (m64n256k16, 4 stages, cooperative consumers: each
 * consumer warpgroup takes 64 rows of a 128 x 256 tile) wherever n >= 256, else 128 x 128 with
 * ping-pong consumers. 256 halves the B bytes per FLOP from L2, the fwd's limit at 128 x 128
 * (ncu: L2 64-73% busy, SM 37%); on an H100 it took Mixtral's fwd+bwd from 65.2 to 46.3 ms
 * and OLMoE's from 20.3 to 18.1 (bench/results/2026-11-26-s4, call 5). -DMG_WG_BN_DEV=128
 * (NVRTC, through MOEGEN_JIT_DEFINES) restores 128-wide tiles on the device; the host's smem
 * size covers both widths. */
#ifndef MG_WG_BN_DEV
#define MG_WG_BN_DEV 256
#endif
#ifndef MG_WG_BN
#define MG_WG_BN(n) (MG_WG_BN_DEV == 256 && (n) >= 256 ? 256 : 128)
#endif
/* Per-GEMM tile width, device-only knobs (NVRTC -D through env MOEGEN_JIT_DEFINES,
 * runtime/mg_jit.c): MG_WG_BN_UP_FWD, _UP_DGRAD, _UP_WGRAD, _DN_FWD, _DN_DGRAD, _DN_WGRAD.
 * 0 (default): MG_WG_BN(n), today's rule; 128 or 256: that width, 256 still only where
 * n >= 256 (a 256-wide tile needs it), else 128. 256 wins most GEMMs on an H100 but not all:
 * OLMoE's up wgrad 4.85 ms at 128 against 5.43 at 256, small's up fwd 1.07 against 1.23
 * (bench/results/2026-11-26-s4); bench/dev/wg_probe.sh bn measures each. The host's smem
 * size (MG_WG_SMEM_BYTES) and 64 x 64 TMA boxes serve either width. Down dgrad stays 128
 * while MG_WG_EPI_TMA is on, whatever its knob. */
#ifndef MG_WG_BN_UP_FWD
#define MG_WG_BN_UP_FWD 0
#endif
#ifndef MG_WG_BN_UP_DGRAD
#define MG_WG_BN_UP_DGRAD 0
#endif
#ifndef MG_WG_BN_UP_WGRAD
#define MG_WG_BN_UP_WGRAD 0
#endif
#ifndef MG_WG_BN_DN_FWD
#define MG_WG_BN_DN_FWD 0
#endif
#ifndef MG_WG_BN_DN_DGRAD
#define MG_WG_BN_DN_DGRAD 0
#endif
#ifndef MG_WG_BN_DN_WGRAD
#define MG_WG_BN_DN_WGRAD 0
#endif
#define MG_WG_BN_KNOB_OK(k) ((k) == 0 || (k) == 128 || (k) == 256)
#if !(MG_WG_BN_KNOB_OK(MG_WG_BN_UP_FWD) && MG_WG_BN_KNOB_OK(MG_WG_BN_UP_DGRAD) && \
      MG_WG_BN_KNOB_OK(MG_WG_BN_UP_WGRAD) && MG_WG_BN_KNOB_OK(MG_WG_BN_DN_FWD) && \
      MG_WG_BN_KNOB_OK(MG_WG_BN_DN_DGRAD) && MG_WG_BN_KNOB_OK(MG_WG_BN_DN_WGRAD))
#error "MG_WG_BN_{UP,DN}_{FWD,DGRAD,WGRAD}: 0, 128 or 256"
#endif
#define MG_WG_BN_PICK(knob, n) ((knob) == 0 ? MG_WG_BN(n) : (knob) == 256 && (n) >= 256 ? 256 : 128)
/* Up fwd's default adds one rule: 128 (ping-pong consumers, one's epilogue beside the other's
 * main loop) where K = d <= 1024, i.e. 16 k steps or fewer a tile, so its epilogue (a and h
 * written) weighs as much as the main loop. On an H100 (bench/results/2026-11-26-s5, call 3):
 * small (d 768) fwd 1.41 ms at 128 against 1.60 at 256; OLMoE (d 2048) 5.09 against 4.23. */
#define MG_WG_BN_UP_FWD_PICK(d, f2) \
    (MG_WG_BN_UP_FWD == 0 && (d) <= 1024 ? 128 : MG_WG_BN_PICK(MG_WG_BN_UP_FWD, f2))
/* dgrad/wgrad on the Hopper path: the default of host and device; env MOEGEN_WG_BWD=0|1
 * overrides both (runtime/mg_launch.c at load, runtime/mg_jit.c as -DMG_WG_BWD, since the
 * bwd entries carry the Hopper path only when compiled with it). On since v4: on an H100 the
 * wgmma backward is 1.30x (small) and 1.37x (OLMoE) faster than mma.sync's
 * (bench/results/2026-11-26-s4); 0 keeps the mma.sync backward on sm_90a. */
#ifndef MG_WG_BWD
#define MG_WG_BWD 1
#endif
#define MG_WG_STAGES(bn) ((bn) == 256 ? 4 : 6)
/* Device-only knobs of the Hopper core (set with NVRTC -D through env MOEGEN_JIT_DEFINES,
 * runtime/mg_jit.c; the host's smem size stays that of MG_WG_STAGES, an upper bound):
 * MG_WG_PINGPONG 1: each consumer warpgroup owns whole 128-row tiles in turn, so one's
 * epilogue overlaps the other's main loop; 0: both split every tile (v1/v2).
 * MG_WG_STAGES_DEV: fewer pipeline stages than MG_WG_STAGES (race hunting). */
#ifndef MG_WG_PINGPONG
#define MG_WG_PINGPONG 1
#endif
#ifndef MG_WG_STAGES_DEV
#define MG_WG_STAGES_DEV 64
#endif
/* v4 fixes of the bwd kernels, each with its v3 behaviour behind 0 for A/B (bench/NOTES.md v3):
 * MG_WG_MN_BATCH 1: MN-contiguous cp.async loads read their gather indices for the whole
 * stage before issuing the copies (up wgrad's x); 2 (default): one index a lane, shared by
 * shuffles, the next stage's read before the producer waits for that stage (mg_wgmma.cuh
 * mn_row). MG_WG_EPI_BATCH n: down dgrad's epilogue
 * loads the pre-activations of n 8-column blocks (2n pairs: 4n loads in flight) before
 * computing and storing them; 0 = one pair at a time (v3: 64 serialized load round trips a
 * tile, since the stores to da may alias a). */
#ifndef MG_WG_MN_BATCH
#define MG_WG_MN_BATCH 2
#endif
#ifndef MG_WG_EPI_BATCH
#define MG_WG_EPI_BATCH 4
#endif
/* v5 (bench/NOTES.md v5), each with the v4 behaviour behind 0 for A/B:
 * MG_WG_TMA_GATHER 1: up fwd's gathered x rows (its A) arrive by one-row TMA copies (tm_a:
 * x [T, d], box 64 columns x 1 row) issued by the producer's first warps, so that kernel is
 * all-TMA too; 0: 16-byte cp.async from the warpgroup. (Up wgrad's x, its B then, had the
 * same path until session 6 made it the cp.async A of a transposed tile.)
 * MG_WG_EPI_TMA 1: down dgrad's epilogue operand a (the tile's gate and up columns, 64 KB
 * with GLU) arrives by TMA (tm_c) into its own shared-memory buffer while the main loop runs,
 * issued by a second producer warp; the epilogue reads a there, not from global memory. The
 * buffer takes what two stages took (4 stages instead of 6, same MG_WG_SMEM_BYTES). 0: global
 * loads (v4). Only at BN 128 (down dgrad stays 128 wide while it is on).
 * Both default to 0: measured on an H100 (bench/results/2026-11-26-s4, call 11, same call)
 * they lose to v4 + 256-wide tiles: OLMoE fwd+bwd 17.98 ms with both on, 17.43 / 17.29 with
 * one off, 16.58 with both off; small 5.95 / 5.86. The TMA gather is issue-bound (one
 * copy at a time per warp from uniform registers: 1 or 2 issuing warps take small to 10.7 /
 * 7.4 ms), and a 128-wide down dgrad with a in smem is slower than a 256-wide one reading a
 * from global. Kept for the A/B and for the cluster work they would pair with. */
#ifndef MG_WG_TMA_GATHER
#define MG_WG_TMA_GATHER 0
#endif
#ifndef MG_WG_EPI_TMA
#define MG_WG_EPI_TMA 0
#endif
/* MG_WG_EPI_SMEM 1 (default): down dgrad's epilogue stages dh through a consumer scratch in
 * shared memory, 32 columns at a time (fp32, rows of MG_WG_SCRATCH_LD floats), so that a is
 * read and da written in 8-byte pieces a lane, 8 lanes on 64 contiguous bytes of a row, from a
 * short loop: ncu showed the register-layout epilogue (4-byte accesses at 8 rows a warp
 * instruction, fully unrolled) issue-bound, at 35% of memory throughput with a third of its
 * stalls on instruction fetch (bench/NOTES.md). 0: v4's epilogue (A/B). The host launches down
 * dgrad with MG_WG_SCRATCH_BYTES more dynamic shared memory whatever the knob (it is
 * device-only); the pad of 8 floats a row makes the accumulator's float2 writes free of bank
 * conflicts (a half-warp's 4 rows land 8 banks apart). Off while MG_WG_EPI_TMA is on. */
#ifndef MG_WG_EPI_SMEM
#define MG_WG_EPI_SMEM 1
#endif
/* MG_WG_EPI_ASYNC 1 (default): where d >= MG_WG_EPI_ASYNC_MIN_D, down dgrad's epilogue (a
 * read, da written: 256 KB a 128 x 256 tile) runs on the idle producer warps 1..3 from a 16-bit
 * dump of dh in shared memory, overlapped with the next tile's main loop (mg_wgmma.cuh
 * epi_worker); 3 stages instead of 4 make room for the 66 KB dump in the same dynamic shared
 * memory. 0, or d below the bound: the consumers run it (the scratch path above). ncu (Mixtral,
 * s9 call 2) had put 29% of down dgrad's consumer time in that epilogue, the tensor pipe idle.
 * On an H100 (bench/results/2026-11-27-s9, calls 3-6, same calls): Mixtral's down dgrad 3.65 ->
 * 3.20 ms by ncu and the layer 0.03-0.43 ms faster (mean 0.25); but the worker's fixed 256 KB a
 * tile hides only behind a main loop long enough, K = d: OLMoE (d 2048) level, fine-grained
 * (2048) 0.25-0.4 ms and small (768) 0.3 ms slower. Hence the bound. */
#ifndef MG_WG_EPI_ASYNC
#define MG_WG_EPI_ASYNC 1
#endif
#ifndef MG_WG_EPI_ASYNC_MIN_D
#define MG_WG_EPI_ASYNC_MIN_D 4096
#endif
/* MG_WG_EPI_SMEM_UP 1: up fwd's GLU epilogue (a's gate and up, h) stored through the same
 * scratch, 16 h columns at a time, 8 bytes a lane; 0: the register-layout stores. The host
 * gives up fwd the scratch too. On an H100 (bench/results/2026-11-26-s5, call 6, same call):
 * OLMoE 13.22 -> 12.71 ms, fine-grained 11.61 -> 11.27, small and Mixtral level. */
#ifndef MG_WG_EPI_SMEM_UP
#define MG_WG_EPI_SMEM_UP 1
#endif
/* MG_WG_STORE_CS 1 (default): the Hopper epilogues store their outputs (a, h, da, z, dxs,
 * dW) with streaming stores and down dgrad reads a with streaming loads (evict-first in L2),
 * so written-once data does not push out the operand tiles other CTAs still read; 0: plain.
 * On an H100 (bench/results/2026-11-26-s5, call 13, same call): Mixtral 37.07 -> 35.54 ms,
 * OLMoE 12.71 -> 12.01, fine-grained 11.41 -> 10.29, small 3.81 -> 3.76. (tiny's 128-wide
 * down dgrad spills 36 bytes with it; no bench shape does.) */
#ifndef MG_WG_STORE_CS
#define MG_WG_STORE_CS 1
#endif
/* MG_WG_BAND: n tiles a band of the persistent raster (mg_wgmma.cuh mg_wg_band); the CTAs
 * in flight cover about SMs / BAND m tiles of BAND n tiles. 2 (default) against 8 on an H100
 * (bench/results/2026-11-26-s6, calls 2 and 3, transposed up wgrad): level or up to 3% faster
 * on every bench shape (Mixtral 33.49 -> 33.18 and 33.53 -> 32.59 ms, fine-grained 10.21 ->
 * 10.00 and 10.14 -> 9.99). */
#ifndef MG_WG_BAND
#define MG_WG_BAND 2
#endif
#define MG_WG_SCRATCH_LD 40
#define MG_WG_SCRATCH_BYTES (2 * 64 * MG_WG_SCRATCH_LD * 4)
/* Dynamic shared memory a Hopper GEMM takes on top of MG_WG_SMEM_BYTES, whatever the
 * device-only knobs: up fwd its epilogue scratch (MG_WG_EPI_SMEM_UP); down dgrad all that sm_90
 * lets a block opt in to (MG_WG_SMEM_OPTIN, 227 KB) less the kernel's static shared memory (the
 * mma.sync path's row table, 128 x 8 bytes, counts too: without it cudaFuncSetAttribute refused
 * the size, s10 call 1), which holds the scratch (MG_WG_EPI_SMEM) or the async epilogue's dump
 * beside 4 stages (MG_WG_EPI_ASYNC, MG_WG_ASYNC_HALF). down: 0 up, 1 down; gemm: 0 fwd, 1 dgrad,
 * 2 wgrad. The launcher and the tuner's estimate both size kernels by it. */
#define MG_WG_SMEM_OPTIN 232448
#define MG_WG_EXTRA_SMEM(down, gemm)                                                                 \
    ((down) && (gemm) == 1 ? MG_WG_SMEM_OPTIN - 128 * 8 - MG_WG_SMEM_BYTES(256)                      \
                           : !(down) && (gemm) == 0 ? MG_WG_SCRATCH_BYTES : 0)
/* MG_WG_CLUSTER 2 (env MOEGEN_WG_CLUSTER=2: runtime/mg_jit.c passes it, runtime/mg_launch.c
 * launches the four row GEMMs in clusters of 2): CTA pairs share (multicast) the B tile of
 * an m-tile pair (mg_wgmma.cuh). 1 (default): no clusters. Opt-in: on an H100 pairs are level
 * with single CTAs (bench/results/2026-11-26-s5, call 10: Mixtral 36.62 vs 36.86 ms, OLMoE
 * 12.92 vs 12.64), since DRAM re-reads, not L2-to-SM bytes, limit the big GEMMs; again with
 * the transposed up wgrad (bench/results/2026-11-26-s6, call 4: Mixtral 33.42 / 33.54 with
 * pairs, 33.55 without; ncu: up fwd 7.06 ms against 7.20, up dgrad 6.03 against 5.56). */
#ifndef MG_WG_CLUSTER
#define MG_WG_CLUSTER 1
#endif
#if MG_WG_CLUSTER != 1 && MG_WG_CLUSTER != 2
#error "MG_WG_CLUSTER: 1 or 2"
#endif
/* MG_WG_GATHER_WARPS (1, 2, 4): producer warps that issue the gathered rows' copies (a warp
 * issues one TMA copy at a time from uniform registers, templates/mg_wgmma.cuh). */
#ifndef MG_WG_GATHER_WARPS
#define MG_WG_GATHER_WARPS 4
#endif
/* Registers a thread keeps after setmaxnreg (multiples of 8, 128 · PROD + 256 · CONS <=
 * 384 · 168): MG_WG_PROD_REGS / MG_WG_CONS_REGS where the producer copies by cp.async (up fwd's
 * gathered rows, up wgrad's x), MG_WG_PROD_REGS_TMA / MG_WG_CONS_REGS_TMA where it only issues
 * TMA boxes. With 56 registers ptxas issued up wgrad's lane-row shuffles one or two ahead of
 * their copies, at 72 five, at 88 all eight before the first copy; on an H100 (ncu, Mixtral,
 * bench/results/2026-11-26-s8, calls 1, 2) up wgrad 6.85 ms at 56 / 224, 6.27 at 72 / 216, 6.08
 * at 88 / 208. The TMA-only kernels lost with fewer consumer registers (down dgrad 3.66 ms at
 * 224, 3.72 at 208), so they keep theirs. */
#ifndef MG_WG_PROD_REGS
#define MG_WG_PROD_REGS 88
#endif
#ifndef MG_WG_CONS_REGS
#define MG_WG_CONS_REGS 208
#endif
/* The async epilogue's kernel (MG_WG_EPI_ASYNC): its producer warps 1..3 run the epilogue with
 * MG_WG_ASYNC_DEPTH steps of a in flight a warp, and its consumers no longer do. Depth 4 needed
 * 88 producer registers (80 spilled); on an H100 (s9 calls 4, 5) Mixtral's down dgrad took
 * 3.20-3.21 ms at 4 / 88 / 208 against 3.33 at 3 / 72 / 216. Session 10's worker (whole-tile
 * dump) spills 4 bytes at 88 and none at 96 / 200; the half-tile dump (MG_WG_ASYNC_HALF 1) holds
 * the pending half in 32 more consumer registers and fits only at 88 / 208 (ptxas at sm_90a,
 * bench-mixtral and bench-small). */
#ifndef MG_WG_PROD_REGS_ASYNC
#define MG_WG_PROD_REGS_ASYNC (MG_WG_ASYNC_HALF ? 88 : 96)
#endif
#ifndef MG_WG_CONS_REGS_ASYNC
#define MG_WG_CONS_REGS_ASYNC (MG_WG_ASYNC_HALF ? 208 : 200)
#endif
#ifndef MG_WG_ASYNC_DEPTH
#define MG_WG_ASYNC_DEPTH 4
#endif
/* MG_WG_ASYNC_HALF 1: the async epilogue's consumers dump a tile in two halves of 128 columns
 * through one 32 KB buffer, so down dgrad keeps 4 stages: the first half at the tile's end, the
 * second (held packed in 32 registers) during the next main loop, as soon as the worker has
 * read the first. 0 (default): the whole tile through a 64 KB buffer and 3 stages. On an H100
 * (bench/results/2026-11-27-s10, calls 3, 4; ncu, Mixtral) halves took 3.68 ms against 3.17
 * with whole tiles, the layer 0.6-0.8 ms slower: 4 stages cut the consumers' waits for a full
 * stage (34% of samples with 3, s9; 18% with 4), but the worker, latency-bound on its loads of
 * a, then needs longer than the shorter main loop, and the consumers wait for it at the tile's
 * end (15%). Prefetching the next part's a into L2 (cp.async.bulk.prefetch) made it worse
 * (4.05 ms). Kept for a faster worker. */
#ifndef MG_WG_ASYNC_HALF
#define MG_WG_ASYNC_HALF 0
#endif
/* MG_WG_NS_{UP,DN}_{FWD,DGRAD,WGRAD} n (device-only, for A/Bs through MOEGEN_JIT_DEFINES; the
 * tuner does not search them; 0: the rule below): at most n pipeline stages for that GEMM.
 * MG_WG_NS_PICK: up dgrad (K = F2) and down fwd (K = FF), the two row GEMMs whose B is a
 * weight streamed along a long K, take 3 stages instead of 4 where K >= MG_WG_NS3_MIN_K. On an
 * H100 (bench/results/2026-11-27-s11, calls 3, 4; ncu, Mixtral: K 28672 and 14336) up dgrad
 * 5551 -> 5243 and 5550 -> 5315 us, down fwd 2817 -> 2620 and 2789 -> 2640, the layer 28.93 ->
 * 28.37 ms (median of 3 rounds, same call); 2 stages 7321 and 3549 us. The other GEMMs lost with
 * 3 (up fwd 5665 -> 5800, up wgrad 6058 -> 6404, down wgrad 2921 -> 3112), and OLMoE (K 2048,
 * 1024), fine-grained and small (K 6144, 3072) were level with the cap on both (a rule by K
 * keeps them at 4). A guess at why, not measured: CTAs that run fewer stages ahead stay closer
 * in step along K, so more of them find a weight tile in L2 that another just read. */
#ifndef MG_WG_NS_UP_FWD
#define MG_WG_NS_UP_FWD 0
#endif
#ifndef MG_WG_NS_UP_DGRAD
#define MG_WG_NS_UP_DGRAD 0
#endif
#ifndef MG_WG_NS_UP_WGRAD
#define MG_WG_NS_UP_WGRAD 0
#endif
#ifndef MG_WG_NS_DN_FWD
#define MG_WG_NS_DN_FWD 0
#endif
#ifndef MG_WG_NS_DN_DGRAD
#define MG_WG_NS_DN_DGRAD 0
#endif
#ifndef MG_WG_NS_DN_WGRAD
#define MG_WG_NS_DN_WGRAD 0
#endif
#ifndef MG_WG_NS3_MIN_K
#define MG_WG_NS3_MIN_K 8192
#endif
#define MG_WG_NS_PICK(knob, k) ((knob) != 0 ? (knob) : (k) >= MG_WG_NS3_MIN_K ? 3 : 0)
#ifndef MG_WG_PROD_REGS_TMA
#define MG_WG_PROD_REGS_TMA 56
#endif
#ifndef MG_WG_CONS_REGS_TMA
#define MG_WG_CONS_REGS_TMA 224
#endif
#define MG_WG_SMEM_NEED(bn) \
    (1024 + MG_WG_STAGES(bn) * (128 + (bn)) * 128 + 16 * MG_WG_STAGES(bn) + (128 + (bn)) * 8)
/* the larger of the two widths' needs (200,768 bytes), whatever the width */
#define MG_WG_SMEM_BYTES(bn) \
    (0 * (bn) + (MG_WG_SMEM_NEED(128) > MG_WG_SMEM_NEED(256) ? MG_WG_SMEM_NEED(128) : MG_WG_SMEM_NEED(256)))

/* ---------------------------------------------------------------- router */
typedef struct moe_router_fwd_params {
    const void *x;        /* [T,d] dtype */
    const void *wg;       /* [E,d] dtype */
    const float *bias;    /* [E] selection-only bias (softmax_topk, sigmoid_topk) or NULL */
    float *logits;        /* [T,E] */
    float *probs;         /* [T,E] p used by the aux loss */
    float *lse;           /* [T] logsumexp of the logits */
    int *topk_idx;        /* [T,k] */
    float *topk_w;        /* [T,k] */
    int T;
    float *tstat;         /* [T,2] per token: −Σ_e p ln p, max_e p (router statistics) */
} moe_router_fwd_params;

typedef struct moe_router_stats_params {
    const float *probs;   /* [T,E] */
    const float *lse;     /* [T] */
    float *psum;          /* [E] sum_t p[t,e] */
    float *lse2;          /* [1] sum_t lse[t]^2 */
    int T;
    const float *tstat;   /* [T,2] from fwd */
    float *loss;          /* [4]: writes [2] = sum_t entropy, [3] = sum_t max p ([0..1]: loss) */
} moe_router_stats_params;

typedef struct moe_router_loss_params {
    const float *psum;       /* [E] */
    const float *lse2;       /* [1] */
    const int *counts_all;   /* [E] assignments before drops (dispatch/scan) */
    float *loss;             /* [4] writes [0] aux, [1] zloss (stats writes [2], [3]) */
    int T;
} moe_router_loss_params;

typedef struct moe_router_bwd_params {
    const float *logits;     /* [T,E] */
    const int *topk_idx;     /* [T,k] */
    const float *topk_w;     /* [T,k] */
    const float *dw;         /* [T,k] dL/dw from combine/bwd */
    const int *counts_all;   /* [E] */
    float *dlogits;          /* [T,E] */
    int T;
} moe_router_bwd_params;

typedef struct moe_router_dwg_params {
    const float *dlogits;    /* [T,E] */
    const void *x;           /* [T,d] dtype */
    float *part;             /* [n_split,E,d] partials (n_split = ceil(T/MG_DWG_SPLIT)) */
    float *dwg;              /* [E,d] written by dwgsum (and by dwg when n_split == 1) */
    int T;
} moe_router_dwg_params;

typedef struct moe_router_dx_params {
    const float *dlogits;    /* [T,E] */
    const void *wg;          /* [E,d] dtype */
    float *dxr;              /* [T,d] router contribution to dx */
    int T;
} moe_router_dx_params;

/* ---------------------------------------------------------------- dispatch */
typedef struct moe_dispatch_params {
    const int *topk_idx;     /* [T*k] */
    int *hist;               /* [n_chunks,E]: count writes per-chunk counts, scan turns them
                                into per-chunk bases (rank of the chunk's first assignment
                                of each expert, before drops) */
    int *counts_all;         /* [E] before drops */
    int *counts;             /* [E] kept */
    int *offsets;            /* [E+1] exclusive scan of counts */
    int *n_dropped;          /* [1] */
    int *tile_off_up;        /* [E+1] exclusive scan of ceil(counts/tile_m_up) */
    int *tile_off_dn;        /* [E+1] same with tile_m_dn */
    int *perm;               /* [T*k] slot -> t*k+j (first offsets[E] valid) */
    int *slot_of;            /* [T*k] t*k+j -> slot or -1 */
    int tile_m_up, tile_m_dn;
    int capacity;            /* per-expert capacity C, or -1 for dropless */
    int T;
    const float *topk_w;     /* [T*k] routing weights: drop policy "probability" ranks by them */
    unsigned long long *thr; /* [E] select: keep key threshold per expert (drop policy "probability") */
} moe_dispatch_params;

/* ---------------------------------------------------------------- up: x -> a -> h */
typedef struct moe_up_fwd_params {
    const void *x;           /* [T,d] dtype */
    const void *w_up;        /* [G,F2,d] dtype */
    void *a;                 /* [slots,F2] dtype pre-activation */
    void *h;                 /* [slots,FF] dtype activation */
    const int *offsets, *tile_off, *perm;
    int n_groups, T;
    mg_tmap tm_a, tm_b;      /* Hopper path: operand tensor maps (mg_launch.c) */
} moe_up_fwd_params;

typedef struct moe_up_dgrad_params {
    const void *da;          /* [slots,F2] dtype */
    const void *w_up;        /* [G,F2,d] dtype */
    void *dxs;               /* [slots,d] dtype: per-slot dx */
    const int *offsets, *tile_off;
    int n_groups, T;
    mg_tmap tm_a, tm_b;      /* Hopper path: operand tensor maps (mg_launch.c) */
} moe_up_dgrad_params;

typedef struct moe_up_wgrad_params {
    const void *da;          /* [slots,F2] dtype */
    const void *x;           /* [T,d] dtype */
    float *dw_up;            /* [G,F2,d] (every group written, zeros for empty ones) */
    const int *offsets, *perm;
    int n_groups, T;
    mg_tmap tm_a;            /* Hopper path: da's tensor map (mg_launch.c; x is gathered by cp.async) */
} moe_up_wgrad_params;

/* ---------------------------------------------------------------- down: h -> z */
typedef struct moe_down_fwd_params {
    const void *h;           /* [slots,FF] dtype */
    const void *w_dn;        /* [G,d,FF] dtype */
    void *z;                 /* [slots,d] dtype */
    const int *offsets, *tile_off;
    int n_groups, T;
    mg_tmap tm_a, tm_b;      /* Hopper path: operand tensor maps (mg_launch.c) */
} moe_down_fwd_params;

typedef struct moe_down_dgrad_params {
    const void *dz;          /* [slots,d] dtype */
    const void *a;           /* [slots,F2] dtype (from up/fwd) */
    const void *w_dn;        /* [G,d,FF] dtype */
    void *da;                /* [slots,F2] dtype: dh * act'(a) */
    const int *offsets, *tile_off;
    int n_groups, T;
    mg_tmap tm_a, tm_b;      /* Hopper path: operand tensor maps (mg_launch.c) */
    mg_tmap tm_c;            /* Hopper path: a, the epilogue's operand (MG_WG_EPI_TMA) */
} moe_down_dgrad_params;

typedef struct moe_down_wgrad_params {
    const void *dz;          /* [slots,d] dtype */
    const void *h;           /* [slots,FF] dtype */
    float *dw_dn;            /* [G,d,FF] */
    const int *offsets;
    int n_groups, T;
    mg_tmap tm_a, tm_b;      /* Hopper path: operand tensor maps (mg_launch.c) */
} moe_down_wgrad_params;

/* ---------------------------------------------------------------- combine */
typedef struct moe_combine_fwd_params {
    const void *z;           /* [slots,d] dtype */
    const int *slot_of;      /* [T*k] */
    const float *topk_w;     /* [T*k] */
    const void *z_shared;    /* [S,T,d] dtype, or NULL */
    int n_shared;
    void *y;                 /* [T,d] dtype */
    int T;
} moe_combine_fwd_params;

typedef struct moe_combine_bwd_params {
    const void *dy;          /* [T,d] dtype */
    const void *z;           /* [slots,d] dtype */
    const int *slot_of;      /* [T*k] */
    const float *topk_w;     /* [T*k] */
    void *dz;                /* [slots,d] dtype: w * dy */
    float *dw;               /* [T*k] <dy, z>, 0 for dropped assignments */
    int T;
} moe_combine_bwd_params;

typedef struct moe_combine_dx_params {
    const void *dxs;         /* [slots,d] dtype */
    const int *slot_of;      /* [T*k] */
    const float *dxr;        /* [T,d] router part, or NULL */
    const void *dx_shared;   /* [S,T,d] dtype, or NULL */
    int n_shared;
    void *dx;                /* [T,d] dtype */
    int T;
} moe_combine_dx_params;

#endif
