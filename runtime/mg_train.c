/* mg_train: the CPU training loop, evaluation and resume (see mg_train.h). */
#include "mg_train.h"
#include "mg_ckpt.h"
#include "mg_dist.h"      /* mg_dist_alive: the launcher's heartbeat */
#include "mg_dp.h"
#include "mg_ep.h"
#include "mg_gpu_model.h"
#include "mg_metrics.h"
#include "mg_optim.h"
#include "mg_sb.h"
#include "mg_tb.h"
#include "mg_zero.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int mkdir_p(const char *path, mg_err *err)
{
    char p[1600];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) && errno != EEXIST) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", p, strerror(errno));
    return 0;
}

static int has_ckpts(const char *run_dir)
{
    char out[1600];
    mg_err e;
    return mg_ckpt_resolve(run_dir, out, sizeof out, &e) == 0;
}

/* Keeps the lines of metrics.jsonl with step <= last (a resumed run rewrites the rest). */
static int trim_metrics(const char *path, long last, mg_err *err)
{
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char tmp[1800], *line = NULL;
    size_t cap = 0;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", tmp, strerror(errno));
    }
    while (getline(&line, &cap, in) > 0) {   /* lines with routing metrics can be long */
        json_t *j = json_loads(line, 0, NULL);
        json_t *st = json_object_get(j, "step");
        if (json_is_integer(st) && json_integer_value(st) <= last) fputs(line, out);
        json_decref(j);
    }
    free(line);
    fclose(in);
    int bad = fflush(out) != 0 || fsync(fileno(out)) != 0;
    if (fclose(out) || bad || rename(tmp, path))
        return mg_err_set(err, MG_EUSER, "%s: cannot rewrite: %s", path, strerror(errno));
    return 0;
}

static void fmt_eta(char *buf, size_t n, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

/* ------------------------------------------------------------------------------------ */
/* evaluation                                                                           */

double mg_train_val_loss(mg_cpu_model *m, const mg_cpu_data *d, int n_batches, int B)
{
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (size_t)(m->T + 1));
    mg_cpu_ctx c = {.train = 0, .scale = 1.0};
    double ce = 0;
    long n = 0;
    for (int j = 0; j < n_batches; j++) {
        mg_cpu_out o;
        mg_cpu_data_val_batch(d, j, n_batches, B, m->T, tok);
        mg_cpu_model_run(m, tok, B, &c, 0, &o);
        ce += o.ce_sum;
        n += o.n_tokens;
    }
    free(tok);
    return ce / (double)n;
}

int mg_train_eval(const char *ckpt_in, const char *data_path, double *loss, long *tokens, mg_err *err)
{
    char ckpt[1600];
    mg_ckpt_state st;
    mg_spec spec;
    mg_cpu_model m;
    mg_cpu_data d;
    if (mg_ckpt_resolve(ckpt_in, ckpt, sizeof ckpt, err) || mg_ckpt_read_state(ckpt, &st, &spec, err))
        return err->code;
    mg_ckpt_state_free(&st);
    int rc = data_path ? mg_cpu_data_open_eval(data_path, &spec, &d, err) : mg_cpu_data_open(&spec, &d, err);
    if (rc) return rc;
    int B = spec.train.batch, T = spec.model.seq_len;
    if ((rc = mg_cpu_model_create(&m, &spec, B, err)) || (rc = mg_ckpt_load(ckpt, &m, NULL, err))) {
        mg_cpu_data_free(&d);
        mg_cpu_model_free(&m);
        return rc;
    }
    /* non-overlapping windows over the whole split, in batches of B */
    long W = (d.n_val - 1) / T;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (size_t)(T + 1));
    mg_cpu_ctx c = {.train = 0, .scale = 1.0};
    double ce = 0;
    long n = 0;
    for (long w = 0; w < W; w += B) {
        int b = (int)(W - w < B ? W - w : B);
        for (int r = 0; r < b; r++) memcpy(tok + (long)r * (T + 1), d.val + (w + r) * T, sizeof(int32_t) * (size_t)(T + 1));
        mg_cpu_out o;
        mg_cpu_model_run(&m, tok, b, &c, 0, &o);
        ce += o.ce_sum;
        n += o.n_tokens;
    }
    free(tok);
    *loss = ce / (double)n;
    *tokens = n;
    mg_cpu_data_free(&d);
    mg_cpu_model_free(&m);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* training                                                                             */

typedef struct run {
    mg_spec spec;
    mg_cpu_model m;
    mg_adamw opt;
    mg_cpu_data data;
    mg_ckpt_state st;
    char run_dir[1600];
    FILE *metrics, *log;
    long stop;
    mg_metrics mx;       /* routing metrics of the MoE layers over the log window */
    mg_tb tb;            /* TensorBoard event file (tb.f NULL: off) */
    int log_every, metrics_on;
    double metrics_s;    /* time spent in mx and tb */
    mg_gpu_model *gpu;   /* NULL: the CPU model trains; else r->m is its host copy (bmax 1) */
    mg_dp dp;            /* this rank's share of each step (one process: the whole step) */
    mg_par par;          /* dp × ep layout (mg_ep.h) */
    mg_comm *ep_comm, *replicas;   /* expert parallel: the EP group, the ranks holding my experts */
    mg_zero zero;        /* ZeRO-1 (parallel.zero = 1, data parallel): opt holds this rank's shard only */
} run;

/* A checkpoint (the one-process format, whatever wrote it) into the model and r->opt; under
 * ZeRO-1 the full optimizer state is read, then this rank's shard kept. */
static int load_ckpt(run *r, const char *ckpt, mg_err *err)
{
    if (!r->zero.on) return mg_ckpt_load(ckpt, &r->m, &r->opt, err);
    mg_adamw full;
    mg_adamw_init(&full, r->m.n_params);
    int rc = mg_ckpt_load(ckpt, &r->m, &full, err);
    if (!rc) mg_zero_take_shard(&r->zero, &full, &r->opt);
    mg_adamw_free(&full);
    return rc;
}

/* The spec and starting point: a fresh model from spec, or the checkpoint's state. */
static int run_setup(run *r, const mg_spec *spec, const mg_train_opts *o, mg_err *err)
{
    char ckpt[1600] = "";
    int rc;
    if (o->resume) {
        mg_spec cs;
        if ((rc = mg_ckpt_resolve(o->resume, ckpt, sizeof ckpt, err)) || (rc = mg_ckpt_read_state(ckpt, &r->st, &cs, err)))
            return rc;
        if (spec) {   /* the same spec; its parallel layout may differ (the checkpoint reshards on load) */
            char h[65];
            mg_spec same = *spec;
            same.parallel = cs.parallel;
            mg_spec_hash(&same, h);
            if (strcmp(h, r->st.spec_hash))
                return mg_err_set(err, MG_EUSER, "%s: spec differs from the one %s was trained with (hash %.12s vs %.12s); "
                                  "resume without a spec or with the same one", spec->path, ckpt, h, r->st.spec_hash);
        }
        r->spec = cs;
        if (spec) r->spec.parallel = spec->parallel;
        if (o->run_dir) snprintf(r->run_dir, sizeof r->run_dir, "%s", o->run_dir);
        else {
            snprintf(r->run_dir, sizeof r->run_dir, "%s", ckpt);
            char *slash = strrchr(r->run_dir, '/');
            if (slash) *slash = 0;
            else snprintf(r->run_dir, sizeof r->run_dir, ".");
        }
    } else {
        if (!spec) return mg_err_set(err, MG_EINTERNAL, "mg_train: no spec and nothing to resume");
        r->spec = *spec;
        if (o->run_dir) snprintf(r->run_dir, sizeof r->run_dir, "%s", o->run_dir);
        else snprintf(r->run_dir, sizeof r->run_dir, "runs/%s", spec->name);
        if (has_ckpts(r->run_dir))
            return mg_err_set(err, MG_EUSER, "%s: already holds checkpoints (HINT: --resume %s to continue, or another "
                              "--run-dir)", r->run_dir, r->run_dir);
        r->st = (mg_ckpt_state){.seed = (uint64_t)spec->train.seed, .val_loss = NAN, .best_val = NAN, .best_step = -1};
    }
    const mg_spec *s = &r->spec;
    if (s->moe.bias_update_rate > 0 && s->moe.every > 0 && s->moe.router == MG_ROUTER_SWITCH)
        return mg_err_set(err, MG_EUSER, "%s: moe.bias_update_rate = %g: the selection bias needs router = "
                          "\"softmax_topk\" or \"sigmoid_topk\" (as mg_ref does)", s->path, s->moe.bias_update_rate);
    if ((rc = mg_par_make(s, o->comm ? o->comm->rank : 0, o->comm ? o->comm->world : 1, &r->par, err))) return rc;
    if ((rc = mg_ep_comms(&r->par, o->comm, &r->ep_comm, &r->replicas, err)) ||
        (rc = mg_dp_init(&r->dp, o->comm, r->replicas, s->train.grad_accum, s->train.batch, err)))
        return rc;
    if ((rc = mkdir_p(r->run_dir, err)) || (rc = mg_cpu_data_open(s, &r->data, err))) return rc;
    if ((rc = mg_cpu_model_create_shard(&r->m, s, o->gpu ? 1 : r->dp.B_loc, r->par.ep, r->par.ep_rank, err)) ||
        (rc = o->gpu ? MG_OK : mg_ep_attach(&r->m, r->ep_comm, err)))   /* the GPU model has its own (mg_gpu_ep) */
        return rc;
    if ((rc = mg_dp_buckets(&r->dp, &r->m, err)) ||
        (rc = mg_zero_init(&r->zero, s->parallel.zero == 1, &r->dp, r->m.n_params, err)))
        return rc;
    if (o->gpu) {
        mg_gpu_opts go = {.loss_scale = mg_dp_on(&r->dp) ? r->dp.scale : 0, .zero = r->zero.on ? &r->zero : NULL};
        if ((rc = mg_gpu_create(&r->gpu, &r->m, r->dp.B_loc, &go, err)) || (rc = mg_gpu_dp_attach(r->gpu, &r->dp, err)) ||
            (rc = mg_gpu_ep_attach(r->gpu, r->ep_comm, err)))
            return rc;
    }
    mg_adamw_init(&r->opt, r->zero.on ? r->zero.n_shard : r->m.n_params);
    if (o->resume) {
        if ((rc = load_ckpt(r, ckpt, err))) return rc;
        if (r->opt.step != r->st.step)
            return mg_err_set(err, MG_EUSER, "%s/optimizer.safetensors: step %ld, but state.json says %ld", ckpt,
                              r->opt.step, r->st.step);
    } else {
        mg_cpu_model_init_weights(&r->m, r->st.seed);
    }
    if (r->gpu && (rc = mg_gpu_upload(r->gpu, &r->opt, err))) return rc;
    r->stop = s->train.steps;
    if (o->stop_after > 0 && o->stop_after < r->stop) r->stop = o->stop_after;

    char path[1700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->run_dir);
    if (r->dp.rank > 0) {   /* data parallel: rank 0 writes the run's files */
        r->metrics = fopen("/dev/null", "w");
    } else if (o->resume) {
        if ((rc = trim_metrics(path, r->st.step, err))) return rc;
        r->metrics = fopen(path, "a");
    } else {
        r->metrics = fopen(path, "w");
        mg_sb sb;
        mg_sb_init(&sb);
        mg_spec_dump(s, &sb);
        snprintf(path, sizeof path, "%s/spec.lua", r->run_dir);
        FILE *f = fopen(path, "w");
        if (f) fputs(sb.buf ? sb.buf : "", f), fclose(f);
        mg_sb_free(&sb);
    }
    if (!r->metrics) return mg_err_set(err, MG_EUSER, "%s/metrics.jsonl: cannot open: %s", r->run_dir, strerror(errno));
    r->log_every = o->log_every > 0 ? o->log_every : s->log.every > 0 ? s->log.every : 1;   /* opts, else spec */
    r->metrics_on = !o->no_metrics;
    if (r->metrics_on) {
        int ids[256], n = 0;
        for (int i = 0; i < r->m.L && n < 256; i++)
            if (r->m.layers[i].moe) ids[n++] = i;
        if (mg_metrics_init(&r->mx, n, ids, r->m.E, r->m.k)) return mg_err_set(err, MG_EINTERNAL, "out of memory");
        snprintf(path, sizeof path, "%s/tb", r->run_dir);
        if (r->dp.rank == 0 && (rc = mg_tb_open(&r->tb, path, err))) return rc;
    }
    return 0;
}

static void run_free(run *r)
{
    if (r->metrics) fclose(r->metrics);
    mg_tb_close(&r->tb);
    mg_metrics_free(&r->mx);
    mg_gpu_destroy(r->gpu);
    mg_cpu_model_free(&r->m);
    mg_adamw_free(&r->opt);
    mg_cpu_data_free(&r->data);
    mg_ckpt_state_free(&r->st);
    mg_zero_free(&r->zero);
    mg_dp_free(&r->dp);
    if (r->ep_comm && r->ep_comm != r->dp.comm[MG_DP_GROUP_ALL]) mg_comm_close(r->ep_comm);
    mg_comm_close(r->replicas);
}

/* Expert parallel: every group gathers its experts (weights, and o: the rank's whole optimizer
 * state) to its rank 0; world rank 0 writes the one-file checkpoint of the whole model
 * (mg_ep_gather_full). */
static int save_ep(run *r, const mg_adamw *o, int keep, mg_err *err)
{
    mg_cpu_model full;
    mg_adamw fo;
    int root = r->par.ep_rank == 0, rc = 0;
    memset(&full, 0, sizeof full);
    memset(&fo, 0, sizeof fo);
    if (root && !(rc = mg_cpu_model_create(&full, &r->spec, 1, err))) mg_adamw_init(&fo, full.n_params);
    if (!rc) rc = mg_ep_gather_full(&r->m, o, r->ep_comm, root ? &full : NULL, root ? &fo : NULL, err);
    if (!rc && r->par.rank == 0) rc = mg_ckpt_save(r->run_dir, &full, &fo, &r->st, keep, err);
    mg_cpu_model_free(&full);
    mg_adamw_free(&fo);
    return rc;
}

/* ZeRO-1: the weights (GPU: the shards of the fp32 masters, downloaded into the host model) and
 * the optimizer state gathered from the shards into *full (the rank's unsharded state, freed by
 * the caller), so that the writers below see what zero = 0 gives them. Collective. Host memory
 * for that moment: the unsharded state, as zero = 0 holds it always. */
static int zero_unshard(run *r, mg_adamw *full, mg_err *err)
{
    int rc = r->gpu ? mg_gpu_download(r->gpu, &r->opt, err) : 0;
    if (!rc && r->gpu) rc = mg_zero_gather(&r->zero, r->m.params, sizeof(float), err);
    mg_adamw_init(full, r->m.n_params);
    return rc ? rc : mg_zero_full_state(&r->zero, &r->opt, full, err);
}

/* A checkpoint of the step just done, in the one-process format. Every rank calls it (the
 * gathers of EP and ZeRO-1 are collective); rank 0 writes. */
static int save_ckpt(run *r, int keep, mg_err *err)
{
    mg_adamw full;
    const mg_adamw *o = &r->opt;
    int rc = 0;
    memset(&full, 0, sizeof full);
    if (r->zero.on) {
        rc = zero_unshard(r, &full, err);
        o = &full;
    } else if (r->gpu && (r->par.ep > 1 || r->dp.rank == 0)) {
        rc = mg_gpu_download(r->gpu, &r->opt, err);
    }
    if (!rc && r->par.ep > 1) rc = save_ep(r, o, keep, err);
    else if (!rc && r->dp.rank == 0) rc = mg_ckpt_save(r->run_dir, &r->m, o, &r->st, keep, err);
    mg_adamw_free(&full);
    return rc;
}

/* Bytes of optimizer state this rank holds: AdamW m and v, and on the GPU with bf16/fp16 weights
 * the fp32 master weights (the CPU model and an fp32 GPU model train their weights directly);
 * under ZeRO-1 for its shard only. */
static double opt_state_bytes(const run *r)
{
    long n = r->zero.on ? r->zero.n_shard : r->m.n_params;
    return (double)n * (r->gpu && r->spec.dtype != MG_DTYPE_FP32 ? 12 : 8);
}

static void print_opt_state(const run *r, FILE *log)
{
    int master = r->gpu && r->spec.dtype != MG_DTYPE_FP32;
    long n = r->zero.on ? r->zero.n_shard : r->m.n_params;
    fprintf(log, "train: optimizer state per rank: %.0f bytes = %.2f MiB (AdamW m, v%s of %ld of the rank's %ld "
            "parameters; zero = %d)\n", opt_state_bytes(r), opt_state_bytes(r) / (1024.0 * 1024), master ?
            ", fp32 master weights" : "", n, r->m.n_params, r->zero.on);
}

typedef struct step_stats {
    double loss, ce, aux, z, lr, gnorm;
    long tokens, dropped;
    double a2a_s;   /* GPU expert parallelism: seconds of the step in token exchanges; < 0: none */
    double a2a_hidden_s;   /* of a2a_s, the seconds the shared experts ran beside the exchanges */
} step_stats;

/* Data parallel: the step's statistics summed over the ranks (a no-op on one process). */
static int dp_sum_stats(run *r, step_stats *ss, mg_err *err)
{
    double v[5] = {ss->ce, ss->aux, ss->z, (double)ss->dropped, (double)ss->tokens};
    int rc = mg_dp_sum(&r->dp, v, 5, err);
    ss->ce = v[0], ss->aux = v[1], ss->z = v[2], ss->dropped = (long)v[3], ss->tokens = (long)v[4];
    return rc;
}

/* One optimizer step s (0-based) on the GPU: the micro-batches are enqueued while the host
 * draws the next batch; statistics and the grad norm are read once per step. */
static int train_step_gpu(run *r, long s, int32_t *tok, step_stats *ss, mg_err *err)
{
    const mg_spec *sp = &r->spec;
    int A = r->dp.A_loc, B = r->dp.B_loc, W = r->dp.world, rc;   /* this rank's micro-batches (mg_dp.h) */
    mg_cpu_out outs[64], *o = A <= 64 ? outs : malloc(sizeof *o * (size_t)A);
    memset(ss, 0, sizeof *ss);
    /* expert co-activation: counted on the device on log steps only (write_metrics' test) */
    mg_gpu_count_coact(r->gpu, r->metrics_on && ((s + 1) % r->log_every == 0 || s + 1 == r->stop));
    for (int a = 0; a < A; a++) {
        unsigned long long k;
        int row0, micro;
        mg_dp_micro(&r->dp, s, a, &k, &row0, &micro);
        mg_cpu_ctx c = {.train = 1, .seed = r->st.seed, .step = s, .micro = micro, .scale = r->dp.scale};
        if (a == A - 1) mg_gpu_dp_arm(r->gpu);   /* the last backward launches the gradient all-reduce */
        if ((rc = mg_cpu_data_train_batch(&r->data, k, tok, err)) ||
            (rc = mg_gpu_run(r->gpu, tok + (long)row0 * (r->m.T + 1), B, &c, 1, a, err)))
            goto out;
    }
    mg_gpu_count_coact(r->gpu, 0);
    ss->lr = mg_lr_at(sp, s);
    if ((rc = mg_gpu_opt_step(r->gpu, &r->opt, ss->lr, &ss->gnorm, err)) ||
        (rc = mg_gpu_read_stats(r->gpu, A, 1, o, err)))
        goto out;
    for (int a = 0; a < A; a++) {
        if (r->metrics_on)   /* router entropy/top-1 sums and co-activation (log steps): reduced on the device */
            for (int i = 0, li = 0; i < r->m.L; i++) {
                if (!r->m.layers[i].moe) continue;
                mg_metrics_batch mb = {.T = B * r->m.T, .coact = mg_gpu_layer_coact(r->gpu, a, i)};
                mg_gpu_layer_stats(r->gpu, a, i, &mb.counts_all, &mb.aux, &mb.z, &mb.dropped);
                mg_gpu_layer_router_sums(r->gpu, a, i, &mb.entropy_sum, &mb.top1_sum);
                mg_metrics_add(&r->mx, li++, &mb);
            }
        ss->ce += o[a].ce_sum / (double)o[a].n_tokens / (A * W);
        ss->tokens += o[a].n_tokens;
        ss->aux += o[a].aux;
        ss->z += o[a].zloss;
        ss->dropped += o[a].dropped;
    }
    if ((rc = dp_sum_stats(r, ss, err)) || (rc = mg_dp_sum_loads(&r->dp, &r->m, err))) goto out;
    ss->loss = ss->ce + ss->aux + ss->z;
    mg_cpu_model_update_bias(&r->m, sp->moe.bias_update_rate);
    if (sp->moe.bias_update_rate > 0) rc = mg_gpu_upload_bias(r->gpu, err);
out:
    if (o != outs) free(o);
    return rc;
}

/* Validation loss on the GPU or (data parallel) the CPU: the same fixed batches as
 * mg_train_val_loss, cut into pieces of B_loc rows dealt round-robin over the ranks; CE and
 * token sums added over the ranks. One process: every batch whole, in order. */
static int val_loss_dp(run *r, double *loss, mg_err *err)
{
    const mg_dp *dp = &r->dp;
    int nb = r->spec.train.eval_batches, B = r->spec.train.batch, T = r->m.T, Bl = dp->B_loc, P = B / Bl, rc = 0;
    int n_loc = 0;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (size_t)(T + 1));
    mg_cpu_out *o = calloc((size_t)nb * (size_t)P, sizeof *o);
    mg_cpu_ctx c = {.train = 0, .scale = 1.0};
    for (int q = dp->rank; q < nb * P && !rc; q += dp->world) {
        mg_cpu_data_val_batch(&r->data, q / P, nb, B, T, tok);
        const int32_t *piece = tok + (long)(q % P) * Bl * (T + 1);
        if (r->gpu) rc = mg_gpu_run(r->gpu, piece, Bl, &c, 0, n_loc, err);
        else mg_cpu_model_run(&r->m, piece, Bl, &c, 0, &o[n_loc]);
        n_loc++;
    }
    if (!rc && r->gpu && n_loc) rc = mg_gpu_read_stats(r->gpu, n_loc, 0, o, err);
    if (!rc) rc = mg_ep_error(r->m.ep_rt, err);
    double v[2] = {0, 0};
    for (int j = 0; j < n_loc && !rc; j++) v[0] += o[j].ce_sum, v[1] += (double)o[j].n_tokens;
    if (!rc) rc = mg_dp_sum(&r->dp, v, 2, err);
    *loss = rc ? NAN : v[0] / v[1];
    free(tok);
    free(o);
    return rc;
}

/* One optimizer step s (0-based). */
static int train_step(run *r, long s, int32_t *tok, step_stats *ss, mg_err *err)
{
    const mg_spec *sp = &r->spec;
    mg_cpu_model *m = &r->m;
    int A = r->dp.A_loc, B = r->dp.B_loc, W = r->dp.world, rc;   /* this rank's micro-batches (mg_dp.h) */
    double ce = 0;
    long n = 0;
    memset(ss, 0, sizeof *ss);
    memset(m->grads, 0, sizeof(float) * (size_t)m->n_params);
    for (int a = 0; a < A; a++) {
        unsigned long long k;
        int row0, micro;
        mg_dp_micro(&r->dp, s, a, &k, &row0, &micro);
        mg_cpu_ctx c = {.train = 1, .seed = r->st.seed, .step = s, .micro = micro, .scale = r->dp.scale};
        mg_cpu_out o;
        if (mg_cpu_data_train_batch(&r->data, k, tok, err)) return err->code;
        mg_cpu_model_run(m, tok + (long)row0 * (m->T + 1), B, &c, 1, &o);
        if ((rc = mg_ep_error(m->ep_rt, err))) return rc;
        ce += o.ce_sum / (double)o.n_tokens / (A * W);
        n += o.n_tokens;
        ss->aux += o.aux;
        ss->z += o.zloss;
        ss->dropped += o.dropped;
        if (r->metrics_on) {
            double t0 = now_s();
            for (int i = 0, li = 0; i < m->L; i++) {
                const mg_ref_fwd *f = &m->layers[i].rf;
                if (!m->layers[i].moe) continue;
                mg_metrics_add(&r->mx, li++, &(mg_metrics_batch){.T = B * m->T, .counts_all = f->counts_all,
                               .topk_idx = f->topk_idx, .probs = f->probs, .aux = f->aux, .z = f->zloss,
                               .dropped = f->n_dropped});
            }
            r->metrics_s += now_s() - t0;
        }
    }
    ss->ce = ce;
    ss->tokens = n;
    if ((rc = r->zero.on ? mg_zero_reduce_grads(&r->zero, m->grads, err)
                         : mg_dp_reduce_grads(&r->dp, m->grads, err)) ||
        (rc = dp_sum_stats(r, ss, err)) || (rc = mg_dp_sum_loads(&r->dp, m, err)))
        return rc;
    ss->loss = ss->ce + ss->aux + ss->z;
    if (r->zero.on) {   /* the shards cover every parameter once, experts included */
        if ((rc = mg_zero_grad_norm(&r->zero, m->grads, &ss->gnorm, err))) return rc;
    } else if (m->ep_rt) {
        if ((rc = mg_ep_grad_norm(m, r->ep_comm, &ss->gnorm, err))) return rc;
    } else {
        ss->gnorm = mg_grad_norm(m->grads, m->n_params);
    }
    ss->lr = mg_lr_at(sp, s);
    double clip = mg_clip_scale(ss->gnorm, sp->train.grad_clip);
    if (r->zero.on) {   /* this rank's shard, then every rank's updated slices to everyone */
        mg_zero_adamw_step(&r->zero, &r->opt, m->params, m->grads, m->tensors, m->n_tensors, ss->lr, sp->train.beta1,
                           sp->train.beta2, 1e-8, sp->train.weight_decay, clip);
        if ((rc = mg_zero_gather(&r->zero, m->params, sizeof(float), err))) return rc;
    } else {
        mg_adamw_step(&r->opt, m->params, m->grads, m->tensors, m->n_tensors, ss->lr, sp->train.beta1, sp->train.beta2,
                      1e-8, sp->train.weight_decay, clip);
    }
    mg_cpu_model_update_bias(m, sp->moe.bias_update_rate);
    return 0;
}

static void write_metrics(run *r, long step, const step_stats *ss, double val, double elapsed, double tps)
{
    fprintf(r->metrics,
            "{\"step\": %ld, \"loss\": %.17g, \"ce\": %.17g, \"aux\": %.17g, \"z\": %.17g, \"lr\": %.17g, "
            "\"grad_norm\": %.17g, \"tokens\": %ld, \"tokens_total\": %ld, \"dropped\": %ld, \"elapsed_s\": %.3f, "
            "\"tok_per_s\": %.1f",
            step, ss->loss, ss->ce, ss->aux, ss->z, ss->lr, ss->gnorm, ss->tokens, r->st.tokens, ss->dropped, elapsed, tps);
    if (isfinite(val)) fprintf(r->metrics, ", \"val_loss\": %.17g, \"val_ppl\": %.17g", val, exp(val));
    if (ss->a2a_s >= 0) fprintf(r->metrics, ", \"a2a_s\": %.6f, \"a2a_hidden_s\": %.6f", ss->a2a_s, ss->a2a_hidden_s);
    if (r->metrics_on) {
        double t0 = now_s();
        mg_metrics_end_step(&r->mx);
        if (step % r->log_every == 0 || step == r->stop) {
            mg_metrics_json(&r->mx, r->metrics);
            static const char *const tags[] = {"train/loss", "train/ce", "train/aux", "train/z", "train/lr",
                                               "train/grad_norm", "train/tok_per_s", "train/dropped"};
            double v[] = {ss->loss, ss->ce, ss->aux, ss->z, ss->lr, ss->gnorm, tps, (double)ss->dropped};
            for (int i = 0; i < 8; i++) mg_tb_scalar(&r->tb, tags[i], step, v[i]);
            if (isfinite(val)) mg_tb_scalar(&r->tb, "val/loss", step, val), mg_tb_scalar(&r->tb, "val/ppl", step, exp(val));
            mg_metrics_tb(&r->mx, &r->tb, step, isfinite(val));
            mg_tb_flush(&r->tb);
            mg_metrics_reset(&r->mx);
        }
        r->metrics_s += now_s() - t0;
    }
    fputs("}\n", r->metrics);
    fflush(r->metrics);
}

int mg_train(const mg_spec *spec, const mg_train_opts *o, mg_train_result *res, mg_err *err)
{
    run r;
    memset(&r, 0, sizeof r);
    memset(res, 0, sizeof *res);
    res->last_loss = res->last_val = NAN;
    mg_train_opts o_rank;
    if (o->comm && o->comm->rank > 0) {   /* data parallel: only rank 0 prints progress */
        o_rank = *o;
        o_rank.quiet = 1;
        o = &o_rank;
    }
    r.log = o->log ? o->log : stderr;
    int rc = run_setup(&r, spec, o, err);
    if (rc) {
        run_free(&r);
        return rc;
    }
    snprintf(res->run_dir, sizeof res->run_dir, "%s", r.run_dir);
    const mg_spec *sp = &r.spec;
    int tty = isatty(fileno(r.log)), A = sp->train.grad_accum, B = sp->train.batch;
    if (!o->quiet)
        fprintf(r.log, "train: %s, %ld parameters, %d x %d x %d tokens per step, steps %ld -> %ld of %d; data: %s; "
                "run dir %s\n", sp->name, r.m.n_params, A, B, r.m.T, r.st.step, r.stop, sp->train.steps, r.data.desc,
                r.run_dir);
    if (!o->quiet && mg_dp_on(&r.dp))
        fprintf(r.log, "train: data parallel over %d ranks: each runs %d x %d rows per step (%s split)\n", r.dp.world,
                r.dp.A_loc, r.dp.B_loc, r.dp.micro_split ? "micro-batch" : "row");
    if (!o->quiet && (mg_dp_on(&r.dp) || r.gpu)) print_opt_state(&r, r.log);
    if (r.st.step >= r.stop && !o->quiet)
        fprintf(r.log, "train: nothing to do: the checkpoint is at step %ld, the run stops at %ld\n", r.st.step, r.stop);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (size_t)(r.m.T + 1));
    double t0 = now_s();
    long first = r.st.step;
    double last_val = r.st.val_loss;
    for (long s = r.st.step; s < r.stop && !rc; s++) {
        step_stats ss;
        mg_dist_alive();
        double a2a0 = r.gpu ? mg_gpu_a2a_seconds(r.gpu) : -1, hid0 = r.gpu ? mg_gpu_a2a_hidden_seconds(r.gpu) : -1;
        if ((rc = r.gpu ? train_step_gpu(&r, s, tok, &ss, err) : train_step(&r, s, tok, &ss, err))) break;
        ss.a2a_s = a2a0 >= 0 ? mg_gpu_a2a_seconds(r.gpu) - a2a0 : -1;
        ss.a2a_hidden_s = a2a0 >= 0 ? mg_gpu_a2a_hidden_seconds(r.gpu) - hid0 : -1;
        long done = s + 1;
        r.st.step = done;
        r.st.tokens += ss.tokens;
        r.st.data_pos += A;
        int eval = done % sp->train.eval_every == 0 || done == r.stop;
        double val = NAN;
        if (eval) {
            if (r.gpu || mg_dp_on(&r.dp)) {
                if ((rc = val_loss_dp(&r, &val, err))) break;
            } else {
                val = mg_train_val_loss(&r.m, &r.data, sp->train.eval_batches, B);
            }
            last_val = val;
            r.st.val_loss = val;
            if (isfinite(val) && !(val >= r.st.best_val)) r.st.best_val = val, r.st.best_step = done;
        }
        double el = now_s() - t0, tps = (double)(done - first) * A * B * r.m.T / (el > 0 ? el : 1e-9);
        if (r.metrics_on && (done % r.log_every == 0 || done == r.stop) && (rc = mg_dp_sum_metrics(&r.dp, &r.mx, err)))
            break;   /* rank 0 logs the routing metrics of the whole global batch */
        write_metrics(&r, done, &ss, val, el, tps);
        res->last_loss = ss.loss;
        if (!o->quiet && (tty || eval)) {
            char eta[32], vp[32] = "-";
            fmt_eta(eta, sizeof eta, el / (double)(done - first) * (double)(r.stop - done));
            if (isfinite(last_val)) snprintf(vp, sizeof vp, "%.2f", exp(last_val));
            char mfu[48] = "";
            if (r.gpu) snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100 * mg_gpu_mfu(sp, tps / r.dp.world, 0));
            fprintf(r.log, "%sstep %ld/%ld | loss %.4f | val ppl %s | %.0f tok/s%s | ETA %s%s", tty ? "\r" : "", done,
                    r.stop, ss.loss, vp, tps, mfu, eta, tty ? "\033[K" : "\n");
            fflush(r.log);
        }
        if (eval) r.st.val_loss = val;
        if (eval && !o->no_save) rc = save_ckpt(&r, o->keep > 0 ? o->keep : 3, err);
        if (mg_dp_on(&r.dp)) mg_dp_fault_hook(r.dp.rank, done);
    }
    if (!o->quiet && tty) fputc('\n', r.log);
    if (!o->quiet && r.gpu && r.st.step > first) {
        double el = now_s() - t0, tps = (double)(r.st.step - first) * A * B * r.m.T / (el > 0 ? el : 1e-9);
        char name[256];
        mg_gpu_name(name, sizeof name);
        fprintf(r.log, "train: %s x %d: %.0f tok/s, MFU %.1f%% (model FLOPs 6·active + attention per token over a dense "
                "bf16 peak of %.0f TFLOP/s per GPU, the H100 SXM / H200 datasheet), GPU memory in use %.2f GiB, "
                "optimizer state %.2f GiB per rank (zero = %d)\n", name, r.dp.world, tps,
                100 * mg_gpu_mfu(sp, tps / r.dp.world, 0), MG_GPU_PEAK_BF16 / 1e12,
                mg_gpu_mem_used() / (1024.0 * 1024 * 1024), opt_state_bytes(&r) / (1024.0 * 1024 * 1024), r.zero.on);
    }
    res->steps_done = r.st.step;
    res->last_val = last_val;
    res->train_s = now_s() - t0;
    res->metrics_s = r.metrics_s;
    free(tok);
    run_free(&r);
    return rc;
}
