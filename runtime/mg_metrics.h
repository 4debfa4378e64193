/* mg_metrics: routing analytics of the MoE layers, from the router's own outputs.
 *
 * Backend-neutral: the caller hands over host arrays the router already produced for one
 * routing batch (a micro-batch of T tokens of one MoE layer) — the CPU trainer mg_ref's
 * outputs directly, the GPU trainer the same arrays copied from the device every log step —
 * and nothing here looks at hidden states or makes a pass over the model. Per layer, over the
 * logging window (the steps since the last mg_metrics_reset):
 *
 *   load[e]      assignments to expert e before capacity drops (counts_all, or from topk_idx)
 *   cv           std(load)/mean(load), population std over the E experts (0 = balanced)
 *   max_mean     max(load)/mean(load)
 *   dropped_frac dropped assignments / (tokens·k)
 *   entropy      mean over tokens of −Σ_e p·ln p of the router probabilities (nats; ≤ ln E)
 *   top1         mean over tokens of max_e p
 *   aux, z       the layer's aux and z losses, summed per step and averaged over the steps
 *   coact[e][f]  tokens that chose both e and f (e ≠ f); coact[e][e] = tokens that chose e
 *   dead         experts with load 0 over the window
 *
 * p is mg_ref's `probs` (softmax, or the normalized sigmoid for sigmoid_topk).
 *
 * What a trainer calls (the GPU trainer: the same, with arrays copied from the device):
 *   mg_metrics_init(&mx, n_moe_layers, layer_ids, E, k);            once
 *   mg_metrics_add(&mx, li, &(mg_metrics_batch){...});              per MoE layer per micro-batch
 *   mg_metrics_end_step(&mx);                                       per optimizer step
 *   every log step: mg_metrics_json(&mx, FILE)  (appends `, "moe": [...]` to a metrics line),
 *                   mg_metrics_tb(&mx, tb, step, image), mg_metrics_reset(&mx)
 */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mg_tb;

/* One routing batch of one MoE layer. Only T and one of counts_all/topk_idx are required. */
typedef struct mg_metrics_batch {
    int T;                    /* tokens routed */
    const int *counts_all;    /* [E] assignments before drops; NULL: counted from topk_idx */
    const int *topk_idx;      /* [T, k] chosen experts; NULL: co-activation from coact, if any */
    const int *coact;         /* [E, E] co-activation counts of the batch already reduced (the GPU
                                 trainer's, counted on the device like mg_metrics_coact); used when
                                 topk_idx is NULL; NULL too: no co-activation this batch */
    const float *probs;       /* [T, E] router probabilities; NULL: use the two sums below */
    double entropy_sum;       /* Σ_t −Σ_e p ln p   (when probs is NULL, e.g. reduced on device) */
    double top1_sum;          /* Σ_t max_e p       (same) */
    double aux, z;            /* this batch's aux and z loss of the layer (as added to the loss) */
    long dropped;             /* capacity drops */
} mg_metrics_batch;

typedef struct mg_metrics_layer {
    int layer;                /* model layer index (0-based) */
    long tokens, dropped;
    double entropy_sum, top1_sum, aux, z;
    long *load;               /* [E] */
    long *coact;              /* [E, E] */
} mg_metrics_layer;

typedef struct mg_metrics {
    int n, E, k;
    long steps;               /* optimizer steps in the window */
    mg_metrics_layer *l;      /* [n] */
} mg_metrics;

/* Scalars of one layer over the window. */
typedef struct mg_metrics_summary {
    long tokens;
    double cv, max_mean, dropped_frac, entropy, top1, aux, z;
    int dead;
} mg_metrics_summary;

/* layer_ids: the model layer index of each of the n MoE layers (NULL: 0..n-1). Returns -1 on
 * allocation failure. n = 0 is allowed (a dense model: everything is a no-op). */
int  mg_metrics_init(mg_metrics *m, int n, const int *layer_ids, int E, int k);
void mg_metrics_free(mg_metrics *m);
void mg_metrics_reset(mg_metrics *m);
void mg_metrics_add(mg_metrics *m, int li, const mg_metrics_batch *b);
void mg_metrics_end_step(mg_metrics *m);
void mg_metrics_summarize(const mg_metrics *m, int li, mg_metrics_summary *s);

/* Σ_t −Σ_e p ln p and Σ_t max_e p over probs [T, E] (what a device reduction would return). */
void mg_metrics_probs_sums(const float *probs, int T, int E, double *entropy_sum, double *top1_sum);

/* coact[e·E + f] += tokens of topk_idx [T, k] that chose both e and f (e ≠ f), coact[e·E + e] +=
 * tokens that chose e: for each token, each pair (i, j) of its k choices with i = j or
 * s_i ≠ s_j; choices outside [0, E) are skipped. Capacity drops do not matter (topk_idx is the
 * routing before drops), so the diagonal is counts_all. The GPU's mg_gpu_coact kernel counts
 * the same pairs. */
void mg_metrics_coact(const int *topk_idx, int T, int E, int k, long *coact);

/* Appends `, "moe": [{"layer", "tokens", "load", "cv", "max_mean", "dropped_frac", "entropy",
 * "top1", "aux", "z", "dead", "coact"}, ...]` (17 significant digits) to an open JSON object.
 * Nothing when there are no MoE layers or the window is empty. */
void mg_metrics_json(const mg_metrics *m, FILE *f);

/* TensorBoard: scalars moe/L<layer>/{load_cv,max_mean,dropped_frac,entropy,top1,aux,z,dead},
 * histogram moe/L<layer>/load (one bucket per expert), and with image = 1 the PNG heatmap
 * moe/load_heatmap (a row per MoE layer, a column per expert, load/mean on a blue→red scale). */
void mg_metrics_tb(const mg_metrics *m, struct mg_tb *tb, long step, int image);

#ifdef __cplusplus
}
#endif
#endif
