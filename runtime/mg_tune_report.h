/* mg_tune_report: what `moegen tune` shows and leaves behind: the terminal table and
 * progress bar, a CSV of every configuration (accepted or rejected, with the reason), and a
 * self-contained HTML page with one inline-SVG chart of time vs configuration per kernel
 * (no scripts, no network). Pure CPU code. */
#ifndef MG_TUNE_REPORT_H
#define MG_TUNE_REPORT_H

#include "mg_err.h"
#include "mg_tune_space.h"
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One family's sweep at one token count and distribution. */
typedef struct mg_tune_report {
    const char *spec;     /* spec name */
    const char *family;   /* "up" */
    const char *kernel;   /* name without tile fields */
    const char *dims;     /* "T=16384,dist=balanced" */
    const char *gpu;
    const mg_tune_cand *c;
    int n;
} mg_tune_report;

/* Writes atomically (temp file + rename). */
int mg_tune_write_csv(const char *path, const mg_tune_report *r, int nr, mg_err *err);
int mg_tune_write_html(const char *path, const mg_tune_report *r, int nr, mg_err *err);

/* The fastest `top` configurations with their speed-up over the default, the default, the
 * winner and a count of rejections per status. */
void mg_tune_print_table(FILE *o, const mg_tune_report *r, int top);
/* One progress line: "[#####.....]  12/40  label"; redrawn in place on a terminal. */
void mg_tune_progress(FILE *o, int done, int total, const char *label);

#ifdef __cplusplus
}
#endif
#endif
