/* mg_safetensors: read and write the safetensors format (HF), F32 and BF16.
 *
 * File: u64 little-endian N, then N bytes of JSON header, then the raw data. The header maps
 * each tensor name to {"dtype": "F32"|"BF16", "shape": [..], "data_offsets": [begin, end]}
 * (byte offsets into the data region, row-major, little-endian); an optional
 * "__metadata__" object holds string → string. We pad the header with spaces to a multiple
 * of 8 bytes and lay tensors out in the order given. Every read error is one line that
 * starts with the file's path.
 */
#ifndef MG_SAFETENSORS_H
#define MG_SAFETENSORS_H

#include "mg_err.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_ST_F32 = 0, MG_ST_BF16 = 1 } mg_st_dtype;

typedef struct mg_st_entry {
    const char *name;
    int ndim;            /* 1 or 2 */
    long shape[2];
    const float *data;   /* converted to the file's dtype when written */
} mg_st_entry;

/* Writes path (and fsyncs it). meta: NULL or a NULL-terminated list of key, value strings. */
int mg_st_write(const char *path, const mg_st_entry *e, int n, mg_st_dtype dtype, const char *const *meta,
                mg_err *err);

typedef struct mg_st_file {
    char path[1024];
    void *header;              /* the parsed JSON (json_t *) */
    unsigned char *buf;        /* the whole file */
    const unsigned char *data; /* data region */
    size_t data_len;
} mg_st_file;

/* Reads and checks the whole file: header length, JSON, every entry's dtype, shape and
 * offsets against the data region. */
int mg_st_open(const char *path, mg_st_file *f, mg_err *err);
void mg_st_close(mg_st_file *f);
/* Copies tensor name into out as float, checking that it exists with this shape. */
int mg_st_get(const mg_st_file *f, const char *name, int ndim, const long *shape, float *out, mg_err *err);
/* The number of tensors in the file (not counting __metadata__). */
int mg_st_count(const mg_st_file *f);
/* A __metadata__ value, or NULL. */
const char *mg_st_meta(const mg_st_file *f, const char *key);

/* fp32 → bf16, round to nearest even (NaN stays NaN); and back. */
unsigned short mg_f32_to_bf16(float x);
float mg_bf16_to_f32(unsigned short h);

#ifdef __cplusplus
}
#endif
#endif
