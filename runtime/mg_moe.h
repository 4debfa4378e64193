/* mg_moe: the generated MoE layer on the GPU: builds (generate -> NVRTC -> load) the kernel
 * families of a plan, owns a workspace sized for max_tokens, and runs forward and backward
 * on a caller's stream. No allocation and no host read of device values after create, so
 * forward/backward can be captured into a CUDA graph.
 *
 * Layout (row-major, device memory; "dtype" = the spec's storage type, bf16/fp16 as 16-bit
 * words, or fp32):
 *   x, y, dy, dx [T,d] dtype;  wg [E,d], w_up [E,F2,d], w_dn [E,d,ff], ws_up [S,F2,d],
 *   ws_dn [S,d,ff] dtype;  bias [E] fp32 (selection only, softmax_topk/sigmoid_topk; may be NULL);
 *   weight gradients fp32, same shapes. */
#ifndef MG_MOE_H
#define MG_MOE_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include "mg_err.h"
#include "mg_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_moe mg_moe;

typedef struct mg_moe_opts {
    const char *arch;   /* NVRTC arch; NULL = from the current device (sm_90a on 9.0, sm_80 on 8.x) */
    int no_cache;       /* 1: bypass the NVRTC cache */
    int jobs;           /* parallel compiles; 0 = one per core */
    int verbose;        /* 1: print per-family compile time, cache hits, registers */
} mg_moe_opts;

typedef struct mg_moe_weights {
    const void *wg;         /* [E,d] dtype */
    const float *bias;      /* [E] or NULL */
    const void *w_up;       /* [E,F2,d] dtype */
    const void *w_dn;       /* [E,d,ff] dtype */
    const void *ws_up;      /* [S,F2,d] dtype, NULL when S = 0 */
    const void *ws_dn;      /* [S,d,ff] dtype, NULL when S = 0 */
} mg_moe_weights;

typedef struct mg_moe_grads {   /* fp32, every buffer fully written by backward */
    float *dwg;             /* [E,d] */
    float *dw_up;           /* [E,F2,d] */
    float *dw_dn;           /* [E,d,ff] */
    float *dws_up;          /* [S,F2,d] or NULL when S = 0 */
    float *dws_dn;          /* [S,d,ff] or NULL when S = 0 */
} mg_moe_grads;

/* Device pointers into the workspace, valid after a forward of T tokens. */
typedef struct mg_moe_state {
    const float *logits;     /* [T,E] */
    const float *probs;      /* [T,E] */
    const int *topk_idx;     /* [T,k] */
    const float *topk_w;     /* [T,k] */
    const int *counts;       /* [E] kept */
    const int *counts_all;   /* [E] before drops */
    const int *offsets;      /* [E+1] */
    const int *perm;         /* [T*k] (first offsets[E] valid) */
    const int *slot_of;      /* [T*k] */
    const int *n_dropped;    /* [1] */
    const float *loss;       /* [4] aux, zloss, Σ_t router entropy −Σ_e p ln p, Σ_t max_e p */
    const float *dlogits;    /* [T,E] after backward */
} mg_moe_state;

/* Generates, compiles (through the cache) and loads every family of plan on the current
 * device, and allocates the workspace for up to max_tokens tokens. */
int mg_moe_create(const mg_plan *plan, const mg_moe_opts *o, int max_tokens, mg_moe **out, mg_err *err);
void mg_moe_destroy(mg_moe *m);

/* y = layer(x) for T tokens (1 <= T <= max_tokens); keeps what backward needs. */
int mg_moe_forward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, void *y,
                   int T, mg_err *err);
/* Gradients of L = Σ y·dy + aux + zloss; must follow a forward on the same x, w and T.
 * dx [T,d] dtype. */
int mg_moe_backward(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x,
                    const void *dy, void *dx, const mg_moe_grads *g, int T, mg_err *err);

/* Expert parallelism (runtime/mg_gpu_ep.c): forward = route, [exchange: the kept rows go to
 * their experts' owners, each runs mg_moe_expert_fwd per local expert, the outputs come back into
 * mg_moe_ep_bufs' z in slot order], shared_fwd, combine; backward = route_bwd (dz of every kept slot,
 * router backward), [dz rows to the owners, mg_moe_expert_bwd, dx rows back into dxs in slot order],
 * shared_bwd, router_dx (dwg, dx). The shared phases (no-ops without shared experts) read x / dy and
 * write only the shared experts' workspace and g->dws_up/dws_dn, so they may run during an exchange. The expert calls run expert e's MLP on R >= 1 rows taken in order (as the
 * shared experts run): w_up [F2,d] / w_dn [d,ff] of one expert, x [R,d], a [R,F2], h [R,ff], dz
 * [R,d], da [R,F2], z, dx [R,d] dtype; g_up, g_dn written (fp32). */
int mg_moe_route(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, int T, mg_err *err);
int mg_moe_shared_fwd(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, int T, mg_err *err);
int mg_moe_shared_bwd(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, const void *dy,
                      const mg_moe_grads *g, int T, mg_err *err);
int mg_moe_combine(mg_moe *m, cudaStream_t stream, void *y, int T, mg_err *err);
int mg_moe_route_bwd(mg_moe *m, cudaStream_t stream, const void *dy, int T, mg_err *err);
int mg_moe_router_dx(mg_moe *m, cudaStream_t stream, const mg_moe_weights *w, const void *x, void *dx, float *dwg,
                     int T, mg_err *err);
int mg_moe_expert_fwd(mg_moe *m, cudaStream_t stream, const void *w_up, const void *w_dn, const void *x, void *a,
                      void *h, void *z, int R, mg_err *err);
int mg_moe_expert_bwd(mg_moe *m, cudaStream_t stream, const void *w_up, const void *w_dn, const void *x, const void *a,
                      const void *h, const void *dz, void *da, void *dx, float *g_up, float *g_dn, int R,
                      mg_err *err);
/* The workspace's slot-order buffers, dtype: z [T·k,d] (combine reads it), dz [T·k,d]
 * (route_bwd writes it), dxs [T·k,d] (router_dx reads it). */
void mg_moe_ep_bufs(const mg_moe *m, void **z, void **dz, void **dxs);

void mg_moe_get_state(const mg_moe *m, mg_moe_state *s);
size_t mg_moe_workspace_bytes(const mg_moe *m);
/* Fills the whole workspace with 0xFF bytes (NaN for floats) so tests catch reads of
 * anything a kernel should have written first. */
int mg_moe_poison(mg_moe *m, cudaStream_t stream, mg_err *err);
/* The capacity C used for T tokens (ceil(cf·T·k/E)), or -1 when dropless. */
int mg_moe_capacity(const mg_moe *m, int T);

/* Host-side storage conversions (round to nearest even, like the device). */
void mg_host_to_dtype(int dtype, const float *src, void *dst, long n);
void mg_host_from_dtype(int dtype, const void *src, float *dst, long n);

#ifdef __cplusplus
}
#endif
#endif
