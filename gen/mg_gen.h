/* mg_gen: turns a plan into CUDA sources (one per kernel family), a C header and a
 * manifest, in memory or written atomically to a directory. */
#ifndef MG_GEN_H
#define MG_GEN_H

#include "mg_plan.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_source {
    char file[192];   /* e.g. "moe_up_swiglu_bf16_e8_k2_d512_f1024_t128x64x32_s3.cu" */
    char *text;       /* NUL-terminated, malloc'd */
    size_t len;
} mg_source;

typedef struct mg_genout {
    int n_src;
    mg_source src[MG_FAM_COUNT];   /* src[i] belongs to plan->fam[i] */
    mg_source header;              /* moe_<name>.h : param structs + kernel names + grid rules */
    mg_source manifest;            /* manifest.json */
} mg_genout;

/* Fills every family's sources. Fails (MG_EUSER for template problems naming the template
 * line, MG_EINTERNAL otherwise) before anything is written anywhere. */
int mg_gen_sources(mg_plan *plan, mg_genout *out, mg_err *err);
void mg_genout_free(mg_genout *out);

/* Writes out to dir through a temp dir + rename; an existing dir is replaced whole. */
int mg_gen_write(const mg_genout *out, const char *dir, mg_err *err);

/* An extra file written into the same directory in the same atomic step (cubins). */
typedef struct mg_extra_file {
    char file[192];
    const void *data;
    size_t size;
} mg_extra_file;
int mg_gen_write_with(const mg_genout *out, const mg_extra_file *extra, int n_extra, const char *dir,
                      mg_err *err);

/* name as a C identifier into buf: characters other than [A-Za-z0-9] become '_', upper-cased
 * when upper (spec names like "wt2-moe8" -> "wt2_moe8" / "WT2_MOE8" in headers and symbols). */
void mg_c_ident(const char *name, char *buf, size_t n, int upper);

/* Generator version string (goes into manifests and cache keys). */
const char *mg_version(void);

#ifdef __cplusplus
}
#endif
#endif
