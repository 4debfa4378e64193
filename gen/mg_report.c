/* mg_report: `moegen report` (self-contained HTML, inline SVG) and `moegen watch` (ANSI). */
#include "mg_report.h"
#include "mg_err.h"
#include "mg_sb.h"
#include "mg_spec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ---- one run, from RUN_DIR/metrics.jsonl and spec.lua ---------------------------------- */

typedef struct series { int n, cap; double *x, *y; } series;

typedef struct layer_hist {
    int layer;
    series cv, drop;
    int nt, cap;
    long *steps;
    double *share;     /* [nt][E] load·E/Σload (1 = balanced) */
    double *coact;     /* [E][E] summed over the run */
    long *last_load;   /* [E] the newest window */
} layer_hist;

typedef struct run_data {
    char dir[1024], name[64];
    int have_spec;
    mg_spec spec;
    series loss, val;
    double tps, elapsed, last_loss, best_ppl;
    long tokens, last_step, best_step;
    int E, nl;
    layer_hist *L;
    json_t *analysis;   /* RUN_DIR/analysis.json when present */
} run_data;

static void push(series *s, double x, double y)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->x = realloc(s->x, sizeof(double) * (size_t)s->cap);
        s->y = realloc(s->y, sizeof(double) * (size_t)s->cap);
    }
    s->x[s->n] = x, s->y[s->n] = y, s->n++;
}

static double jnum(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static void add_moe(run_data *r, long step, const json_t *moe)
{
    int nl = (int)json_array_size(moe);
    if (!r->L && nl > 0) {
        r->nl = nl;
        r->E = (int)json_array_size(json_object_get(json_array_get(moe, 0), "load"));
        r->L = calloc((size_t)nl, sizeof *r->L);
        for (int i = 0; i < nl; i++) {
            r->L[i].layer = (int)json_integer_value(json_object_get(json_array_get(moe, (size_t)i), "layer"));
            r->L[i].coact = calloc((size_t)r->E * (size_t)r->E, sizeof(double));
            r->L[i].last_load = calloc((size_t)r->E, sizeof(long));
        }
    }
    int E = r->E;
    for (int i = 0; i < nl && i < r->nl; i++) {
        const json_t *l = json_array_get(moe, (size_t)i), *load = json_object_get(l, "load"),
                     *co = json_object_get(l, "coact");
        layer_hist *h = &r->L[i];
        if ((int)json_array_size(load) != E) continue;
        push(&h->cv, (double)step, jnum(l, "cv"));
        push(&h->drop, (double)step, jnum(l, "dropped_frac"));
        if (h->nt == h->cap) {
            h->cap = h->cap ? 2 * h->cap : 256;
            h->steps = realloc(h->steps, sizeof(long) * (size_t)h->cap);
            h->share = realloc(h->share, sizeof(double) * (size_t)h->cap * (size_t)E);
        }
        double sum = 0;
        for (int e = 0; e < E; e++) sum += (double)(h->last_load[e] = (long)json_integer_value(json_array_get(load, (size_t)e)));
        for (int e = 0; e < E; e++) h->share[(size_t)h->nt * E + e] = sum > 0 ? (double)h->last_load[e] * E / sum : 0;
        h->steps[h->nt++] = step;
        for (int e = 0; e < E && (int)json_array_size(co) == E; e++)
            for (int f = 0; f < E; f++)
                h->coact[(size_t)e * E + f] += (double)json_integer_value(json_array_get(json_array_get(co, (size_t)e), (size_t)f));
    }
}

static int load_run(const char *dir, run_data *r, mg_err *err)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    r->best_ppl = NAN, r->last_loss = NAN, r->best_step = -1;
    char path[1200];
    snprintf(path, sizeof path, "%s/spec.lua", dir);
    mg_err e2;
    if (!access(path, R_OK) && !mg_spec_load(path, &r->spec, &e2)) r->have_spec = 1;
    const char *base = strrchr(dir, '/');
    snprintf(r->name, sizeof r->name, "%s", r->have_spec ? r->spec.name : base && base[1] ? base + 1 : dir);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return mg_err_set(err, MG_EUSER, "%s: cannot open: %s (HINT: is %s a run dir of moegen train?)", path,
                              strerror(errno), dir);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) continue;   /* a line being written right now */
        long step = (long)json_integer_value(json_object_get(j, "step"));
        double loss = jnum(j, "loss"), val = jnum(j, "val_ppl");
        push(&r->loss, (double)step, loss);
        r->last_loss = loss, r->last_step = step;
        r->tps = jnum(j, "tok_per_s"), r->elapsed = jnum(j, "elapsed_s");
        r->tokens = (long)json_integer_value(json_object_get(j, "tokens_total"));
        if (isfinite(val)) {
            push(&r->val, (double)step, val);
            if (!(val >= r->best_ppl)) r->best_ppl = val, r->best_step = step;
        }
        const json_t *moe = json_object_get(j, "moe");
        if (json_is_array(moe)) add_moe(r, step, moe);
        json_decref(j);
    }
    free(line);
    fclose(f);
    snprintf(path, sizeof path, "%s/analysis.json", dir);
    if (!access(path, R_OK)) r->analysis = json_load_file(path, 0, NULL);
    return 0;
}

static void free_series(series *s) { free(s->x), free(s->y); }

static void free_run(run_data *r)
{
    free_series(&r->loss), free_series(&r->val);
    for (int i = 0; i < r->nl; i++) {
        layer_hist *h = &r->L[i];
        free_series(&h->cv), free_series(&h->drop);
        free(h->steps), free(h->share), free(h->coact), free(h->last_load);
    }
    free(r->L);
    json_decref(r->analysis);
}

/* ---- SVG ----------------------------------------------------------------------------- */

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

static void esc(mg_sb *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') mg_sb_puts(o, "&lt;");
        else if (*s == '>') mg_sb_puts(o, "&gt;");
        else if (*s == '&') mg_sb_puts(o, "&amp;");
        else if (*s == '"') mg_sb_puts(o, "&quot;");
        else mg_sb_putn(o, s, 1);
    }
}

enum { CW = 640, CH = 300, ML = 64, MR = 16, MT = 34, MB = 44 };

static void fmt_num(char *b, size_t n, double v)
{
    if (v != 0 && (fabs(v) >= 1e5 || fabs(v) < 1e-3)) snprintf(b, n, "%.2g", v);
    else snprintf(b, n, "%.4g", v);
}

/* A line chart of n series (several runs or layers side by side); points as well when few. */
static void line_chart(mg_sb *o, const char *title, const char *ylabel, const series *const *s,
                       const char *const *names, int n)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < s[i]->n; j++) {
            if (!isfinite(s[i]->y[j])) continue;
            x0 = fmin(x0, s[i]->x[j]), x1 = fmax(x1, s[i]->x[j]);
            y0 = fmin(y0, s[i]->y[j]), y1 = fmax(y1, s[i]->y[j]);
        }
    if (!isfinite(x0)) return;
    if (x1 == x0) x0 -= 1, x1 += 1;
    if (y1 - y0 < 1e-12) y0 -= 0.5 * (fabs(y0) > 0 ? fabs(y0) : 1), y1 += 0.5 * (fabs(y1) > 0 ? fabs(y1) : 1);
    double pw = CW - ML - MR, ph = CH - MT - MB;
#define PX(v) (ML + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (MT + (1 - ((v) - y0) / (y1 - y0)) * ph)
    mg_sb_printf(o, "<figure><svg class=\"chart\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
                 "<text x=\"%d\" y=\"20\" class=\"title\">", CW, CH, CW, CH, ML);
    esc(o, title);
    mg_sb_printf(o, "</text><rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" class=\"frame\"/>", ML, MT, pw, ph);
    for (int t = 0; t <= 4; t++) {
        char b[32];
        double yv = y0 + (y1 - y0) * t / 4, xv = x0 + (x1 - x0) * t / 4;
        fmt_num(b, sizeof b, yv);
        mg_sb_printf(o, "<line x1=\"%d\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                     "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%s</text>",
                     ML, ML + pw, PY(yv), PY(yv), ML - 4, PY(yv) + 4, b);
        mg_sb_printf(o, "<text x=\"%.1f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%.0f</text>", PX(xv), CH - MB + 16, xv);
    }
    mg_sb_printf(o, "<text x=\"%.0f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">step</text>", ML + pw / 2, CH - 8);
    mg_sb_printf(o, "<text x=\"14\" y=\"%.0f\" class=\"tick\" transform=\"rotate(-90 14 %.0f)\" "
                 "text-anchor=\"middle\">%s</text>", MT + ph / 2, MT + ph / 2, ylabel);
    for (int i = 0; i < n; i++) {
        const char *col = palette[i % 10];
        int stride = s[i]->n > 1500 ? s[i]->n / 1500 + 1 : 1, started = 0;
        mg_sb_printf(o, "<path class=\"mark\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" d=\"", col);
        for (int j = 0; j < s[i]->n; j += stride) {
            if (!isfinite(s[i]->y[j])) continue;
            mg_sb_printf(o, "%c%.1f %.1f", started ? 'L' : 'M', PX(s[i]->x[j]), PY(s[i]->y[j]));
            started = 1;
        }
        mg_sb_puts(o, "\"/>");
        if (s[i]->n <= 60)
            for (int j = 0; j < s[i]->n; j++)
                if (isfinite(s[i]->y[j]))
                    mg_sb_printf(o, "<circle class=\"mark\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\">"
                                 "<title>step %.0f: %.4g</title></circle>", PX(s[i]->x[j]), PY(s[i]->y[j]), col,
                                 s[i]->x[j], s[i]->y[j]);
        mg_sb_printf(o, "<rect x=\"%.0f\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%.0f\" y=\"%d\" "
                     "class=\"tick\">", ML + pw - 180, MT + 8 + 16 * i, col, ML + pw - 166, MT + 17 + 16 * i);
        esc(o, names[i]);
        mg_sb_puts(o, "</text>");
    }
    mg_sb_puts(o, "</svg></figure>\n");
#undef PX
#undef PY
}

/* v in [0, vmax]: diverging (1 = white: balanced load) or sequential (white → purple). */
static void color(double v, double vmax, int diverging, char *b, size_t n)
{
    double t = vmax > 0 ? v / vmax : 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    int r, g, bl;
    if (!diverging) r = (int)(255 - 170 * t), g = (int)(255 - 215 * t), bl = (int)(255 - 90 * t);
    else if (t < 0.5) r = (int)(40 + 430 * t), g = (int)(80 + 350 * t), bl = 255;
    else r = 255, g = bl = (int)(255 - 430 * (t - 0.5));
    snprintf(b, n, "rgb(%d,%d,%d)", r, g, bl);
}

/* rows × cols cells of v; col_label(c) names column c in the tooltip. */
static void heatmap(mg_sb *o, const char *title, const char *xlabel, const char *ylabel, int rows, int cols,
                    const double *v, double vmax, int diverging, const long *col_steps)
{
    int w = CW, h = rows * 14 + MT + MB < 160 ? 160 : rows * 14 + MT + MB;
    if (h > 700) h = 700;
    double pw = w - ML - MR, ph = h - MT - MB, cw = pw / cols, rh = ph / rows;
    mg_sb_printf(o, "<figure><svg class=\"chart\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
                 "<text x=\"%d\" y=\"20\" class=\"title\">", w, h, w, h, ML);
    esc(o, title);
    mg_sb_puts(o, "</text>");
    for (int r = 0; r < rows; r++) {
        if (rows <= 32 || r % (rows / 16) == 0)
            mg_sb_printf(o, "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%d</text>", ML - 4,
                         MT + (r + 0.5) * rh + 4, r);
        for (int c = 0; c < cols; c++) {
            char b[32];
            double x = v[(size_t)r * cols + c];
            color(x, vmax, diverging, b, sizeof b);
            mg_sb_printf(o, "<rect class=\"mark\" x=\"%.1f\" y=\"%.1f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">"
                         "<title>%s %ld, %s %d: %.3g</title></rect>", ML + c * cw, MT + r * rh, cw + 0.05, rh + 0.05, b,
                         xlabel, col_steps ? col_steps[c] : (long)c, ylabel, r, x);
        }
    }
    if (col_steps)
        mg_sb_printf(o, "<text x=\"%d\" y=\"%.0f\" class=\"tick\">step %ld</text><text x=\"%.0f\" y=\"%.0f\" "
                     "class=\"tick\" text-anchor=\"end\">step %ld</text>", ML, MT + ph + 16, col_steps[0], ML + pw,
                     MT + ph + 16, col_steps[cols - 1]);
    mg_sb_printf(o, "<text x=\"14\" y=\"%.0f\" class=\"tick\" transform=\"rotate(-90 14 %.0f)\" text-anchor=\"middle\">"
                 "%s</text></svg></figure>\n", MT + ph / 2, MT + ph / 2, ylabel);
}

/* ---- the report ---------------------------------------------------------------------- */

void mg_report_page(const char *title, const char *body, mg_sb *o)
{
    mg_sb_puts(o, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>");
    esc(o, title);
    mg_sb_puts(o, "</title>\n<script>\n"
               "// self-check, read by tests/test_report.c through --dump-dom: errors and charts without marks\n"
               "window.addEventListener('error', function (e) {\n"
               "  document.documentElement.dataset.errors = (document.documentElement.dataset.errors || '') + e.message + ';';\n"
               "});\n"
               "document.addEventListener('DOMContentLoaded', function () {\n"
               "  var charts = document.querySelectorAll('svg.chart'), drawn = 0;\n"
               "  charts.forEach(function (c) { if (c.querySelectorAll('.mark').length > 0) drawn++; else c.dataset.empty = '1'; });\n"
               "  document.body.dataset.charts = charts.length;\n"
               "  document.body.dataset.drawn = drawn;\n"
               "});\n</script>\n<style>\n"
               "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}\n"
               "h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}\n"
               "figure{display:inline-block;margin:8px}svg .title{font-weight:600;font-size:13px}\n"
               "svg .tick{font-size:11px;fill:#555}svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#ccc}\n"
               "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\n"
               "th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f7f7f7;padding:8px;font-size:12px}\n"
               "</style></head><body>\n");
    mg_sb_puts(o, body);
    mg_sb_puts(o, "</body></html>\n");
}

static void summary_table(mg_sb *o, const run_data *r, int n)
{
    mg_sb_puts(o, "<h2>Runs</h2><table><tr><th class=\"l\">run</th><th class=\"l\">spec</th><th>parameters</th>"
               "<th class=\"l\">MoE</th><th>steps</th><th>tokens</th><th>tok/s</th><th>time (s)</th>"
               "<th>last loss</th><th>best val ppl</th></tr>\n");
    for (int i = 0; i < n; i++) {
        char params[32] = "-", moe[96] = "-", ppl[64] = "-";
        if (r[i].have_spec) {
            mg_derived d;
            mg_spec_derive(&r[i].spec, &d);
            snprintf(params, sizeof params, "%.3gM", d.params_total / 1e6);
            if (r[i].spec.moe.every > 0)
                snprintf(moe, sizeof moe, "%d experts, top-%d, %s", r[i].spec.moe.experts, r[i].spec.moe.top_k,
                         mg_router_names[r[i].spec.moe.router]);
        }
        if (isfinite(r[i].best_ppl)) snprintf(ppl, sizeof ppl, "%.3f (step %ld)", r[i].best_ppl, r[i].best_step);
        mg_sb_puts(o, "<tr><td class=\"l\">");
        esc(o, r[i].dir);
        mg_sb_puts(o, "</td><td class=\"l\">");
        esc(o, r[i].name);
        mg_sb_printf(o, "</td><td>%s</td><td class=\"l\">%s</td><td>%ld</td><td>%ld</td><td>%.0f</td><td>%.1f</td>"
                     "<td>%.4f</td><td>%s</td></tr>\n", params, moe, r[i].last_step, r[i].tokens, r[i].tps,
                     r[i].elapsed, r[i].last_loss, ppl);
    }
    mg_sb_puts(o, "</table>\n");
    for (int i = 0; i < n; i++) {
        if (!r[i].have_spec) continue;
        mg_sb sp;
        mg_sb_init(&sp);
        mg_spec_dump(&r[i].spec, &sp);
        mg_sb_puts(o, "<details><summary>spec of ");
        esc(o, r[i].dir);
        mg_sb_puts(o, "</summary><pre>");
        esc(o, sp.buf ? sp.buf : "");
        mg_sb_puts(o, "</pre></details>\n");
        mg_sb_free(&sp);
    }
}

static void routing_section(mg_sb *o, const run_data *r, int n)
{
    int any = 0;
    for (int i = 0; i < n; i++) any |= r[i].nl > 0;
    if (!any) return;
    mg_sb_puts(o, "<h2>Routing</h2>\n");
    /* CV and drops: every run × layer as one series */
    int ns = 0;
    for (int i = 0; i < n; i++) ns += r[i].nl;
    const series **cv = calloc((size_t)ns, sizeof *cv), **dr = calloc((size_t)ns, sizeof *dr);
    char (*nm)[160] = calloc((size_t)ns, sizeof *nm);
    const char **names = calloc((size_t)ns, sizeof *names);
    for (int i = 0, k = 0; i < n; i++)
        for (int l = 0; l < r[i].nl; l++, k++) {
            cv[k] = &r[i].L[l].cv, dr[k] = &r[i].L[l].drop;
            snprintf(nm[k], sizeof nm[k], "%s L%d", r[i].name, r[i].L[l].layer);
            names[k] = nm[k];
        }
    line_chart(o, "Load CV (std/mean of tokens per expert; 0 = balanced)", "load CV", cv, names, ns);
    line_chart(o, "Dropped-token fraction (capacity)", "dropped fraction", dr, names, ns);
    free(cv), free(dr), free(nm), free(names);
    for (int i = 0; i < n; i++)
        for (int l = 0; l < r[i].nl; l++) {
            const layer_hist *h = &r[i].L[l];
            int E = r[i].E, cols = h->nt < 160 ? h->nt : 160;
            if (!cols) continue;
            double *v = calloc((size_t)E * (size_t)cols, sizeof(double));
            long *st = calloc((size_t)cols, sizeof(long));
            int *cnt = calloc((size_t)cols, sizeof(int));
            for (int t = 0; t < h->nt; t++) {   /* bucket the windows into cols columns */
                int c = (int)((long)t * cols / h->nt);
                for (int e = 0; e < E; e++) v[(size_t)e * cols + c] += h->share[(size_t)t * E + e];
                cnt[c]++, st[c] = h->steps[t];
            }
            for (int c = 0; c < cols; c++)
                for (int e = 0; e < E; e++) v[(size_t)e * cols + c] /= cnt[c] ? cnt[c] : 1;
            char title[256];
            snprintf(title, sizeof title, "%s layer %d: expert load over time (load/mean; white = balanced, red = "
                     "over, blue = under)", r[i].name, h->layer);
            heatmap(o, title, "step", "expert", E, cols, v, 2.0, 1, st);
            /* co-activation, off-diagonal normalized by its max */
            double mx = 0;
            double *co = malloc(sizeof(double) * (size_t)E * (size_t)E);
            for (int e = 0; e < E; e++)
                for (int f = 0; f < E; f++) {
                    co[(size_t)e * E + f] = e == f ? 0 : h->coact[(size_t)e * E + f];
                    mx = fmax(mx, co[(size_t)e * E + f]);
                }
            snprintf(title, sizeof title, "%s layer %d: expert co-activation (tokens choosing both; whole run)",
                     r[i].name, h->layer);
            heatmap(o, title, "expert", "expert", E, E, co, mx > 0 ? mx : 1, 0, NULL);
            free(v), free(st), free(cnt), free(co);
        }
}

static const char *const report_help =
    "usage: moegen report RUN_DIR [RUN_DIR...] [-o report.html]\n"
    "  One self-contained HTML file (inline SVG, no network resources) from the runs' metrics.jsonl:\n"
    "  loss and validation perplexity (runs side by side), load CV and dropped-token fraction over time,\n"
    "  per-layer expert-load heatmaps over time, co-activation heatmaps, a run summary (spec, tokens,\n"
    "  throughput, best val ppl) and, when RUN_DIR/analysis.json exists (moegen analyze), expert\n"
    "  specialization. Default output: report.html.\n"
    "example: moegen report runs/ci-cpu runs/ci-cpu-sigmoid -o report.html\n";

int mg_cmd_report(int argc, char **argv)
{
    const char *out = "report.html";
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(report_help, stdout);
            free(dirs);
            return 0;
        }
        if (!strcmp(argv[i], "-o")) {
            if (i + 1 >= argc) return free(dirs), fprintf(stderr, "moegen: report: -o needs a value\n"), MG_EUSER;
            out = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "moegen: report: unknown option '%s' (see moegen report --help)\n", argv[i]);
            return free(dirs), MG_EUSER;
        } else dirs[n++] = argv[i];
    }
    if (!n) return free(dirs), fprintf(stderr, "moegen: report: missing run dir (usage: moegen report RUN_DIR... [-o FILE])\n"), MG_EUSER;
    run_data *r = calloc((size_t)n, sizeof *r);
    mg_err err;
    for (int i = 0; i < n; i++)
        if (load_run(dirs[i], &r[i], &err)) {
            fprintf(stderr, "moegen: %s\n", err.msg);
            for (int j = 0; j <= i; j++) free_run(&r[j]);
            return free(r), free(dirs), MG_EUSER;
        }
    mg_sb body, page;
    mg_sb_init(&body), mg_sb_init(&page);
    mg_sb_puts(&body, "<h1>moegen report</h1>\n");
    summary_table(&body, r, n);
    mg_sb_puts(&body, "<h2>Training</h2>\n");
    const series **ls = calloc((size_t)n, sizeof *ls), **vs = calloc((size_t)n, sizeof *vs);
    const char **names = calloc((size_t)n, sizeof *names);
    int nv = 0;
    for (int i = 0; i < n; i++) {
        ls[i] = &r[i].loss, names[i] = r[i].name;
        if (r[i].val.n) vs[nv++] = &r[i].val;
    }
    line_chart(&body, "Training loss (CE + aux + z)", "loss", ls, names, n);
    if (nv) {
        const char **vn = calloc((size_t)n, sizeof *vn);
        for (int i = 0, k = 0; i < n; i++)
            if (r[i].val.n) vn[k++] = r[i].name;
        line_chart(&body, "Validation perplexity", "val ppl", vs, vn, nv);
        free(vn);
    }
    free(ls), free(vs), free(names);
    routing_section(&body, r, n);
    for (int i = 0; i < n; i++)
        if (r[i].analysis) mg_report_analysis_html(r[i].analysis, &body);
    mg_report_page("moegen report", body.buf, &page);
    int rc = 0;
    FILE *f = fopen(out, "w");
    if (!f || fwrite(page.buf, 1, page.len, f) != page.len || fclose(f)) {
        fprintf(stderr, "moegen: %s: cannot write: %s\n", out, strerror(errno));
        rc = MG_EUSER;
    } else {
        printf("report: %d run%s -> %s (%zu bytes)\n", n, n > 1 ? "s" : "", out, page.len);
    }
    mg_sb_free(&body), mg_sb_free(&page);
    for (int i = 0; i < n; i++) free_run(&r[i]);
    free(r), free(dirs);
    return rc;
}

/* ---- the analysis section ------------------------------------------------------------- */

void mg_report_analysis_html(const json_t *a, mg_sb *o)
{
    mg_sb_puts(o, "<h2>Expert specialization: ");
    esc(o, json_string_value(json_object_get(a, "checkpoint")) ? json_string_value(json_object_get(a, "checkpoint")) : "");
    mg_sb_printf(o, "</h2>\n<p>%lld tokens of ", (long long)json_integer_value(json_object_get(a, "tokens")));
    esc(o, json_string_value(json_object_get(a, "data")) ? json_string_value(json_object_get(a, "data")) : "");
    mg_sb_puts(o, ". Top tokens per expert rank by P(expert | token) over tokens seen at least min_count times "
               "(lift = P(expert | token) / P(expert)).</p>\n");
    const json_t *layers = json_object_get(a, "layers");
    for (size_t li = 0; li < json_array_size(layers); li++) {
        const json_t *L = json_array_get(layers, li), *ex = json_object_get(L, "experts");
        int E = (int)json_array_size(ex);
        series s = {0};
        for (int e = 0; e < E; e++) push(&s, e, jnum(json_array_get(ex, (size_t)e), "share"));
        /* traffic share as bars */
        int w = CW, h = 200;
        double pw = w - ML - MR, ph = h - MT - MB, bw = pw / (E ? E : 1), mx = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, s.y[e]);
        mg_sb_printf(o, "<figure><svg class=\"chart\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
                     "<text x=\"%d\" y=\"20\" class=\"title\">layer %lld: traffic share per expert</text>", w, h, w, h, ML,
                     (long long)json_integer_value(json_object_get(L, "layer")));
        for (int e = 0; e < E; e++) {
            double bh = mx > 0 ? s.y[e] / mx * ph : 0;
            mg_sb_printf(o, "<rect class=\"mark\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\">"
                         "<title>expert %d: %.2f%%</title></rect>", ML + e * bw + 1, MT + ph - bh, bw - 2, bh > 0.5 ? bh : 0.5,
                         palette[0], e, 100 * s.y[e]);
        }
        mg_sb_printf(o, "<text x=\"%d\" y=\"%d\" class=\"tick\">expert 0 .. %d; tallest %.1f%%</text></svg></figure>\n",
                     ML, h - 14, E - 1, 100 * mx);
        free_series(&s);
        mg_sb_puts(o, "<table><tr><th>expert</th><th>share</th><th class=\"l\">top tokens (P(e|token), count)</th></tr>\n");
        for (int e = 0; e < E; e++) {
            const json_t *x = json_array_get(ex, (size_t)e), *top = json_object_get(x, "top_tokens");
            mg_sb_printf(o, "<tr><td>%d</td><td>%.2f%%</td><td class=\"l\">", e, 100 * jnum(x, "share"));
            for (size_t t = 0; t < json_array_size(top); t++) {
                const json_t *tk = json_array_get(top, t);
                const char *txt = json_string_value(json_object_get(tk, "text"));
                char idb[32];
                snprintf(idb, sizeof idb, "#%lld", (long long)json_integer_value(json_object_get(tk, "id")));
                mg_sb_puts(o, t ? ", <code>" : "<code>");
                esc(o, txt ? txt : idb);
                mg_sb_printf(o, "</code> %.2f (%lld)", jnum(tk, "p"), (long long)json_integer_value(json_object_get(tk, "count")));
            }
            mg_sb_puts(o, "</td></tr>\n");
        }
        mg_sb_puts(o, "</table>\n");
    }
    const json_t *cons = json_object_get(a, "consistency");
    if (json_array_size(cons)) {
        mg_sb_puts(o, "<h3>Layer-to-layer consistency (top-1 expert)</h3><table><tr><th>from</th><th>to</th>"
                   "<th>NMI</th><th>follow rate</th></tr>\n");
        for (size_t i = 0; i < json_array_size(cons); i++) {
            const json_t *c = json_array_get(cons, i);
            mg_sb_printf(o, "<tr><td>%lld</td><td>%lld</td><td>%.3f</td><td>%.3f</td></tr>\n",
                         (long long)json_integer_value(json_object_get(c, "from")),
                         (long long)json_integer_value(json_object_get(c, "to")), jnum(c, "nmi"), jnum(c, "follow_rate"));
        }
        mg_sb_puts(o, "</table>\n");
    }
}

/* ---- watch --------------------------------------------------------------------------- */

static const char *const watch_help =
    "usage: moegen watch RUN_DIR [--interval S] [--once]\n"
    "  A live terminal view of a training run from RUN_DIR/metrics.jsonl: progress, loss sparkline,\n"
    "  per-layer expert-load bars (plain ANSI, fine over ssh). Quits on q or when the run reaches\n"
    "  train.steps; --once prints one frame without terminal control codes.\n"
    "example: moegen watch runs/ci-cpu\n";

static void sparkline(mg_sb *o, const series *s, int width)
{
    static const char *const bars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    int from = s->n > width ? s->n - width : 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = from; i < s->n; i++)
        if (isfinite(s->y[i])) lo = fmin(lo, s->y[i]), hi = fmax(hi, s->y[i]);
    if (!isfinite(lo)) return;
    for (int i = from; i < s->n; i++) {
        int b = hi > lo && isfinite(s->y[i]) ? (int)((s->y[i] - lo) / (hi - lo) * 7.999) : 0;
        mg_sb_puts(o, bars[b < 0 ? 0 : b > 7 ? 7 : b]);
    }
    mg_sb_printf(o, "  %.4g .. %.4g (last %d steps)", lo, hi, s->n - from);
}

static void watch_frame(const run_data *r, mg_sb *o)
{
    long total = r->have_spec ? r->spec.train.steps : r->last_step;
    double pct = total > 0 ? 100.0 * (double)r->last_step / (double)total : 0;
    int w = 30, fill = (int)(pct / 100 * w + 0.5);
    mg_sb_printf(o, "moegen watch %s (%s)\n", r->dir, r->name);
    mg_sb_printf(o, "step %ld/%ld [", r->last_step, total);
    for (int i = 0; i < w; i++) mg_sb_puts(o, i < fill ? "#" : ".");
    char eta[32] = "-", vp[32] = "-";
    if (r->last_step > 0 && total > r->last_step && r->elapsed > 0) {
        long t = (long)(r->elapsed / (double)r->last_step * (double)(total - r->last_step) + 0.5);
        snprintf(eta, sizeof eta, "%ld:%02ld", t / 60, t % 60);
    }
    if (r->val.n) snprintf(vp, sizeof vp, "%.2f", r->val.y[r->val.n - 1]);
    mg_sb_printf(o, "] %.0f%% | loss %.4f | val ppl %s | %.0f tok/s | ETA %s\n", pct, r->last_loss, vp, r->tps, eta);
    mg_sb_puts(o, "loss ");
    sparkline(o, &r->loss, 60);
    mg_sb_puts(o, "\n");
    for (int l = 0; l < r->nl; l++) {
        const layer_hist *h = &r->L[l];
        double sum = 0;
        for (int e = 0; e < r->E; e++) sum += (double)h->last_load[e];
        mg_sb_printf(o, "layer %d  load CV %.3f  dropped %.2f%%\n", h->layer, h->cv.n ? h->cv.y[h->cv.n - 1] : 0,
                     h->drop.n ? 100 * h->drop.y[h->drop.n - 1] : 0);
        int shown = r->E <= 16 ? r->E : 16;
        for (int e = 0; e < shown; e++) {
            double share = sum > 0 ? (double)h->last_load[e] / sum : 0;
            int n = (int)(share * r->E / 2 * 40 + 0.5);   /* 20 cells = balanced */
            mg_sb_printf(o, "  e%-3d %5.1f%% ", e, 100 * share);
            for (int i = 0; i < (n > 40 ? 40 : n); i++) mg_sb_puts(o, "█");
            mg_sb_puts(o, n > 40 ? "+\n" : "\n");
        }
        if (shown < r->E) mg_sb_printf(o, "  ... %d more experts\n", r->E - shown);
    }
}

int mg_cmd_watch(int argc, char **argv)
{
    const char *dir = NULL;
    int once = 0;
    double interval = 1.0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return fputs(watch_help, stdout), 0;
        if (!strcmp(argv[i], "--once")) once = 1;
        else if (!strcmp(argv[i], "--interval") && i + 1 < argc) interval = atof(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "moegen: watch: unknown option '%s' (see moegen watch --help)\n", argv[i]);
            return MG_EUSER;
        } else if (!dir) dir = argv[i];
        else return fprintf(stderr, "moegen: watch: unexpected argument '%s'\n", argv[i]), MG_EUSER;
    }
    if (!dir) return fprintf(stderr, "moegen: watch: missing run dir (usage: moegen watch RUN_DIR)\n"), MG_EUSER;
    if (!(interval > 0)) interval = 1.0;
    int tty = !once && isatty(0);
    struct termios saved, raw;
    if (tty && !tcgetattr(0, &saved)) {
        raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0, raw.c_cc[VTIME] = 0;
        tcsetattr(0, TCSANOW, &raw);
    } else tty = 0;
    int rc = 0;
    for (;;) {
        run_data r;
        mg_err err;
        if (load_run(dir, &r, &err)) {
            fprintf(stderr, "moegen: %s\n", err.msg);
            free_run(&r);
            rc = MG_EUSER;
            break;
        }
        mg_sb o;
        mg_sb_init(&o);
        watch_frame(&r, &o);
        int done = r.have_spec && r.last_step >= r.spec.train.steps;
        free_run(&r);
        if (!once) fputs("\033[H\033[2J", stdout);
        fputs(o.buf, stdout);
        if (!once) fputs(done ? "run finished\n" : "q quits\n", stdout);
        fflush(stdout);
        mg_sb_free(&o);
        if (once || done) break;
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(0, &fds);
        struct timeval tv = {(long)interval, (long)((interval - (long)interval) * 1e6)};
        if (select(1, &fds, NULL, NULL, &tv) > 0) {
            char c = 0;
            if (read(0, &c, 1) <= 0 && !tty) {   /* stdin closed: just keep refreshing */
                struct timespec ts = {(long)interval, (long)((interval - (long)interval) * 1e9)};
                nanosleep(&ts, NULL);
            }
            if (c == 'q' || c == 'Q') break;
        }
    }
    if (tty) tcsetattr(0, TCSANOW, &saved);
    return rc;
}
