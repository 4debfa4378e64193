/* mg_tune_report: the sweep's terminal table, progress bar, CSV and HTML chart. */
#include "mg_tune_report.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PICK_MARGIN 0.01   /* same margin as the sweep's selection */

/* ------------------------------------------------------------------ atomic files */
static FILE *open_tmp(const char *path, char *tmp, size_t n, mg_err *err)
{
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) mg_err_set(err, MG_EUSER, "cannot write %s: %s", tmp, strerror(errno));
    return f;
}

static int close_rename(FILE *f, const char *tmp, const char *path, mg_err *err)
{
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        unlink(tmp);
        return mg_err_set(err, MG_EUSER, "cannot write %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return mg_err_set(err, MG_EUSER, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    return MG_OK;
}

/* ------------------------------------------------------------------ CSV */
static void csv_str(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) { fputs(s, f); return; }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s == '\n' || *s == '\r' ? ' ' : *s, f);
    }
    fputc('"', f);
}

int mg_tune_write_csv(const char *path, const mg_tune_report *r, int nr, mg_err *err)
{
    char tmp[PATH_MAX + 32];
    FILE *f = open_tmp(path, tmp, sizeof tmp, err);
    if (!f) return err->code;
    fputs("spec,family,kernel,dims,gpu,config", f);
    for (int k = 0; k < mg_tune_n_knobs; k++) fprintf(f, ",%s", mg_tune_knobs[k].name);
    fputs(",is_default,selected,status,reason,median_ms,min_ms,runs,rel_err,speedup_vs_default,smem_bytes,regs_est,"
          "blocks_per_sm,predicted\n", f);
    for (int j = 0; j < nr; j++) {
        const mg_tune_cand *def, *best = mg_tune_pick(r[j].c, r[j].n, PICK_MARGIN, &def);
        for (int i = 0; i < r[j].n; i++) {
            const mg_tune_cand *c = &r[j].c[i];
            char cfg[128];
            mg_tune_tile_str(&c->tile, cfg, sizeof cfg);
            const char *fields[] = {r[j].spec, r[j].family, r[j].kernel, r[j].dims, r[j].gpu, cfg};
            for (size_t q = 0; q < sizeof fields / sizeof *fields; q++) {
                if (q) fputc(',', f);
                csv_str(f, fields[q] ? fields[q] : "");
            }
            for (int k = 0; k < mg_tune_n_knobs; k++) fprintf(f, ",%d", mg_tune_knob_get(&c->tile, k));
            fprintf(f, ",%d,%d,%s,", c->is_default, c == best, mg_tune_status_names[c->status]);
            csv_str(f, c->reason);
            if (c->status == MG_TUNE_OK) {
                fprintf(f, ",%.4f,%.4f,%d,%.3g,", c->median_ms, c->min_ms, c->runs, c->err);
                if (def) fprintf(f, "%.4f", def->median_ms / c->median_ms);
            } else {
                fputs(",,,,,", f);
            }
            fprintf(f, ",%d,%d,%d,%.4g\n", c->smem, c->regs, c->blocks_per_sm, c->predicted);
        }
    }
    return close_rename(f, tmp, path, err);
}

/* ------------------------------------------------------------------ HTML + SVG */
static void html_str(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static int cmp_ms(const void *a, const void *b)
{
    const mg_tune_cand *x = *(const mg_tune_cand *const *)a, *y = *(const mg_tune_cand *const *)b;
    return (x->median_ms > y->median_ms) - (x->median_ms < y->median_ms);
}

/* Bars of median time per OK configuration, fastest first; the default and the winner in
 * their own colours; a dashed line at the default's time. */
static void svg_chart(FILE *f, const mg_tune_report *r)
{
    const mg_tune_cand *def, *best = mg_tune_pick(r->c, r->n, PICK_MARGIN, &def);
    const mg_tune_cand **ok = malloc(sizeof *ok * (size_t)(r->n ? r->n : 1));
    int n = 0;
    double max_ms = 0;
    for (int i = 0; i < r->n; i++)
        if (r->c[i].status == MG_TUNE_OK) {
            ok[n++] = &r->c[i];
            if (r->c[i].median_ms > max_ms) max_ms = r->c[i].median_ms;
        }
    if (!n || !ok) {
        fputs("<p>No configuration finished: see the table below.</p>\n", f);
        free(ok);
        return;
    }
    qsort(ok, (size_t)n, sizeof *ok, cmp_ms);
    const int bw = 14, gap = 4, left = 60, top = 20, h = 260, bottom = 150;
    const int w = left + n * (bw + gap) + 20;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
               "font-size=\"10\">\n", w, top + h + bottom);
    for (int t = 0; t <= 4; t++) {   /* y axis */
        double v = max_ms * t / 4;
        int y = top + h - (int)(h * t / 4);
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>"
                   "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g ms</text>\n", left, y, w - 10, y, left - 4, y + 3, v);
    }
    for (int i = 0; i < n; i++) {
        const mg_tune_cand *c = ok[i];
        int bh = (int)(h * c->median_ms / max_ms + 0.5), x = left + i * (bw + gap), y = top + h - bh;
        const char *col = c == best ? "#2a9d3a" : c->is_default ? "#e07b00" : "#4a78c2";
        char cfg[128];
        mg_tune_tile_str(&c->tile, cfg, sizeof cfg);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>%s: %.4f ms%s%s</title></rect>\n",
                x, y, bw, bh, col, cfg, c->median_ms, c->is_default ? " (default)" : "", c == best ? " (selected)" : "");
        fprintf(f, "<text transform=\"translate(%d,%d) rotate(60)\">%dx%dx%d s%d w%d</text>\n", x + 3, top + h + 6,
                c->tile.bm, c->tile.bn, c->tile.bk, c->tile.stages, c->tile.warps);
    }
    if (def) {
        int y = top + h - (int)(h * def->median_ms / max_ms + 0.5);
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#e07b00\" stroke-dasharray=\"4,3\"/>\n", left, y,
                w - 10, y);
    }
    fputs("</svg>\n", f);
    free(ok);
}

int mg_tune_write_html(const char *path, const mg_tune_report *r, int nr, mg_err *err)
{
    char tmp[PATH_MAX + 32];
    FILE *f = open_tmp(path, tmp, sizeof tmp, err);
    if (!f) return err->code;
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>moegen tune</title>\n<style>"
          "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
          "td,th{border:1px solid #ccc;padding:2px 6px}.ok{color:#2a6}.bad{color:#b33}"
          ".key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}</style></head><body>\n"
          "<h1>moegen tune</h1>\n<p class=\"key\">median time of forward + backward of the layer per configuration, "
          "fastest first:<span style=\"background:#2a9d3a\"></span>selected<span style=\"background:#e07b00\"></span>"
          "default (rules; dashed line)<span style=\"background:#4a78c2\"></span>other</p>\n", f);
    for (int j = 0; j < nr; j++) {
        const mg_tune_cand *def, *best = mg_tune_pick(r[j].c, r[j].n, PICK_MARGIN, &def);
        fputs("<h2>", f);
        html_str(f, r[j].spec);
        fputs(" &middot; ", f);
        html_str(f, r[j].family);
        fputs(" &middot; ", f);
        html_str(f, r[j].dims);
        fputs("</h2>\n<p>", f);
        html_str(f, r[j].kernel);
        fputs(" on ", f);
        html_str(f, r[j].gpu);
        if (best && def)
            fprintf(f, "<br>selected %dx%dx%d s%d w%d: %.4f ms vs default %.4f ms (%.2fx)", best->tile.bm, best->tile.bn,
                    best->tile.bk, best->tile.stages, best->tile.warps, best->median_ms, def->median_ms,
                    def->median_ms / best->median_ms);
        fputs("</p>\n", f);
        svg_chart(f, &r[j]);
        fputs("<table><tr><th>config</th><th>status</th><th>median ms</th><th>reason</th></tr>\n", f);
        for (int i = 0; i < r[j].n; i++) {
            const mg_tune_cand *c = &r[j].c[i];
            char cfg[128];
            mg_tune_tile_str(&c->tile, cfg, sizeof cfg);
            fprintf(f, "<tr><td>%s%s</td><td class=\"%s\">%s</td><td>", cfg, c->is_default ? " (default)" : "",
                    c->status == MG_TUNE_OK ? "ok" : "bad", mg_tune_status_names[c->status]);
            if (c->status == MG_TUNE_OK) fprintf(f, "%.4f", c->median_ms);
            fputs("</td><td>", f);
            html_str(f, c->reason);
            fputs("</td></tr>\n", f);
        }
        fputs("</table>\n", f);
    }
    fputs("</body></html>\n", f);
    return close_rename(f, tmp, path, err);
}

/* ------------------------------------------------------------------ terminal */
void mg_tune_print_table(FILE *o, const mg_tune_report *r, int top)
{
    const mg_tune_cand *def, *best = mg_tune_pick(r->c, r->n, PICK_MARGIN, &def);
    const mg_tune_cand **ok = malloc(sizeof *ok * (size_t)(r->n ? r->n : 1));
    int n = 0, by_status[MG_TUNE_NSTATUS] = {0};
    for (int i = 0; i < r->n; i++) {
        by_status[r->c[i].status]++;
        if (r->c[i].status == MG_TUNE_OK && ok) ok[n++] = &r->c[i];
    }
    fprintf(o, "%s %s (%s) on %s\n", r->family, r->kernel, r->dims, r->gpu);
    fprintf(o, "  %-4s %-40s %10s %10s %8s %9s  %s\n", "rank", "config", "median ms", "min ms", "vs def", "rel_err", "");
    if (ok) qsort(ok, (size_t)n, sizeof *ok, cmp_ms);
    for (int i = 0; i < n; i++) {
        if (i >= top && !ok[i]->is_default) continue;
        char cfg[128];
        mg_tune_tile_str(&ok[i]->tile, cfg, sizeof cfg);
        fprintf(o, "  %-4d %-40s %10.4f %10.4f ", i + 1, cfg, ok[i]->median_ms, ok[i]->min_ms);
        if (def) fprintf(o, "%7.3fx", def->median_ms / ok[i]->median_ms);
        else fprintf(o, "%8s", "-");
        fprintf(o, " %9.2e  %s%s\n", ok[i]->err, ok[i]->is_default ? "default " : "", ok[i] == best ? "<- selected" : "");
    }
    fprintf(o, "  %d configs:", r->n);
    for (int s = 0; s < MG_TUNE_NSTATUS; s++)
        if (by_status[s]) fprintf(o, " %d %s", by_status[s], mg_tune_status_names[s]);
    fputc('\n', o);
    if (best && def) {
        if (best == def)
            fprintf(o, "  result: the rules' config is the fastest (within %.0f%% of the best measured)\n", PICK_MARGIN * 100);
        else
            fprintf(o, "  result: %.4f ms vs default %.4f ms: %.1f%% faster than the rules\n", best->median_ms,
                    def->median_ms, 100.0 * (def->median_ms / best->median_ms - 1.0));
    } else if (!best) {
        fprintf(o, "  result: no configuration finished\n");
    }
    free(ok);
}

void mg_tune_progress(FILE *o, int done, int total, const char *label)
{
    const int W = 30;
    int fill = total > 0 ? done * W / total : W;
    char bar[64];
    for (int i = 0; i < W; i++) bar[i] = i < fill ? '#' : '.';
    bar[W] = 0;
    int tty = isatty(fileno(o));
    fprintf(o, "%s[%s] %4d/%-4d %-70.70s%s", tty ? "\r" : "", bar, done, total, label ? label : "",
            tty ? (done >= total ? "\n" : "") : "\n");
    fflush(o);
}
