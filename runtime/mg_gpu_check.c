/* mg_gpu_check: one training step on the CPU and on the GPU, compared per tensor (see mg_gpu_check.h). */
#include "mg_gpu_check.h"
#include "mg_ckpt.h"
#include "mg_cpu_model.h"
#include "mg_cpu_ops.h"
#include "mg_gpu_model.h"
#include "mg_metrics.h"
#include "mg_optim.h"
#include "mg_rng.h"
#include "mg_safetensors.h"
#include "mg_sb.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct step_out {
    double loss, ce, aux, z;
} step_out;

static int write_npy_i32(const char *path, const int32_t *x, int A, int B, int W, mg_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", path, strerror(errno));
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %d, %d), }", A, B, W);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;   /* header padded to 64 bytes, ends in \n */
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f), fputc(hl >> 8, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(x, 4, (size_t)A * B * W, f);
    if (fclose(f)) return mg_err_set(err, MG_EUSER, "%s: write failed", path);
    return 0;
}

/* Gradients (or any buffer in the parameter layout) as safetensors F32 with HF names. */
static int write_buf(const char *path, const mg_cpu_model *m, const float *buf, mg_err *err)
{
    mg_st_entry *e = calloc((size_t)m->n_tensors, sizeof *e);
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        e[j] = (mg_st_entry){.name = t->name, .ndim = t->ndim, .shape = {t->shape[0], t->shape[1]}, .data = buf + t->off};
    }
    int rc = mg_st_write(path, e, m->n_tensors, MG_ST_F32, NULL, err);
    free(e);
    return rc;
}

static void write_config(const char *path, const mg_spec *s, const mg_cpu_model *m, int B, const step_out *cpu,
                         const step_out *gpu)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "{\"name\": \"%s\", \"vocab\": %d, \"d_model\": %d, \"n_layer\": %d, \"n_head\": %d, \"n_kv_head\": %d, "
            "\"head_dim\": %d, \"seq_len\": %d, \"tie_embeddings\": %d, \"rope_theta\": %.17g, \"norm_eps\": %.17g, "
            "\"d_ff_dense\": %d, \"experts\": %d, \"top_k\": %d, \"d_ff\": %d, \"activation\": \"%s\", "
            "\"router\": \"%s\", \"renormalize\": %d, \"capacity_factor\": %.17g, \"aux_loss\": %.17g, "
            "\"z_loss\": %.17g, \"every\": %d, \"shared_experts\": %d, \"dtype\": \"%s\", \"grad_accum\": %d, "
            "\"batch\": %d, \"dropout\": %.17g, \"seed\": %d, \"step\": 0,\n \"cpu\": {\"loss\": %.17g, \"ce\": %.17g, "
            "\"aux\": %.17g, \"z\": %.17g}",
            s->name, m->V, m->d, m->L, m->H, m->Hkv, m->hd, m->T, s->model.tie_embeddings, s->model.rope_theta,
            s->model.norm_eps, m->ffd, m->E, m->k, m->ff, mg_act_names[m->act], mg_router_names[s->moe.router],
            s->moe.renormalize, s->moe.capacity_factor, s->moe.aux_loss, s->moe.z_loss, s->moe.every, m->S,
            mg_dtype_names[s->dtype], s->train.grad_accum, B, s->train.dropout, s->train.seed, cpu->loss, cpu->ce,
            cpu->aux, cpu->z);
    if (gpu) fprintf(f, ",\n \"gpu\": {\"loss\": %.17g, \"ce\": %.17g, \"aux\": %.17g, \"z\": %.17g}", gpu->loss, gpu->ce, gpu->aux, gpu->z);
    fputs("}\n", f);
    fclose(f);
}

static void sum_outs(const mg_cpu_out *o, int A, step_out *s)
{
    memset(s, 0, sizeof *s);
    for (int a = 0; a < A; a++) {
        s->ce += o[a].ce_sum / (double)o[a].n_tokens / A;
        s->aux += o[a].aux;
        s->z += o[a].zloss;
    }
    s->loss = s->ce + s->aux + s->z;
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-30 ? fabs(b) : 1e-30); }

/* Per-tensor comparison of x (GPU) against ref (CPU); returns the number of failures. */
static int compare(FILE *out, const char *what, const mg_cpu_model *m, const float *x, const float *ref, double tol,
                   int gate)
{
    double gtot = 0;
    for (long i = 0; i < m->n_params; i++) gtot += (double)ref[i] * ref[i];
    gtot = sqrt(gtot);
    int fails = 0;
    fprintf(out, "  %-58s %12s %10s %10s  %s\n", what, "|cpu|", "rel L2", "max abs", "");
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        double n2 = 0, e2 = 0, mx = 0;
        for (long i = 0; i < t->n; i++) {
            double r = ref[t->off + i], d = (double)x[t->off + i] - r;
            n2 += r * r, e2 += d * d;
            if (fabs(d) > mx || d != d) mx = fabs(d);
        }
        double rl = sqrt(e2) / (sqrt(n2) > 1e-30 ? sqrt(n2) : 1e-30);
        int small = sqrt(n2) < 1e-6 * gtot, bad = gate && !small && !(rl <= tol);
        fails += bad;
        fprintf(out, "  %-58s %12.4e %10.3e %10.3e  %s\n", t->name, sqrt(n2), rl, mx,
                !gate ? "info" : small ? "tiny (reported only)" : bad ? "FAIL" : "ok");
    }
    return fails;
}

/* One training step's forward+backward on the CPU model (grads zeroed first). */
/* route: NULL, or [a][layer] top-k choices to replay in the MoE layers (mg_ref_forward_routed). */
static void cpu_step(mg_cpu_model *cm, const int32_t *tok, int A, int B, int W, uint64_t seed, int *const *route,
                     mg_cpu_out *co, step_out *cs, double *gn)
{
    memset(cm->grads, 0, sizeof(float) * (size_t)cm->n_params);
    for (int a = 0; a < A; a++) {
        mg_cpu_ctx c = {.train = 1, .seed = seed, .step = 0, .micro = a, .scale = 1.0 / A};
        for (int i = 0; i < cm->L; i++) cm->layers[i].force_idx = route ? route[a * cm->L + i] : NULL;
        mg_cpu_model_run(cm, tok + (long)a * B * W, B, &c, 1, &co[a]);
    }
    for (int i = 0; i < cm->L; i++) cm->layers[i].force_idx = NULL;
    sum_outs(co, A, cs);
    *gn = mg_grad_norm(cm->grads, cm->n_params);
}

/* The score the router selects by (mg_ref.h): p (softmax/switch) or sigmoid(logit), plus the
 * selection bias when there is one. */
static double sel_score(const mg_cpu_model *m, const mg_cpu_layer *l, long t, int e)
{
    double v = m->spec.moe.router == MG_ROUTER_SIGMOID_TOPK ? 1.0 / (1.0 + exp(-(double)l->rf.logits[t * m->E + e]))
                                                             : (double)l->rf.probs[t * m->E + e];
    return v + (l->sel_bias ? l->sel_bias[e] : 0.0);
}

/* Compares the GPU's top-k choices of one MoE layer (gidx, [N,k]) with the CPU's own (in l->rf,
 * which must hold the same micro-batch) and measures each differing token's score gap in the
 * CPU's view: how far the GPU's choice in a differing slot falls below the CPU's choice there,
 * relative to the spread (RMS about the mean) of that layer's scores. Rounding of bf16 inputs
 * moves scores by a small fraction of the spread, so a larger gap is a routing error. */
typedef struct route_diff {
    long tokens, differ;
    double worst;   /* largest gap / spread over the differing tokens */
} route_diff;

static void route_compare(const mg_cpu_model *m, const mg_cpu_layer *l, const int *gidx, long N, route_diff *rd)
{
    double s1 = 0, s2 = 0;
    for (long t = 0; t < N; t++)
        for (int e = 0; e < m->E; e++) {
            double v = sel_score(m, l, t, e);
            s1 += v, s2 += v * v;
        }
    double n = (double)N * m->E, spread = sqrt(fmax(s2 / n - (s1 / n) * (s1 / n), 1e-30));
    for (long t = 0; t < N; t++) {
        const int *ci = l->rf.topk_idx + t * m->k, *gi = gidx + t * m->k;
        double gap = 0;
        int same = 1;
        for (int j = 0; j < m->k; j++) {
            if (ci[j] == gi[j]) continue;
            same = 0;
            if (gi[j] < 0 || gi[j] >= m->E) { gap = INFINITY; break; }
            gap = fmax(gap, sel_score(m, l, t, ci[j]) - sel_score(m, l, t, gi[j]));
        }
        rd->tokens++;
        if (!same) rd->differ++, rd->worst = fmax(rd->worst, gap / spread);
    }
}

/* Router entropy and top-1 as the GPU's routing kernels reduce them (mg_gpu_layer_router_sums)
 * against mg_metrics_probs_sums of the CPU's probabilities (l->rf of micro-batch a), as per-token
 * means: the largest differences so far in worst[0..1]. */
static void router_stats_add(const mg_cpu_model *cm, const mg_cpu_layer *l, const mg_gpu_model *g, int a, int i,
                             long N, double worst[2])
{
    double ch, ct, gh, gt;
    mg_metrics_probs_sums(l->rf.probs, (int)N, cm->E, &ch, &ct);
    mg_gpu_layer_router_sums(g, a, i, &gh, &gt);
    worst[0] = fmax(worst[0], fabs(gh - ch) / N), worst[1] = fmax(worst[1], fabs(gt - ct) / N);
}

/* The GPU's routing and router statistics against the CPU's, micro-batch by micro-batch (one
 * forward-only CPU pass each). Routing differences that are near ties (route_compare) are
 * expected in bf16; then the CPU step is redone with the GPU's choices replayed, so the loss and
 * gradient comparisons that follow test the kernels and not the tie-break. A difference beyond
 * the bound is a failure. After mg_gpu_read_stats. */
static int check_routing(FILE *out, mg_cpu_model *cm, const mg_gpu_model *g, const int32_t *tok, int A, int B, int W,
                         uint64_t seed, int *const *groute, int lp, mg_cpu_out *co, step_out *cs, double *gn,
                         int *replayed, int *n_fail)
{
    double bound = lp ? 1e-3 : 0.1, sbound = lp ? 1e-4 : 2e-2, worst[2] = {0, 0};
    long N = (long)B * cm->T;
    route_diff all = {0};
    mg_cpu_out tmp;
    *replayed = 0;
    for (int a = 0; a < A; a++) {
        mg_cpu_ctx c = {.train = 1, .seed = seed, .step = 0, .micro = a, .scale = 1.0 / A};
        mg_cpu_model_run(cm, tok + (long)a * B * W, B, &c, 0, &tmp);
        for (int i = 0; i < cm->L; i++) {
            if (!cm->layers[i].moe) continue;
            router_stats_add(cm, &cm->layers[i], g, a, i, N, worst);
            route_compare(cm, &cm->layers[i], groute[a * cm->L + i], N, &all);
        }
    }
    if (!all.tokens) return MG_OK;
    int sbad = !(worst[0] <= sbound && worst[1] <= sbound);
    fprintf(out, "  router statistics (device-reduced, per-token means): entropy off by %.2e, top-1 by %.2e "
            "(bound %.0e)  %s\n", worst[0], worst[1], sbound, sbad ? "FAIL" : "ok");
    *n_fail += sbad;
    int bad = all.differ && !(all.worst <= bound);
    fprintf(out, "  routing: %ld of %ld token-layers choose differently on the GPU; largest score gap %.2e of the "
            "score spread (bound %.0e: rounding near-ties)  %s\n", all.differ, all.tokens, all.worst, bound,
            bad ? "FAIL" : "ok");
    *n_fail += bad;
    if (!all.differ) return MG_OK;
    cpu_step(cm, tok, A, B, W, seed, groute, co, cs, gn);
    *replayed = 1;
    fprintf(out, "  cpu with the GPU's routing replayed: loss %.8f (ce %.8f aux %.3e z %.3e), grad norm %.6e\n",
            cs->loss, cs->ce, cs->aux, cs->z, *gn);
    return MG_OK;
}

/* Expert co-activation as the GPU counts it (mg_gpu_layer_coact) against mg_metrics_coact of the
 * GPU's own top-k (groute, which check_routing has compared with the CPU's), per micro-batch and
 * MoE layer: this checks the device counting, exactly, with no CPU pass. After mg_gpu_read_stats. */
static void check_coact(FILE *out, const mg_cpu_model *cm, const mg_gpu_model *g, int A, int B,
                        int *const *groute, int *n_fail)
{
    long N = (long)B * cm->T, differ = 0, entries = 0, missing = 0;
    long *want = malloc(sizeof(long) * (size_t)cm->E * cm->E);
    for (int a = 0; a < A; a++)
        for (int i = 0; i < cm->L; i++) {
            if (!cm->layers[i].moe) continue;
            const int *got = mg_gpu_layer_coact(g, a, i);
            memset(want, 0, sizeof(long) * (size_t)cm->E * cm->E);
            mg_metrics_coact(groute[a * cm->L + i], (int)N, cm->E, cm->k, want);
            for (long e = 0; e < (long)cm->E * cm->E; e++) differ += !got || got[e] != want[e];
            entries += (long)cm->E * cm->E;
            missing += !got;
        }
    free(want);
    if (!entries) return;
    int bad = differ > 0;
    fprintf(out, "  co-activation (device-counted, vs the GPU's top-k): %ld of %ld counts differ%s  %s\n", differ,
            entries, missing ? " (not counted on the GPU)" : "", bad ? "FAIL" : "ok");
    *n_fail += bad;
}

/* routing.npy: int32 [A·n_moe_layers, B·T, k] (micro-batch major, then MoE layers in order): the GPU's
 * choices that the dumped CPU gradients replayed. */
static int write_routing(const char *dir, const mg_cpu_model *m, int *const *groute, int A, long N, mg_err *err)
{
    int nm = 0;
    for (int i = 0; i < m->L; i++) nm += m->layers[i].moe;
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)A * nm * N * m->k);
    long o = 0;
    for (int a = 0; a < A; a++)
        for (int i = 0; i < m->L; i++)
            if (m->layers[i].moe) memcpy(buf + o, groute[a * m->L + i], sizeof(int) * (size_t)N * m->k), o += N * m->k;
    char path[1200];
    snprintf(path, sizeof path, "%s/routing.npy", dir);
    int rc = write_npy_i32(path, buf, A * nm, (int)N, m->k, err);
    free(buf);
    return rc;
}

int mg_gpu_check_step(const mg_spec *spec, const char *dump_dir, FILE *out, int *n_fail, mg_err *err)
{
    const mg_spec *s = spec;
    int A = s->train.grad_accum > 0 ? s->train.grad_accum : 1, B = s->train.batch < 8 ? s->train.batch : 8;
    int T = s->model.seq_len, W = T + 1, lp = s->dtype == MG_DTYPE_FP32;
    double tol_loss = lp ? 1e-4 : 1e-2, tol_grad = lp ? 1e-4 : 2e-2;
    uint64_t seed = (uint64_t)s->train.seed;
    *n_fail = 0;
    mg_cpu_model cm, hm;
    memset(&hm, 0, sizeof hm);
    int rc = mg_cpu_model_create(&cm, s, B, err);
    if (rc) return rc;
    mg_cpu_model_init_weights(&cm, seed);
    float *p0 = malloc(sizeof(float) * (size_t)cm.n_params);
    memcpy(p0, cm.params, sizeof(float) * (size_t)cm.n_params);

    int32_t *tok = malloc(sizeof(int32_t) * (size_t)A * B * W);
    mg_rng r;
    mg_rng_seed(&r, mg_mix64(seed) ^ 0x636865636bull);   /* "check" */
    for (long i = 0; i < (long)A * B * W; i++) tok[i] = (int32_t)(mg_rng_u64(&r) % (uint64_t)cm.V);

    fprintf(out, "check-step: %s (%s): %d micro-batch(es) of %d x %d tokens, %ld parameters in %d tensors; bounds: "
            "loss rel %.0e, grad rel L2 %.0e\n", s->name, mg_dtype_names[s->dtype], A, B, T, cm.n_params, cm.n_tensors,
            tol_loss, tol_grad);

    /* CPU oracle */
    mg_cpu_out *co = calloc((size_t)A, sizeof *co), *go = calloc((size_t)A, sizeof *go);
    step_out cs, gs;
    double cpu_gn;
    cpu_step(&cm, tok, A, B, W, seed, NULL, co, &cs, &cpu_gn);
    fprintf(out, "  cpu: loss %.8f (ce %.8f aux %.3e z %.3e), grad norm %.6e\n", cs.loss, cs.ce, cs.aux, cs.z, cpu_gn);
    long N = (long)B * T;
    int **groute = calloc((size_t)A * cm.L, sizeof *groute);   /* [a][layer]: the GPU's top-k, MoE layers */
    for (int a = 0; a < A; a++)
        for (int i = 0; i < cm.L; i++)
            if (cm.layers[i].moe) groute[a * cm.L + i] = malloc(sizeof(int) * (size_t)N * cm.k);

    char path[1200];
    if (dump_dir) {
        mkdir(dump_dir, 0755);
        snprintf(path, sizeof path, "%s/model.safetensors", dump_dir);
        memcpy(cm.params, p0, sizeof(float) * (size_t)cm.n_params);
        if ((rc = mg_ckpt_write_model(path, &cm, 0, err))) goto done;
        snprintf(path, sizeof path, "%s/batch.npy", dump_dir);
        if ((rc = write_npy_i32(path, tok, A, B, W, err))) goto done;
        snprintf(path, sizeof path, "%s/grads_cpu.safetensors", dump_dir);   /* rewritten if routing is replayed */
        if ((rc = write_buf(path, &cm, cm.grads, err))) goto done;
        mg_sb sb;
        mg_sb_init(&sb);
        mg_spec_dump(s, &sb);
        snprintf(path, sizeof path, "%s/spec.lua", dump_dir);
        FILE *f = fopen(path, "w");
        if (f) fputs(sb.buf ? sb.buf : "", f), fclose(f);
        mg_sb_free(&sb);
        snprintf(path, sizeof path, "%s/config.json", dump_dir);
        write_config(path, s, &cm, B, &cs, NULL);
    }

    char why[256];
    if (mg_gpu_count(why, sizeof why) < 1) {
        fprintf(out, "  gpu: skipped: no CUDA device (%s)%s\n", why, dump_dir ? "; the CPU half is dumped" : "");
        rc = mg_err_set(err, MG_EUSER, "--check-step: no CUDA device (%s)", why);
        goto done;
    }

    /* GPU: same init (host copy with bmax 1), same batch, same counters */
    mg_gpu_model *g = NULL;
    mg_adamw go_opt, co_opt;
    mg_adamw_init(&go_opt, cm.n_params);
    mg_adamw_init(&co_opt, cm.n_params);
    if ((rc = mg_cpu_model_create(&hm, s, 1, err))) goto done2;
    mg_cpu_model_init_weights(&hm, seed);
    mg_gpu_opts gopt = {0};
    if ((rc = mg_gpu_create(&g, &hm, B, &gopt, err)) || (rc = mg_gpu_upload(g, &go_opt, err))) goto done2;
    mg_gpu_count_coact(g, 1);   /* as on a training log step */
    for (int a = 0; a < A && !rc; a++) {
        mg_cpu_ctx c = {.train = 1, .seed = seed, .step = 0, .micro = a, .scale = 1.0 / A};
        mg_gpu_capture_routing(g, groute + (size_t)a * cm.L);
        rc = mg_gpu_run(g, tok + (long)a * B * W, B, &c, 1, a, err);
    }
    float *gg = malloc(sizeof(float) * (size_t)cm.n_params);
    if (!rc) rc = mg_gpu_read_stats(g, A, 0, go, err);
    mg_gpu_capture_routing(g, NULL);
    if (!rc) rc = mg_gpu_download_grads(g, gg, err);
    if (rc) { free(gg); goto done2; }
    int replayed;
    check_routing(out, &cm, g, tok, A, B, W, seed, groute, lp, co, &cs, &cpu_gn, &replayed, n_fail);
    check_coact(out, &cm, g, A, B, groute, n_fail);
    if (dump_dir && replayed) {
        snprintf(path, sizeof path, "%s/grads_cpu.safetensors", dump_dir);
        if ((rc = write_buf(path, &cm, cm.grads, err)) || (rc = write_routing(dump_dir, &cm, groute, A, N, err))) {
            free(gg);
            goto done2;
        }
    }
    sum_outs(go, A, &gs);
    fprintf(out, "  gpu: loss %.8f (ce %.8f aux %.3e z %.3e)\n", gs.loss, gs.ce, gs.aux, gs.z);
    int fl = !(rel(gs.loss, cs.loss) <= tol_loss);
    fprintf(out, "  loss: rel err %.3e (ce %.3e)  %s\n", rel(gs.loss, cs.loss), rel(gs.ce, cs.ce), fl ? "FAIL" : "ok");
    *n_fail += fl;
    *n_fail += compare(out, "gradient", &cm, gg, cm.grads, tol_grad, 1);
    if (dump_dir) {
        snprintf(path, sizeof path, "%s/grads_gpu.safetensors", dump_dir);
        if ((rc = write_buf(path, &cm, gg, err))) { free(gg); goto done2; }
        snprintf(path, sizeof path, "%s/config.json", dump_dir);
        write_config(path, s, &cm, B, &cs, &gs);
    }

    /* one AdamW step on both: grad norm (gated) and the updated weights (informative) */
    double lr = mg_lr_at(s, 0), ggn = 0;
    mg_adamw_step(&co_opt, cm.params, cm.grads, cm.tensors, cm.n_tensors, lr, s->train.beta1, s->train.beta2, 1e-8,
                  s->train.weight_decay, mg_clip_scale(cpu_gn, s->train.grad_clip));
    if (!rc) rc = mg_gpu_opt_step(g, &go_opt, lr, &ggn, err);
    if (!rc) rc = mg_gpu_download(g, NULL, err);
    if (!rc) {
        int fg = !(rel(ggn, cpu_gn) <= tol_loss);
        fprintf(out, "  grad norm: gpu %.6e cpu %.6e rel err %.3e  %s\n", ggn, cpu_gn, rel(ggn, cpu_gn), fg ? "FAIL" : "ok");
        *n_fail += fg;
        for (long i = 0; i < cm.n_params; i++) cm.params[i] -= p0[i], hm.params[i] -= p0[i];
        compare(out, "update after one AdamW step (lr·sign-like: informative)", &cm, hm.params, cm.params, 0, 0);
    }
    free(gg);
    fprintf(out, "check-step: %s: %s (%d failure(s))\n", s->name, *n_fail ? "FAIL" : "PASS", *n_fail);
done2:
    mg_gpu_destroy(g);
    mg_adamw_free(&go_opt);
    mg_adamw_free(&co_opt);
done:
    if (groute)
        for (int i = 0; i < A * cm.L; i++) free(groute[i]);
    free(groute);
    free(co);
    free(go);
    free(tok);
    free(p0);
    mg_cpu_model_free(&cm);
    mg_cpu_model_free(&hm);
    return rc;
}
