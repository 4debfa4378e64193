/* mg_metrics: routing analytics of the MoE layers (see mg_metrics.h). */
#include "mg_metrics.h"
#include "mg_tb.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int mg_metrics_init(mg_metrics *m, int n, const int *layer_ids, int E, int k)
{
    memset(m, 0, sizeof *m);
    m->n = n, m->E = E, m->k = k;
    if (n <= 0) return 0;
    m->l = calloc((size_t)n, sizeof *m->l);
    if (!m->l) return -1;
    for (int i = 0; i < n; i++) {
        m->l[i].layer = layer_ids ? layer_ids[i] : i;
        m->l[i].load = calloc((size_t)E, sizeof(long));
        m->l[i].coact = calloc((size_t)E * (size_t)E, sizeof(long));
        if (!m->l[i].load || !m->l[i].coact) return -1;
    }
    return 0;
}

void mg_metrics_free(mg_metrics *m)
{
    for (int i = 0; i < m->n && m->l; i++) free(m->l[i].load), free(m->l[i].coact);
    free(m->l);
    memset(m, 0, sizeof *m);
}

void mg_metrics_reset(mg_metrics *m)
{
    for (int i = 0; i < m->n; i++) {
        mg_metrics_layer *l = &m->l[i];
        l->tokens = l->dropped = 0;
        l->entropy_sum = l->top1_sum = l->aux = l->z = 0;
        memset(l->load, 0, sizeof(long) * (size_t)m->E);
        memset(l->coact, 0, sizeof(long) * (size_t)m->E * (size_t)m->E);
    }
    m->steps = 0;
}

void mg_metrics_probs_sums(const float *probs, int T, int E, double *entropy_sum, double *top1_sum)
{
    double h = 0, t1 = 0;
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * E;
        double mx = 0;
        for (int e = 0; e < E; e++) {
            double v = p[e];
            if (v > 0) h -= v * log(v);
            if (v > mx) mx = v;
        }
        t1 += mx;
    }
    *entropy_sum = h, *top1_sum = t1;
}

void mg_metrics_coact(const int *topk_idx, int T, int E, int k, long *coact)
{
    for (int t = 0; t < T; t++) {
        const int *s = topk_idx + (size_t)t * k;
        for (int i = 0; i < k; i++) {
            if (s[i] < 0 || s[i] >= E) continue;
            for (int j = 0; j < k; j++)
                if (s[j] >= 0 && s[j] < E && (i == j || s[i] != s[j])) coact[(size_t)s[i] * E + s[j]]++;
        }
    }
}

void mg_metrics_add(mg_metrics *m, int li, const mg_metrics_batch *b)
{
    if (li < 0 || li >= m->n) return;
    mg_metrics_layer *l = &m->l[li];
    int E = m->E, k = m->k;
    l->tokens += b->T;
    l->dropped += b->dropped;
    l->aux += b->aux;
    l->z += b->z;
    if (b->counts_all)
        for (int e = 0; e < E; e++) l->load[e] += b->counts_all[e];
    if (b->topk_idx) {
        if (!b->counts_all)
            for (long tk = 0; tk < (long)b->T * k; tk++)
                if (b->topk_idx[tk] >= 0 && b->topk_idx[tk] < E) l->load[b->topk_idx[tk]]++;
        mg_metrics_coact(b->topk_idx, b->T, E, k, l->coact);
    } else if (b->coact) {
        for (size_t i = 0; i < (size_t)E * E; i++) l->coact[i] += b->coact[i];
    }
    if (b->probs) {
        double h, t1;
        mg_metrics_probs_sums(b->probs, b->T, E, &h, &t1);
        l->entropy_sum += h, l->top1_sum += t1;
    } else {
        l->entropy_sum += b->entropy_sum, l->top1_sum += b->top1_sum;
    }
}

void mg_metrics_end_step(mg_metrics *m) { m->steps++; }

void mg_metrics_summarize(const mg_metrics *m, int li, mg_metrics_summary *s)
{
    const mg_metrics_layer *l = &m->l[li];
    int E = m->E;
    double sum = 0, sq = 0, mx = 0;
    memset(s, 0, sizeof *s);
    for (int e = 0; e < E; e++) {
        double v = (double)l->load[e];
        sum += v, sq += v * v;
        if (v > mx) mx = v;
        if (!l->load[e]) s->dead++;
    }
    double mean = sum / E, var = sq / E - mean * mean;
    s->tokens = l->tokens;
    s->cv = mean > 0 ? sqrt(var > 0 ? var : 0) / mean : 0;
    s->max_mean = mean > 0 ? mx / mean : 0;
    s->dropped_frac = l->tokens ? (double)l->dropped / ((double)l->tokens * m->k) : 0;
    s->entropy = l->tokens ? l->entropy_sum / (double)l->tokens : 0;
    s->top1 = l->tokens ? l->top1_sum / (double)l->tokens : 0;
    long steps = m->steps > 0 ? m->steps : 1;
    s->aux = l->aux / (double)steps;
    s->z = l->z / (double)steps;
}

static void json_longs(FILE *f, const long *v, int n)
{
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%ld", i ? ", " : "", v[i]);
    fputc(']', f);
}

void mg_metrics_json(const mg_metrics *m, FILE *f)
{
    if (m->n <= 0 || !m->l[0].tokens) return;
    int E = m->E;
    fputs(", \"moe\": [", f);
    for (int i = 0; i < m->n; i++) {
        const mg_metrics_layer *l = &m->l[i];
        mg_metrics_summary s;
        mg_metrics_summarize(m, i, &s);
        fprintf(f, "%s{\"layer\": %d, \"tokens\": %ld, \"load\": ", i ? ", " : "", l->layer, s.tokens);
        json_longs(f, l->load, E);
        fprintf(f, ", \"cv\": %.17g, \"max_mean\": %.17g, \"dropped_frac\": %.17g, \"entropy\": %.17g, "
                "\"top1\": %.17g, \"aux\": %.17g, \"z\": %.17g, \"dead\": [", s.cv, s.max_mean, s.dropped_frac,
                s.entropy, s.top1, s.aux, s.z);
        int first = 1;
        for (int e = 0; e < E; e++)
            if (!l->load[e]) fprintf(f, "%s%d", first ? "" : ", ", e), first = 0;
        fputs("], \"coact\": [", f);
        for (int e = 0; e < E; e++) {
            if (e) fputs(", ", f);
            json_longs(f, l->coact + (size_t)e * E, E);
        }
        fputs("]}", f);
    }
    fputc(']', f);
}

/* load/mean in [0, 2] → blue (0) … white (1 = balanced) … red (≥ 2). */
static void heat_rgb(double r, uint8_t *px)
{
    double t = r / 2 < 0 ? 0 : r / 2 > 1 ? 1 : r / 2;
    if (t < 0.5) {
        double u = t * 2;
        px[0] = (uint8_t)(40 + 215 * u), px[1] = (uint8_t)(80 + 175 * u), px[2] = 255;
    } else {
        double u = (t - 0.5) * 2;
        px[0] = 255, px[1] = (uint8_t)(255 - 215 * u), px[2] = (uint8_t)(255 - 215 * u);
    }
}

void mg_metrics_tb(const mg_metrics *m, mg_tb *tb, long step, int image)
{
    if (!tb || m->n <= 0 || !m->l[0].tokens) return;
    int E = m->E;
    char tag[96];
    double *lim = malloc(sizeof(double) * (size_t)E), *cnt = malloc(sizeof(double) * (size_t)E);
    for (int i = 0; i < m->n; i++) {
        const mg_metrics_layer *l = &m->l[i];
        mg_metrics_summary s;
        mg_metrics_summarize(m, i, &s);
        static const char *const names[] = {"load_cv", "max_mean", "dropped_frac", "entropy", "top1", "aux", "z", "dead"};
        double vals[] = {s.cv, s.max_mean, s.dropped_frac, s.entropy, s.top1, s.aux, s.z, s.dead};
        for (int j = 0; j < 8; j++) {
            snprintf(tag, sizeof tag, "moe/L%d/%s", l->layer, names[j]);
            mg_tb_scalar(tb, tag, step, vals[j]);
        }
        for (int e = 0; e < E; e++) lim[e] = e + 1, cnt[e] = (double)l->load[e];
        snprintf(tag, sizeof tag, "moe/L%d/load", l->layer);
        mg_tb_histo(tb, tag, step, lim, cnt, E);
    }
    if (image) {
        const int cell = 12;
        int w = E * cell, h = m->n * cell;
        uint8_t *rgb = malloc((size_t)w * h * 3);
        for (int i = 0; i < m->n; i++) {
            double sum = 0;
            for (int e = 0; e < E; e++) sum += (double)m->l[i].load[e];
            for (int e = 0; e < E; e++) {
                uint8_t px[3];
                heat_rgb(sum > 0 ? (double)m->l[i].load[e] * E / sum : 0, px);
                for (int y = 0; y < cell; y++)
                    for (int x = 0; x < cell; x++) memcpy(rgb + (((size_t)(i * cell + y) * w) + e * cell + x) * 3, px, 3);
            }
        }
        mg_tb_image(tb, "moe/load_heatmap", step, rgb, w, h);
        free(rgb);
    }
    free(lim), free(cnt);
    mg_tb_flush(tb);
}
