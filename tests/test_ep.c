/* test_ep: expert parallelism on the CPU trainer (mg_ep): the layout rules, the shard's tensor
 * table and init, and two forked ranks (CPU comm, ep = 2) training specs/ci-cpu.lua for 5 steps
 * against one process on the same global batch: per-step loss, the first step's routing counts
 * (exact) and the final weights; then checkpoints written by the pair load into one process
 * bit for bit, and a one-process checkpoint loads into the shards bit for bit; all of it again
 * with a shared expert (replicated, every rank on its own tokens); and the trainer:
 * `moegen train --procs 2` with ep = 2, resumed across ep = 2 -> 1 and 1 -> 2, against one process
 * (with and without a shared expert). */
#include "mg_test.h"
#include "mg_testproc.h"
#include "mg_ckpt.h"
#include "mg_comm.h"
#include "mg_ep.h"
#include "mg_gpu_model.h"   /* mg_gpu_check_layout: the fused views of a shard */
#include "mg_optim.h"
#include "mg_rng.h"
#include "mg_spec.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define STEPS 5
#define W 2

/* Loss of each step: one process within LOSS_RTOL relative (rounding of the exchange and of the
 * rank-order gradient sum; measured 4e-10 over 5 steps), the weights within
 * PARAM_ATOL (measured 2.6e-7), the routing counts of step 1 exactly. */
#define LOSS_RTOL 1e-6
#define PARAM_ATOL 1e-5

static int g_shared;   /* moe.shared_experts of the specs load_spec gives (the forked ranks inherit it) */

static mg_spec load_spec(int ep)
{
    mg_spec s;
    mg_err err;
    if (mg_spec_load("specs/ci-cpu.lua", &s, &err)) fail_msg("%s", err.msg);
    s.parallel.ep = ep;
    s.moe.shared_experts = g_shared;
    return s;
}

static void batch(const mg_spec *s, long step, int32_t *tok)
{
    mg_rng r;
    mg_rng_seed(&r, 1000 + (uint64_t)step);
    for (long i = 0; i < (long)s->train.batch * (s->model.seq_len + 1); i++)
        tok[i] = (int32_t)(mg_rng_u64(&r) % (uint64_t)s->model.vocab);
}

static int sum(mg_comm *c, void *x, size_t n, mg_comm_dtype t)
{
    mg_err err;
    if (!c) return 0;
    if (mg_comm_all_reduce(c, x, x, n, t, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    return 0;
}

/* One optimizer step on rows [r0, r0 + nb) of the global batch; c NULL: one process. Dense
 * gradients are summed over the ranks, experts stay with their owner (dp = 1). */
static double step(mg_cpu_model *m, mg_adamw *o, mg_comm *c, const int32_t *tok, int r0, int nb, long s,
                   int *counts1)
{
    int world = c ? c->world : 1;
    memset(m->grads, 0, sizeof(float) * (size_t)m->n_params);
    mg_cpu_ctx ctx = {.train = 1, .seed = 1, .step = s, .micro = 0, .scale = 1.0 / world};
    mg_cpu_out out;
    mg_cpu_model_run(m, tok + (long)r0 * (m->T + 1), nb, &ctx, 1, &out);
    mg_err err;
    if (mg_ep_error(m->ep_rt, &err)) return fprintf(stderr, "%s\n", err.msg), NAN;
    for (int i = 0; i < m->L && counts1; i++)
        if (m->layers[i].moe)
            memcpy(counts1, m->ep_rt ? mg_ep_group_counts(m->ep_rt, i) : m->layers[i].rf.counts_all,
                   sizeof(int) * (size_t)m->E);
    double dense = 0, expert = 0;
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        float *g = m->grads + t->off;
        if (!t->expert && sum(c, g, (size_t)t->n, MG_COMM_F32)) return NAN;
        for (long i = 0; i < t->n; i++) *(t->expert ? &expert : &dense) += (double)g[i] * g[i];
    }
    double st[3] = {out.ce_sum, (double)out.n_tokens, out.aux + out.zloss};
    if (sum(c, &expert, 1, MG_COMM_F64) || sum(c, st, 3, MG_COMM_F64)) return NAN;
    const mg_spec *sp = &m->spec;
    double gn = sqrt(dense + expert);
    mg_adamw_step(o, m->params, m->grads, m->tensors, m->n_tensors, mg_lr_at(sp, s), sp->train.beta1,
                  sp->train.beta2, 1e-8, sp->train.weight_decay, mg_clip_scale(gn, sp->train.grad_clip));
    return st[0] / st[1] + st[2];
}

typedef struct shared {   /* what the ranks report, in a MAP_SHARED page */
    double loss[W][STEPS];
    int counts[W][64];
    double max_param_diff[W];
    int ckpt_diff[W], load_diff[W];
} shared;

static char g_tmp[512];

/* Rank r: the shard, STEPS steps, then the weights against the one-process result (written by
 * the parent as ref/), a gathered checkpoint (pair/), and ref/ loaded into a fresh shard. */
static int rank_main(int fd, int r, shared *out)
{
    mg_err err;
    mg_spec s = load_spec(W);
    mg_comm *c = mg_comm_cpu_open(fd, r, W, 20.0, &err);
    if (!c) return fprintf(stderr, "%s\n", err.msg), 10;
    mg_cpu_model m, full;
    mg_adamw o, fo;
    int nb = s.train.batch / W;
    if (mg_cpu_model_create_shard(&m, &s, nb, W, r, &err) || mg_ep_attach(&m, c, &err))
        return fprintf(stderr, "%s\n", err.msg), 11;
    mg_cpu_model_init_weights(&m, 1);
    mg_adamw_init(&o, m.n_params);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)s.train.batch * (s.model.seq_len + 1));
    for (long k = 0; k < STEPS; k++) {
        batch(&s, k, tok);
        out->loss[r][k] = step(&m, &o, c, tok, r * nb, nb, k, k == 0 ? out->counts[r] : NULL);
        if (!isfinite(out->loss[r][k])) return 12;
    }
    /* checkpoint of the pair: rank 0 writes the gathered model */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/pair", g_tmp);
    if (r == 0 && (mg_cpu_model_create(&full, &s, 1, &err) || (mg_adamw_init(&fo, full.n_params), 0)))
        return 13;
    if (mg_ep_gather_full(&m, &o, c, r == 0 ? &full : NULL, r == 0 ? &fo : NULL, &err))
        return fprintf(stderr, "%s\n", err.msg), 14;
    if (r == 0) {
        mg_ckpt_state st = {.step = STEPS, .seed = 1, .val_loss = NAN, .best_val = NAN, .best_step = -1};
        if (mg_ckpt_save(dir, &full, &fo, &st, 1, &err)) return fprintf(stderr, "%s\n", err.msg), 15;
        mg_cpu_model_free(&full);
        mg_adamw_free(&fo);
    }
    free(tok);
    /* ref/ (one process, same steps): its weights against ours, then loaded into a fresh shard */
    mg_cpu_model ld;
    mg_adamw lo;
    if (mg_cpu_model_create_shard(&ld, &s, 1, W, r, &err)) return 17;
    mg_adamw_init(&lo, ld.n_params);
    snprintf(dir, sizeof dir, "%s/ref/ckpt-%06d", g_tmp, STEPS);
    while (access(dir, F_OK)) usleep(10000);
    if (mg_ckpt_load(dir, &ld, &lo, &err)) return fprintf(stderr, "%s\n", err.msg), 18;
    double md = 0;
    for (long i = 0; i < m.n_params; i++) md = fmax(md, fabs((double)m.params[i] - ld.params[i]));
    out->max_param_diff[r] = md;
    /* the shard's tensors are the full file's: check one expert tensor by name and the moments */
    mg_cpu_model one;
    mg_cpu_model_create(&one, &s, 1, &err);
    mg_adamw oo;
    mg_adamw_init(&oo, one.n_params);
    mg_ckpt_load(dir, &one, &oo, &err);
    for (int j = 0; j < ld.n_tensors; j++) {
        const mg_cpu_tensor *t = &ld.tensors[j], *u = mg_cpu_model_find(&one, t->name);
        out->load_diff[r] += !u || memcmp(ld.params + t->off, one.params + u->off, sizeof(float) * (size_t)t->n) ||
                             memcmp(lo.v + t->off, oo.v + u->off, sizeof(float) * (size_t)t->n);
    }
    mg_cpu_model_free(&one);
    mg_adamw_free(&oo);
    mg_cpu_model_free(&ld);
    mg_adamw_free(&lo);
    mg_cpu_model_free(&m);
    mg_adamw_free(&o);
    mg_comm_close(c);
    return 0;
}

static void ep_matches_one_rank(void)
{
    assert_int_equal(mg_test_tmpdir(g_tmp, sizeof g_tmp, "ep"), 0);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/pair", g_tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(dir, sizeof dir, "%s/ref", g_tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    int fd = memfd_create("test-ep", 0);
    mg_err err;
    assert_int_equal(mg_comm_cpu_shm_init(fd, W, (size_t)1 << 20, &err), 0);
    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t pids[W];
    for (int r = 0; r < W; r++)
        if ((pids[r] = fork()) == 0) _exit(rank_main(fd, r, sh));
    close(fd);

    /* one process, the same global batches */
    mg_spec s = load_spec(1);
    mg_cpu_model m;
    mg_adamw o;
    assert_int_equal(mg_cpu_model_create(&m, &s, s.train.batch, &err), 0);
    mg_cpu_model_init_weights(&m, 1);
    mg_adamw_init(&o, m.n_params);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)s.train.batch * (s.model.seq_len + 1));
    double loss[STEPS];
    int counts[64];
    for (long k = 0; k < STEPS; k++) {
        batch(&s, k, tok);
        loss[k] = step(&m, &o, NULL, tok, 0, s.train.batch, k, k == 0 ? counts : NULL);
    }
    snprintf(dir, sizeof dir, "%s/ref", g_tmp);
    mg_ckpt_state st = {.step = STEPS, .seed = 1, .val_loss = NAN, .best_val = NAN, .best_step = -1};
    assert_int_equal(mg_ckpt_save(dir, &m, &o, &st, 1, &err), 0);

    int bad = 0;
    for (int r = 0; r < W; r++) {
        int st_;
        waitpid(pids[r], &st_, 0);
        if (!WIFEXITED(st_) || WEXITSTATUS(st_)) print_error("rank %d: exit %d\n", r, WEXITSTATUS(st_)), bad++;
    }
    assert_int_equal(bad, 0);
    double worst = 0;
    for (long k = 0; k < STEPS; k++)
        for (int r = 0; r < W; r++) {
            double rel = fabs(sh->loss[r][k] - loss[k]) / fabs(loss[k]);
            worst = fmax(worst, rel);
            if (!(rel <= LOSS_RTOL))
                print_error("step %ld rank %d: loss %.10f, one process %.10f (rel %.2e)\n", k + 1, r, sh->loss[r][k],
                            loss[k], rel), bad++;
        }
    printf("ep=2%s vs one process: worst loss rel diff over %d steps %.2e (bound %.0e); max |param diff| %.2e, %.2e\n",
           g_shared ? " (shared expert)" : "", STEPS, worst, LOSS_RTOL, sh->max_param_diff[0], sh->max_param_diff[1]);
    for (int e = 0; e < m.E; e++)
        for (int r = 0; r < W; r++)
            if (sh->counts[r][e] != counts[e])
                print_error("step 1, expert %d: rank %d counts %d, one process %d\n", e, r, sh->counts[r][e], counts[e]),
                    bad++;
    for (int r = 0; r < W; r++) bad += !(sh->max_param_diff[r] <= PARAM_ATOL) + sh->load_diff[r];
    assert_int_equal(bad, 0);

    /* the pair's checkpoint in one process: loads (all tensors present), and its weights are the
     * ranks' (checked against one process's within PARAM_ATOL) */
    mg_cpu_model p;
    mg_adamw po;
    assert_int_equal(mg_cpu_model_create(&p, &s, 1, &err), 0);
    mg_adamw_init(&po, p.n_params);
    snprintf(dir, sizeof dir, "%s/pair/ckpt-%06d", g_tmp, STEPS);
    if (mg_ckpt_load(dir, &p, &po, &err)) fail_msg("%s", err.msg);
    assert_int_equal(po.step, STEPS);
    double md = 0;
    for (long i = 0; i < p.n_params; i++) md = fmax(md, fabs((double)p.params[i] - m.params[i]));
    assert_true(md <= PARAM_ATOL);
    mg_cpu_model_free(&p);
    mg_adamw_free(&po);
    free(tok);
    mg_cpu_model_free(&m);
    mg_adamw_free(&o);
    munmap(sh, sizeof *sh);
    mg_test_rmtree(g_tmp);
}

static void test_ep_matches_one_rank(void **state)
{
    (void)state;
    g_shared = 0;
    ep_matches_one_rank();
}

/* The shared expert is dense work every rank does on its own tokens: its gradient summed over the
 * ranks, its weights in every shard and in the gathered checkpoint (2 -> 1) and loaded back (1 -> 2). */
static void test_ep_shared_matches_one_rank(void **state)
{
    (void)state;
    g_shared = 1;
    ep_matches_one_rank();
    g_shared = 0;
}

/* The shard's table: its experts only, global names and init streams, every other tensor. */
static void shard_table(void)
{
    mg_spec s = load_spec(2);
    mg_err err;
    mg_cpu_model full, sh;
    assert_int_equal(mg_cpu_model_create(&full, &s, 1, &err), 0);
    assert_int_equal(mg_cpu_model_create_shard(&sh, &s, 1, 2, 1, &err), 0);
    mg_cpu_model_init_weights(&full, 7);
    mg_cpu_model_init_weights(&sh, 7);
    assert_int_equal(sh.n_tensors_full, full.n_tensors);
    int experts = 0;
    for (int j = 0; j < full.n_tensors; j++) experts += full.tensors[j].expert;
    assert_int_equal(sh.n_tensors, full.n_tensors - experts / 2);
    for (int j = 0; j < sh.n_tensors; j++) {
        const mg_cpu_tensor *t = &sh.tensors[j], *u = mg_cpu_model_find(&full, t->name);
        assert_non_null(u);
        assert_int_equal(t->gidx, (int)(u - full.tensors));
        assert_memory_equal(sh.params + t->off, full.params + u->off, sizeof(float) * (size_t)t->n);
        if (t->expert) assert_non_null(strstr(t->name, ".experts.2.") ? t->name : strstr(t->name, ".experts.3."));
    }
    assert_int_equal(mg_gpu_check_layout(&sh, &err), 0);   /* the GPU trainer's fused views hold on a shard */
    mg_cpu_model_free(&sh);
    mg_cpu_model_free(&full);
}

/* ... and with a shared expert: whole in every shard (not an expert tensor), after the local experts. */
static void test_shard_table(void **state)
{
    (void)state;
    for (g_shared = 0; g_shared <= 1; g_shared++) shard_table();
    g_shared = 0;
}

static void test_layout(void **state)
{
    (void)state;
    mg_spec s = load_spec(2);
    mg_par p;
    mg_err err;
    assert_int_equal(mg_par_make(&s, 3, 4, &p, &err), MG_EUSER);
    mg_assert_contains(err.msg, "parallel = { dp = 1, ep = 2 }: needs dp·ep = 2 ranks, the job has 4");
    s.parallel.dp = 2;
    assert_int_equal(mg_par_make(&s, 3, 4, &p, &err), 0);
    assert_int_equal(p.dp_rank, 1);
    assert_int_equal(p.ep_rank, 1);
    s.train.batch = 6;
    assert_int_equal(mg_par_make(&s, 3, 4, &p, &err), MG_EUSER);
    mg_assert_contains(err.msg, "train.batch = 6: must be a multiple of the 4 ranks");
    s.train.batch = 8, s.moe.shared_experts = 1;   /* replicated, like the dense layers */
    assert_int_equal(mg_par_make(&s, 3, 4, &p, &err), 0);
    s = load_spec(1);
    assert_int_equal(mg_par_make(&s, 2, 4, &p, &err), 0);   /* ep 1: data parallel over any world */
    assert_int_equal(p.dp, 4);
}

/* ---------------------------------------------------------------- the trainer (moegen train --procs 2) */

/* losses[step-1] and the first step's routing loads (JSON text) of RUN/metrics.jsonl */
static int read_metrics(const char *run, double *loss, int n, char *load1, size_t cap)
{
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t lc = 0;
    int got = 0;
    while (getline(&line, &lc, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        long st = (long)json_integer_value(json_object_get(j, "step"));
        if (st >= 1 && st <= n) loss[st - 1] = json_real_value(json_object_get(j, "loss")), got++;
        if (st == 1 && load1) {
            char *t = json_dumps(json_object_get(json_array_get(json_object_get(j, "moe"), 0), "load"), JSON_COMPACT);
            snprintf(load1, cap, "%s", t ? t : "?");
            free(t);
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return got;
}

#define CLI_STEPS 7
static const char cli_spec[] =
    "return { name = 'ep-cli', model = { vocab = 256, d_model = 32, n_layer = 2, n_head = 2, n_kv_head = 2,"
    " seq_len = 32, tie_embeddings = true, d_ff_dense = 64 }, moe = { experts = 4, top_k = 2, d_ff = 32,"
    " every = 2, aux_loss = %s, z_loss = %s, shared_experts = %d }, dtype = 'fp32', train = { data = '%s/corpus.txt',"
    " batch = 4, lr = 1e-2, warmup = 2, steps = %d, eval_every = 100, eval_batches = 2, seed = 3 },"
    " parallel = { dp = %d, ep = %d, zero = %d } }\n";

/* DIR/NAME.lua: the test model over DIR/corpus.txt with this layout (zero: ZeRO-1), with or
 * without aux/z losses and a shared expert. */
static void write_spec_z(const char *dir, const char *name, int dp, int ep, int zero, int aux, int shared)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s.lua", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fprintf(f, cli_spec, aux ? "0.01" : "0", aux ? "0.001" : "0", shared, dir, CLI_STEPS, dp, ep, zero);
    fclose(f);
}

static void write_spec(const char *dir, const char *name, int dp, int ep, int aux, int shared)
{
    write_spec_z(dir, name, dp, ep, 0, aux, shared);
}

/* A fresh directory t with the test corpus in it. */
static void cli_dir(char *t, size_t n, const char *tag)
{
    char p[700];
    assert_int_equal(mg_test_tmpdir(t, n, tag), 0);
    snprintf(p, sizeof p, "%s/corpus.txt", t);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    for (int i = 0; i < 400; i++) fprintf(f, "%d: the quick brown fox %s over the lazy dog.\n", i, i % 3 ? "jumps" : "leaps");
    fclose(f);
}

/* One process 7 steps = 2 ranks ep=2 5 steps resumed on one process = one process 5 steps resumed
 * on 2 ranks: per-step loss within LOSS_RTOL, step-1 loads of the MoE layer equal. */
static void test_cli_ep(void **state)
{
    (void)state;
    char t[512], p[700];
    cli_dir(t, sizeof t, "epcli");
    write_spec(t, "ep1", 1, 1, 1, 0);
    write_spec(t, "ep2", 1, 2, 1, 0);
    mg_proc r;
    const char *M = mg_bin();
    mg_run(&r, "%s train %s/ep1.lua --run-dir %s/A -q", M, t, t);
    if (r.code) fail_msg("%s", r.out);
    mg_run(&r, "%s train %s/ep2.lua --procs 2 --timeout 30 --run-dir %s/B --steps 5 -q && "
           "%s train --resume %s/B %s/ep1.lua -q", M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    mg_run(&r, "%s train %s/ep1.lua --run-dir %s/C --steps 5 -q && "
           "%s train --resume %s/C %s/ep2.lua --procs 2 --timeout 30 -q", M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    double la[CLI_STEPS], lb[CLI_STEPS], lc[CLI_STEPS];
    char ka[512] = "", kb[512] = "";
    snprintf(p, sizeof p, "%s/A", t);
    assert_int_equal(read_metrics(p, la, CLI_STEPS, ka, sizeof ka), CLI_STEPS);
    snprintf(p, sizeof p, "%s/B", t);
    assert_int_equal(read_metrics(p, lb, CLI_STEPS, kb, sizeof kb), CLI_STEPS);
    snprintf(p, sizeof p, "%s/C", t);
    assert_int_equal(read_metrics(p, lc, CLI_STEPS, NULL, 0), CLI_STEPS);
    int bad = 0;
    for (int i = 0; i < CLI_STEPS; i++)
        if (!(fabs(lb[i] - la[i]) <= LOSS_RTOL * la[i]) || !(fabs(lc[i] - la[i]) <= LOSS_RTOL * la[i]))
            print_error("step %d: one process %.10f, ep2 then one %.10f, one then ep2 %.10f\n", i + 1, la[i], lb[i],
                        lc[i]), bad++;
    if (strcmp(ka, kb)) print_error("step 1 loads: one process %s, ep=2 %s\n", ka, kb), bad++;
    assert_int_equal(bad, 0);

    /* dp = 2 × ep = 2 on 4 ranks: each expert's gradient summed over its 2 replicas. Without aux/z
     * losses (whose statistics count per EP group, i.e. per half batch here) = one process. */
    write_spec(t, "noaux", 1, 1, 0, 0);
    write_spec(t, "dp2ep2", 2, 2, 0, 0);
    mg_run(&r, "%s train %s/noaux.lua --run-dir %s/N1 -q && %s train %s/dp2ep2.lua --procs 4 --timeout 30 --run-dir %s/N4 -q",
           M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    snprintf(p, sizeof p, "%s/N1", t);
    assert_int_equal(read_metrics(p, la, CLI_STEPS, NULL, 0), CLI_STEPS);
    snprintf(p, sizeof p, "%s/N4", t);
    assert_int_equal(read_metrics(p, lb, CLI_STEPS, NULL, 0), CLI_STEPS);
    for (int i = 0; i < CLI_STEPS; i++)
        if (!(fabs(lb[i] - la[i]) <= LOSS_RTOL * la[i]))
            print_error("no aux, step %d: one process %.10f, dp 2 x ep 2 %.10f\n", i + 1, la[i], lb[i]), bad++;
    assert_int_equal(bad, 0);

    /* a shared expert: one process 7 steps = ep 2 for 5 steps, its checkpoint resumed on one process */
    write_spec(t, "sh1", 1, 1, 1, 1);
    write_spec(t, "sh2", 1, 2, 1, 1);
    mg_run(&r, "%s train %s/sh1.lua --run-dir %s/S1 -q && %s train %s/sh2.lua --procs 2 --timeout 30 --run-dir %s/S2 "
           "--steps 5 -q && %s train --resume %s/S2 %s/sh1.lua -q", M, t, t, M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    snprintf(p, sizeof p, "%s/S1", t);
    assert_int_equal(read_metrics(p, la, CLI_STEPS, ka, sizeof ka), CLI_STEPS);
    snprintf(p, sizeof p, "%s/S2", t);
    assert_int_equal(read_metrics(p, lb, CLI_STEPS, kb, sizeof kb), CLI_STEPS);
    for (int i = 0; i < CLI_STEPS; i++)
        if (!(fabs(lb[i] - la[i]) <= LOSS_RTOL * la[i]))
            print_error("shared expert, step %d: one process %.10f, ep2 then one %.10f\n", i + 1, la[i], lb[i]), bad++;
    if (strcmp(ka, kb)) print_error("shared expert, step 1 loads: one process %s, ep=2 %s\n", ka, kb), bad++;
    assert_int_equal(bad, 0);
    mg_test_rmtree(t);
}


/* run/metrics.jsonl losses within LOSS_RTOL of ref's, every step (ref, run under t) */
static int same_losses(const char *t, const char *ref, const char *run, const char *what)
{
    double la[CLI_STEPS], lb[CLI_STEPS], worst = 0;
    char p[700];
    snprintf(p, sizeof p, "%s/%s", t, ref);
    assert_int_equal(read_metrics(p, la, CLI_STEPS, NULL, 0), CLI_STEPS);
    snprintf(p, sizeof p, "%s/%s", t, run);
    assert_int_equal(read_metrics(p, lb, CLI_STEPS, NULL, 0), CLI_STEPS);
    int bad = 0;
    for (int i = 0; i < CLI_STEPS; i++) {
        double rel = fabs(lb[i] - la[i]) / la[i];
        if (!(rel <= LOSS_RTOL)) print_error("%s, step %d: %.10f vs %.10f\n", what, i + 1, la[i], lb[i]), bad++;
        if (rel > worst) worst = rel;
    }
    print_message("    %s: worst rel deviation %.2g (bound %g)\n", what, worst, LOSS_RTOL);
    return bad;
}

/* ZeRO-1 with expert parallelism: dp = 2 x ep = 2 on 4 ranks (the dense state sharded over all 4,
 * each expert's over its 2 replicas) = the same without ZeRO = one process (no aux/z losses, as
 * test_cli_ep); its checkpoint resumes on one process and one process's on it; ep = 2 alone
 * (the dense state over the 2 EP ranks, the experts unsharded) with aux losses = one process. */
static void test_cli_ep_zero(void **state)
{
    (void)state;
    char t[512];
    cli_dir(t, sizeof t, "epzero");
    write_spec(t, "noaux", 1, 1, 0, 0);
    write_spec(t, "dp2ep2", 2, 2, 0, 0);
    write_spec_z(t, "dp2ep2z", 2, 2, 1, 0, 0);
    write_spec(t, "ep1", 1, 1, 1, 0);
    write_spec_z(t, "ep2z", 1, 2, 1, 1, 0);
    mg_proc r;
    const char *M = mg_bin();
    mg_run(&r, "%s train %s/noaux.lua --run-dir %s/N1 -q && %s train %s/dp2ep2.lua --procs 4 --timeout 30 --run-dir %s/N4 -q"
           " && %s train %s/dp2ep2z.lua --procs 4 --timeout 30 --run-dir %s/Z4", M, t, t, M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    const char *ob = strstr(r.out, "optimizer state per rank: ");
    assert_non_null(ob);
    mg_run(&r, "%s train %s/dp2ep2z.lua --procs 4 --timeout 30 --run-dir %s/Z4a --steps 5 -q && "
           "%s train --resume %s/Z4a %s/noaux.lua -q && "
           "%s train %s/noaux.lua --run-dir %s/Z4b --steps 5 -q && "
           "%s train --resume %s/Z4b %s/dp2ep2z.lua --procs 4 --timeout 30 -q && "
           "%s train %s/ep1.lua --run-dir %s/A -q && %s train %s/ep2z.lua --procs 2 --timeout 30 --run-dir %s/E2 -q",
           M, t, t, M, t, t, M, t, t, M, t, t, M, t, t, M, t, t);
    if (r.code) fail_msg("%s", r.out);
    print_message("    dp 2 x ep 2, zero = 1: %.*s\n", (int)strcspn(ob, "\n"), ob);
    int bad = same_losses(t, "N4", "Z4", "dp 2 x ep 2: zero = 0 vs zero = 1") +
              same_losses(t, "N1", "Z4", "one process vs dp 2 x ep 2 zero = 1") +
              same_losses(t, "N1", "Z4a", "one process vs dp 2 x ep 2 zero = 1 resumed on one process") +
              same_losses(t, "N1", "Z4b", "one process vs one process resumed on dp 2 x ep 2 zero = 1") +
              same_losses(t, "A", "E2", "one process vs ep 2 zero = 1 (aux losses)");
    assert_int_equal(bad, 0);
    mg_test_rmtree(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_shard_table),
        cmocka_unit_test(test_ep_matches_one_rank),
        cmocka_unit_test(test_ep_shared_matches_one_rank),
        cmocka_unit_test(test_cli_ep),
        cmocka_unit_test(test_cli_ep_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
