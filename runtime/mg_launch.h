/* mg_launch: the kernel sequence of one generated MoE layer: kernel lookup, dynamic shared
 * memory, workspace carving, grid rules, and the forward and backward launch order.
 *
 * Self-contained on purpose: C99, the CUDA runtime API and templates/moe_params.h only (no
 * Lua, no NVRTC, no other moegen module). mg_moe.c uses it after compiling the families with
 * NVRTC, and every bundle written by `moegen gen --bundle` carries a verbatim copy of this
 * file and mg_launch.c next to its precompiled cubins, so both run the same launches.
 *
 * A bundle compiles the copy into its loader as one translation unit with
 * `#define MG_LAUNCH_API static`, so several bundles (and libmoegen) link into one program
 * without clashing symbols. The grid rules mirror the `// moegen:grid` lines of templates/. */
#ifndef MG_LAUNCH_H
#define MG_LAUNCH_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include "moe_params.h"   /* the kernels' parameter structs, shared with the device */

#ifndef MG_LAUNCH_API
#define MG_LAUNCH_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes, the same values as MG_OK / MG_EUSER / MG_EINTERNAL (mg_err.h). */
enum { MG_LAUNCH_OK = 0, MG_LAUNCH_EUSER = 1, MG_LAUNCH_ECUDA = 2 };

/* Kernel families in the order of mg_family_id (gen/mg_plan.h). */
enum { MG_LAUNCH_ROUTER, MG_LAUNCH_DISPATCH, MG_LAUNCH_UP, MG_LAUNCH_DOWN, MG_LAUNCH_COMBINE, MG_LAUNCH_FAMILIES };

/* Every kernel entry the layer launches; kernel k is symbol "<family name>_<entry>". */
enum {
    MG_K_ROUTER_FWD, MG_K_ROUTER_STATS, MG_K_ROUTER_LOSS, MG_K_ROUTER_BWD, MG_K_ROUTER_DWG, MG_K_ROUTER_DWGSUM,
    MG_K_ROUTER_DX,
    MG_K_DISPATCH_SELECT, MG_K_DISPATCH_COUNT, MG_K_DISPATCH_SCAN, MG_K_DISPATCH_PLACE,
    MG_K_UP_FWD, MG_K_UP_DGRAD, MG_K_UP_WGRAD,
    MG_K_DOWN_FWD, MG_K_DOWN_DGRAD, MG_K_DOWN_WGRAD,
    MG_K_COMBINE_FWD, MG_K_COMBINE_BWD, MG_K_COMBINE_DX,
    MG_K_COUNT
};

typedef struct mg_launch_tile { int bm, bn, bk, stages, warps; } mg_launch_tile;

/* cuTensorMapEncodeTiled (driver API, CUDA 12.0+), reached through
 * cudaGetDriverEntryPointByVersion: libcuda is never linked. Enums passed as int, values of
 * cuda.h (mg_launch.c names the ones used). */
typedef int (*mg_launch_tmap_encode_fn)(mg_tmap *map, int dtype, unsigned rank, void *base,
                                        const unsigned long long *dims, const unsigned long long *strides,
                                        const unsigned *box, const unsigned *elem_strides, int interleave,
                                        int swizzle, int l2_promotion, int oob_fill);

/* What the launches depend on: the spec's dims and the GEMM tiles of families up and down. */
typedef struct mg_launch_dims {
    int d, ff, f2, E, k, S;   /* f2 = 2*ff for GLU activations, else ff; S = shared experts */
    int esz;                  /* bytes per element of the storage dtype (2 or 4) */
    double cf;                /* capacity factor, 0 = dropless */
    int drop_prob;            /* capacity mode drops by probability (dispatch/select), else by position */
    mg_launch_tile up, dn;
} mg_launch_dims;

/* Loaded kernels: filled by mg_launch_load. */
typedef struct mg_launch {
    mg_launch_dims dim;
    cudaKernel_t kern[MG_K_COUNT];
    char sym[MG_K_COUNT][192];
    size_t smem[MG_K_COUNT];   /* dynamic shared memory per launch */
    int nsm;                   /* multiprocessors: the persistent grid of the Hopper GEMMs */
    int wg;                    /* set before mg_launch_load: 1 when the kernels were built for sm_90a,
                                  so GEMMs with 16-bit dtypes and bm 128 run the Hopper path
                                  (templates/mg_wgmma.cuh); 0: mma.sync launches. mg_launch_load
                                  clears it when the driver offers no tensor-map encoder */
    int wg_bwd;                /* dgrad/wgrad on the Hopper path too: MG_WG_BWD, or env MOEGEN_WG_BWD=0|1 */
    int wg_cl_grid[MG_K_COUNT];   /* > 0: launch kernel k in clusters of 2 over this many CTAs
                                  (env MOEGEN_WG_CLUSTER=2, the four row GEMMs on the Hopper
                                  path; 2 x the device's active clusters of 2) */
    mg_launch_tmap_encode_fn tmap_encode;   /* the Hopper path's TMA maps, rebuilt at every launch
                                  from that launch's pointers (host arithmetic, no device call) */
} mg_launch;

/* Device pointers into one workspace, carved for up to max_T tokens. */
typedef struct mg_launch_ws {
    int max_T;
    float *logits, *probs, *lse, *topk_w, *psum, *lse2, *loss, *dw, *dlogits, *dxr, *dwg_part, *tstat;
    unsigned long long *thr;
    int *topk_idx, *hist, *counts_all, *counts, *offsets, *n_dropped, *tile_off_up, *tile_off_dn, *perm, *slot_of;
    void *a, *h, *a_sh, *h_sh, *dz, *da, *da_sh;
    void *z, *z_sh, *dxs, *dxs_sh;   /* dtype, like every peer's per-slot rows */
} mg_launch_ws;

/* The same buffers as mg_moe_weights / mg_moe_grads (runtime/mg_moe.h documents the layouts). */
typedef struct mg_launch_weights {
    const void *wg, *w_up, *w_dn, *ws_up, *ws_dn;
    const float *bias;
} mg_launch_weights;
typedef struct mg_launch_grads {
    float *dwg, *dw_up, *dw_dn, *dws_up, *dws_dn;
} mg_launch_grads;

/* Looks up every kernel in lib[family] (loaded on the current device) by
 * "<fam_name[family]>_<entry>", sizes the GEMM launches' shared memory, checks it against
 * the device limit and raises the kernels' limit where above 48 KiB. */
MG_LAUNCH_API int mg_launch_load(mg_launch *L, const mg_launch_dims *dim, const cudaLibrary_t lib[MG_LAUNCH_FAMILIES],
                                 const char *const fam_name[MG_LAUNCH_FAMILIES], char *msg, size_t n);

/* Workspace bytes for max_T tokens; with base non-NULL also carves ws out of base (which
 * must be 256-byte aligned). Pure host arithmetic. */
MG_LAUNCH_API size_t mg_launch_carve(const mg_launch_dims *dim, int max_T, void *base, mg_launch_ws *ws);

/* The capacity C for T tokens (ceil(cf·T·k/E)), or -1 when dropless. */
MG_LAUNCH_API int mg_launch_capacity(const mg_launch_dims *dim, int T);

/* y = layer(x) for T tokens (1 <= T <= ws->max_T); keeps in ws what backward needs.
 * On the Hopper path the GEMM launches carry TMA tensor maps encoding this call's pointers
 * (weights, workspace, dy) by value, like the pointers themselves: a captured CUDA graph
 * replays them, so replays must use the same buffers (as for any captured launch). Weight
 * and dy pointers must be 16-byte aligned there (else MG_LAUNCH_EUSER). */
MG_LAUNCH_API int mg_launch_forward(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                    const mg_launch_weights *w, const void *x, void *y, int T, char *msg, size_t n);
/* The phases of mg_launch_forward / mg_launch_backward (the same launches in the same order), for
 * expert parallelism: route (router, dispatch, losses), shared_fwd (the shared experts on all T
 * tokens, into the workspace) and combine on the tokens' rank, one expert's MLP on R rows in order
 * (the shared experts' launches) on the expert's owner; route_bwd (combine and router backward:
 * ws->dz per slot, dlogits), expert_bwd, shared_bwd (ws->dxs_sh, g->dws_up/dws_dn), router_dx (dwg,
 * and dx from ws->dxs of the kept slots plus the shared experts' and the router's part). R >= 1.
 * The shared phases touch only the shared experts' buffers, so they may run while the routed rows
 * are exchanged. */
MG_LAUNCH_API int mg_launch_route(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                  const mg_launch_weights *w, const void *x, int T, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_expert_fwd(const mg_launch *L, cudaStream_t stream, const void *w_up, const void *w_dn,
                                       const void *x, void *a, void *h, void *z, int R, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_shared_fwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                       const mg_launch_weights *w, const void *x, int T, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_shared_bwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                       const mg_launch_weights *w, const void *x, const void *dy,
                                       const mg_launch_grads *g, int T, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_combine(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream, void *y, int T,
                                    char *msg, size_t n);
MG_LAUNCH_API int mg_launch_route_bwd(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream, const void *dy,
                                      int T, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_expert_bwd(const mg_launch *L, cudaStream_t stream, const void *w_up, const void *w_dn,
                                       const void *x, const void *a, const void *h, const void *dz, void *da,
                                       void *dx, float *g_up, float *g_dn, int R, char *msg, size_t n);
MG_LAUNCH_API int mg_launch_router_dx(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                      const mg_launch_weights *w, const void *x, void *dx, float *dwg, int T,
                                      char *msg, size_t n);
/* Gradients of L = Σ y·dy + aux + zloss; must follow a forward on the same ws, x, w and T. */
MG_LAUNCH_API int mg_launch_backward(const mg_launch *L, const mg_launch_ws *ws, cudaStream_t stream,
                                     const mg_launch_weights *w, const void *x, const void *dy, void *dx,
                                     const mg_launch_grads *g, int T, char *msg, size_t n);

#ifdef __cplusplus
}
#endif
#endif
