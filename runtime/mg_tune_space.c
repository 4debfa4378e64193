/* mg_tune_space: enumeration of each tunable family's configurations, pruning rules with
 * reasons, and the cost model that ranks the survivors when the budget is short. */
#include "mg_tune_space.h"
#include "../templates/moe_params.h"   /* MG_GEMM_SMEM_BYTES: the formula the host launches with */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The values each knob may take: exactly the static_asserts of mg_gemm in
 * templates/mg_common.cuh. Keep the two in step; a new knob is a new row. */
const mg_tune_knob mg_tune_knobs[] = {
    {"bm", offsetof(mg_tile, bm), 2, {64, 128}},
    {"bn", offsetof(mg_tile, bn), 2, {64, 128}},
    {"bk", offsetof(mg_tile, bk), 3, {16, 32, 64}},
    {"stages", offsetof(mg_tile, stages), 3, {2, 3, 4}},
    {"warps", offsetof(mg_tile, warps), 2, {4, 8}},
};
const int mg_tune_n_knobs = (int)(sizeof mg_tune_knobs / sizeof mg_tune_knobs[0]);

const char *const mg_tune_status_names[MG_TUNE_NSTATUS] = {
    "pending", "ok", "pruned", "budget", "compile_error", "launch_error", "wrong", "timeout", "crash", "duplicate"};

int mg_tune_status_parse(const char *s)
{
    for (int i = 0; i < MG_TUNE_NSTATUS; i++)
        if (!strcmp(s, mg_tune_status_names[i])) return i;
    return -1;
}

int mg_tune_knob_get(const mg_tile *t, int knob)
{
    int v;
    memcpy(&v, (const char *)t + mg_tune_knobs[knob].offset, sizeof v);
    return v;
}

void mg_tune_knob_set(mg_tile *t, int knob, int v) { memcpy((char *)t + mg_tune_knobs[knob].offset, &v, sizeof v); }

void mg_tune_tile_str(const mg_tile *t, char *buf, size_t n)
{
    size_t w = 0;
    buf[0] = 0;
    for (int k = 0; k < mg_tune_n_knobs && w < n; k++)
        w += (size_t)snprintf(buf + w, n - w, "%s%s=%d", k ? "," : "", mg_tune_knobs[k].name, mg_tune_knob_get(t, k));
}

int mg_tune_tile_parse(const char *s, mg_tile *t)
{
    memset(t, 0, sizeof *t);
    unsigned seen = 0;
    while (*s) {
        const char *eq = strchr(s, '=');
        if (!eq) return -1;
        int k = 0;
        while (k < mg_tune_n_knobs &&
               (strlen(mg_tune_knobs[k].name) != (size_t)(eq - s) || strncmp(s, mg_tune_knobs[k].name, (size_t)(eq - s))))
            k++;
        if (k == mg_tune_n_knobs) return -1;
        char *end;
        long v = strtol(eq + 1, &end, 10);
        if (end == eq + 1 || (*end && *end != ',') || v <= 0 || v > 4096) return -1;
        mg_tune_knob_set(t, k, (int)v);
        seen |= 1u << k;
        s = *end ? end + 1 : end;
    }
    return seen == (1u << mg_tune_n_knobs) - 1 ? 0 : -1;
}

int mg_tune_tile_eq(const mg_tile *a, const mg_tile *b)
{
    for (int k = 0; k < mg_tune_n_knobs; k++)
        if (mg_tune_knob_get(a, k) != mg_tune_knob_get(b, k)) return 0;
    return 1;
}

int mg_tune_family_tunable(mg_family_id id) { return id == MG_FAM_UP || id == MG_FAM_DOWN; }

void mg_tune_hw_default(const char *arch, mg_tune_hw *hw)
{
    memset(hw, 0, sizeof *hw);
    if (arch && !strcmp(arch, "sm_80")) {
        *hw = (mg_tune_hw){.sms = 108, .cc_major = 8, .cc_minor = 0, .smem_optin = 166912, .smem_per_sm = 167936,
                           .regs_per_sm = 65536, .max_threads_per_sm = 2048, .l2_bytes = 40 << 20};
        snprintf(hw->name, sizeof hw->name, "assumed A100 (sm_80)");
    } else {
        *hw = (mg_tune_hw){.sms = 132, .cc_major = 9, .cc_minor = 0, .smem_optin = 232448, .smem_per_sm = 233472,
                           .regs_per_sm = 65536, .max_threads_per_sm = 2048, .l2_bytes = 50 << 20};
        snprintf(hw->name, sizeof hw->name, "assumed H100 SXM (sm_90)");
    }
}

void mg_tune_dims_of(const mg_spec *s, int T, mg_tune_dims *dm)
{
    dm->d = s->model.d_model;
    dm->ff = s->moe.d_ff;
    dm->glu = mg_act_is_glu(s->moe.activation);
    dm->f2 = dm->ff * (dm->glu ? 2 : 1);
    dm->E = s->moe.experts;
    dm->k = s->moe.top_k;
    dm->T = T;
    dm->esz = mg_dtype_size(s->dtype);
}

/* ------------------------------------------------------------------ the family's GEMMs */
/* The three GEMMs of a family (fwd, dgrad, wgrad) as M x N x K, slot dimensions marked:
 * routed slot rows (M = slots) or a slot reduction (K = slots). Operand layouts as in
 * runtime/mg_moe.c: fwd (A, B K-contiguous) = (1,1), dgrad (1,0), wgrad (0,0). */
typedef struct gemm_shape { int m, n, kd, m_slots, k_slots, a_kc, b_kc, static_smem; } gemm_shape;

static void family_gemms(const mg_tune_dims *dm, mg_family_id fam, const mg_tile *t, gemm_shape g[3])
{
    const int fwd_static = (t->bm + t->bn) * 8, dgrad_static = t->bm * 8;   /* long long row tables */
    if (fam == MG_FAM_UP) {
        g[0] = (gemm_shape){0, dm->f2, dm->d, 1, 0, 1, 1, fwd_static};
        g[1] = (gemm_shape){0, dm->d, dm->f2, 1, 0, 1, 0, dgrad_static};
        g[2] = (gemm_shape){dm->f2, dm->d, 0, 0, 1, 0, 0, 0};
    } else {
        g[0] = (gemm_shape){0, dm->d, dm->ff, 1, 0, 1, 1, fwd_static};
        g[1] = (gemm_shape){0, dm->ff, dm->d, 1, 0, 1, 0, dgrad_static};
        g[2] = (gemm_shape){dm->d, dm->ff, 0, 0, 1, 0, 0, 0};
    }
}

/* Registers per thread: accumulators + operand fragments + ~48 for addresses and loop state
 * (ptxas reports 40-60 on the default tile). */
static int reg_estimate(const mg_tune_dims *dm, const mg_tile *t)
{
    const int nt = t->warps * 32;
    if (dm->esz == 4) {
        int tn = t->bn == 128 ? 8 : 4, ntn = t->bn / tn, ntm = nt / ntn, tm = ntm ? t->bm / ntm : 0;
        return tm * tn + tm + tn + 48;
    }
    int wn_w = t->warps == 8 ? 4 : 2, wm_w = t->warps / wn_w;
    int mi = t->bm / wm_w / 16, ni = t->bn / wn_w / 8;
    return mi * ni * 4 + mi * 4 + ni * 2 + 48;
}

/* The template's layout rules (static_asserts of mg_gemm beyond the value sets). */
static int layout_ok(const mg_tune_dims *dm, const mg_tile *t, char *why, size_t n)
{
    const int nt = t->warps * 32;
    if (dm->esz == 4) {
        int tn = t->bn == 128 ? 8 : 4, ntn = t->bn / tn, ntm = nt / ntn, tm = ntm ? t->bm / ntm : 0;
        if (ntm * ntn != nt || tm * ntm != t->bm || tn % 2) {
            snprintf(why, n, "template rule: FFMA layout %dx%d threads does not tile %dx%d", ntm, ntn, t->bm, t->bn);
            return 0;
        }
        return 1;
    }
    int wn_w = t->warps == 8 ? 4 : 2, wm_w = t->warps / wn_w;
    int wtm = t->bm / wm_w, wtn = t->bn / wn_w;
    if (wtm % 16 || wtn % 16) {
        snprintf(why, n, "template rule: warp tile %dx%d is not a multiple of 16x16", wtm, wtn);
        return 0;
    }
    return 1;
}

static int round_up(int v, int m) { return (v + m - 1) / m * m; }

int mg_tune_prune(const mg_tune_dims *dm, mg_family_id fam, const mg_tune_hw *hw, mg_tune_cand *c)
{
    const mg_tile *t = &c->tile;
    gemm_shape g[3];
    family_gemms(dm, fam, t, g);
    c->smem = 0;
    for (int i = 0; i < 3; i++) {
        int b = MG_GEMM_SMEM_BYTES(t->bm, t->bn, t->bk, t->stages, dm->esz, g[i].a_kc, g[i].b_kc) + g[i].static_smem;
#ifdef MG_WG_SMEM_BYTES
        /* Hopper: 16-bit tiles with BM = 128 run the wgmma path, sized by its own macros (as
         * runtime/mg_launch.c sizes them) */
        if (hw->cc_major == 9 && dm->esz == 2 && t->bm == 128)
            b = MG_WG_SMEM_BYTES(MG_WG_BN(g[i].n)) + MG_WG_EXTRA_SMEM(fam == MG_FAM_DOWN, i);
#endif
        if (b > c->smem) c->smem = b;
    }
    c->regs = reg_estimate(dm, t);
    const int threads = 32 * t->warps, regs_alloc = round_up(c->regs, 8);
    int by_smem = hw->smem_per_sm / (c->smem + 1024);   /* 1 KiB per block reserved by the driver */
    int by_regs = regs_alloc > 255 ? 0 : hw->regs_per_sm / (regs_alloc * threads);
    int by_thr = hw->max_threads_per_sm / threads;
    int b = by_smem < by_regs ? by_smem : by_regs;
    if (by_thr < b) b = by_thr;
    c->blocks_per_sm = b > 32 ? 32 : b;

    char why[sizeof c->reason];
    int ok = layout_ok(dm, t, why, sizeof why);
    if (ok && c->smem > hw->smem_optin) {
        snprintf(why, sizeof why, "shared memory %d B per block > %d B (device opt-in limit)", c->smem, hw->smem_optin);
        ok = 0;
    }
    if (ok && c->regs > 255) {
        snprintf(why, sizeof why, "register estimate %d per thread > 255: would spill", c->regs);
        ok = 0;
    }
    if (ok && c->blocks_per_sm < 1) {
        snprintf(why, sizeof why, "no block fits on an SM (smem %d B, %d regs x %d threads)", c->smem, regs_alloc, threads);
        ok = 0;
    }
    /* Alignment: a tile twice as wide as every dimension it covers is all padding past the
     * half-size tile, which computes the same outputs with less work. */
    int n_max = 0, k_max = 0, m_max = 0;
    for (int i = 0; i < 3; i++) {
        if (round_up(g[i].n, 16) > n_max) n_max = round_up(g[i].n, 16);
        if (!g[i].k_slots && g[i].kd > k_max) k_max = g[i].kd;
        if (!g[i].m_slots && g[i].m > m_max) m_max = g[i].m;
    }
    if (ok && t->bn >= 2 * n_max) {
        snprintf(why, sizeof why, "alignment: bn=%d >= 2 x the widest N (%d): a bn=%d tile does the same work", t->bn,
                 n_max, t->bn / 2);
        ok = 0;
    }
    if (ok && t->bk >= 2 * k_max) {
        snprintf(why, sizeof why, "alignment: bk=%d >= 2 x the deepest K (%d)", t->bk, k_max);
        ok = 0;
    }
    (void)m_max;   /* M is mostly the slot count, which depends on routing: measured, not pruned */
    if (!ok) {
        c->status = MG_TUNE_PRUNED;
        snprintf(c->reason, sizeof c->reason, "%s", why);
    }
    return ok;
}

/* ------------------------------------------------------------------ cost model */
static double cdiv(double a, double b) { return ceil(a / b); }

double mg_tune_cost_model(const mg_tune_dims *dm, mg_family_id fam, const mg_tune_hw *hw, const mg_tile *t)
{
    mg_tune_cand c;
    memset(&c, 0, sizeof c);
    c.tile = *t;
    mg_tune_prune(dm, fam, hw, &c);
    const int b = c.blocks_per_sm > 0 ? c.blocks_per_sm : 1;
    gemm_shape g[3];
    family_gemms(dm, fam, t, g);
    const double slots_per_e = (double)dm->T * dm->k / dm->E;
    /* per-tile efficiency: operand reuse (bm·bn/(bm+bn)), pipeline depth, latency hiding by
     * resident warps, and the barrier per K step */
    double ai = (double)t->bm * t->bn / (t->bm + t->bn);
    double f_ai = ai / (ai + 24.0);
    double f_pipe = sqrt(fmin(1.0, t->stages * t->bk / 96.0));
    double f_occ = pow(fmin(1.0, b * t->warps / 8.0), 0.3);
    double f_sync = t->bk / (t->bk + 8.0);
    double eff = f_ai * f_pipe * f_occ * f_sync;
    double total = 0;
    for (int i = 0; i < 3; i++) {
        double tiles, kdepth;
        if (g[i].m_slots) {
            tiles = dm->E * cdiv(slots_per_e, t->bm) * cdiv(g[i].n, t->bn);
            kdepth = g[i].kd;
        } else {
            tiles = dm->E * cdiv(g[i].m, t->bm) * cdiv(g[i].n, t->bn);
            kdepth = slots_per_e;
        }
        double waves = cdiv(tiles, (double)hw->sms * b);
        double tile_time = (double)t->bm * t->bn * fmax(kdepth, t->bk) / eff;
        total += waves * b * tile_time;
    }
    return total * 1e-9;
}

/* ------------------------------------------------------------------ enumeration, ranking */
int mg_tune_enumerate(const mg_spec *spec, mg_family_id fam, int T, const mg_tune_hw *hw, mg_tune_cand **out)
{
    *out = NULL;
    mg_tune_dims dm;
    mg_tune_dims_of(spec, T, &dm);
    mg_plan plan;
    mg_err err;
    mg_tile def = {0, 0, 0, 0, 0};
    if (mg_plan_make(spec, NULL, &plan, &err) == MG_OK) def = plan.fam[fam].tile;
    int total = 1;
    for (int k = 0; k < mg_tune_n_knobs; k++) total *= mg_tune_knobs[k].n_values;
    mg_tune_cand *c = calloc((size_t)total + 1, sizeof *c);
    if (!c) return -1;
    int n = 0, have_def = 0;
    for (int i = 0; i < total; i++) {
        mg_tune_cand *x = &c[n++];
        int r = i;
        for (int k = mg_tune_n_knobs - 1; k >= 0; k--) {   /* last knob varies fastest */
            mg_tune_knob_set(&x->tile, k, mg_tune_knobs[k].values[r % mg_tune_knobs[k].n_values]);
            r /= mg_tune_knobs[k].n_values;
        }
        x->is_default = def.bm && mg_tune_tile_eq(&x->tile, &def);
        have_def |= x->is_default;
    }
    if (!have_def && def.bm) {   /* a rule outside the table still gets measured */
        c[n].tile = def;
        c[n++].is_default = 1;
    }
    for (int i = 0; i < n; i++) {
        mg_tune_prune(&dm, fam, hw, &c[i]);
        c[i].predicted = mg_tune_cost_model(&dm, fam, hw, &c[i].tile);
        if (c[i].is_default && c[i].status == MG_TUNE_PRUNED) {
            /* the rule is what runs today: measure it anyway, say what the rules think */
            static const char pre[] = "default kept despite: ";
            size_t len = strnlen(c[i].reason, sizeof c[i].reason - sizeof pre);
            memmove(c[i].reason + sizeof pre - 1, c[i].reason, len);
            memcpy(c[i].reason, pre, sizeof pre - 1);
            c[i].reason[sizeof pre - 1 + len] = 0;
            c[i].status = MG_TUNE_PENDING;
        }
    }
    *out = c;
    return n;
}

static int cmp_rank(const void *pa, const void *pb)
{
    const mg_tune_cand *a = pa, *b = pb;
    int ga = a->status == MG_TUNE_PENDING ? (a->is_default ? 0 : 1) : 2;
    int gb = b->status == MG_TUNE_PENDING ? (b->is_default ? 0 : 1) : 2;
    if (ga != gb) return ga - gb;
    if (ga == 1 && a->predicted != b->predicted) return a->predicted < b->predicted ? -1 : 1;
    /* stable tie-break: the config string order */
    char sa[96], sb[96];
    mg_tune_tile_str(&a->tile, sa, sizeof sa);
    mg_tune_tile_str(&b->tile, sb, sizeof sb);
    return strcmp(sa, sb);
}

int mg_tune_rank(mg_tune_cand *c, int n, int keep)
{
    qsort(c, (size_t)n, sizeof *c, cmp_rank);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].status != MG_TUNE_PENDING) continue;
        if (keep < 0 || kept < keep) { kept++; continue; }
        c[i].status = MG_TUNE_BUDGET;
        snprintf(c[i].reason, sizeof c[i].reason, "budget: ranked #%d of the pending configs by the cost model, "
                 "only %d fit in --budget", i + 1, keep);
    }
    return kept;
}

const mg_tune_cand *mg_tune_pick(const mg_tune_cand *c, int n, double margin, const mg_tune_cand **def)
{
    const mg_tune_cand *best = NULL, *d = NULL;
    for (int i = 0; i < n; i++) {
        if (c[i].status != MG_TUNE_OK || !(c[i].median_ms > 0)) continue;
        if (c[i].is_default) d = &c[i];
        if (!best || c[i].median_ms < best->median_ms) best = &c[i];
    }
    if (def) *def = d;
    if (best && d && best != d && best->median_ms > d->median_ms * (1.0 - margin)) best = d;
    return best;
}
