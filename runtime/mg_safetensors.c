/* mg_safetensors: the safetensors format, written and read with jansson (see the header). */
#include "mg_safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const dtype_names[2] = {"F32", "BF16"};
static const int dtype_size[2] = {4, 2};

unsigned short mg_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x40);   /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

float mg_bf16_to_f32(unsigned short h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ------------------------------------------------------------------------------------ */
/* write                                                                                */

static int write_all(FILE *fp, const void *p, size_t n) { return fwrite(p, 1, n, fp) == n ? 0 : -1; }

int mg_st_write(const char *path, const mg_st_entry *e, int n, mg_st_dtype dtype, const char *const *meta,
                mg_err *err)
{
    json_t *hdr = json_object();
    if (meta && meta[0]) {
        json_t *m = json_object();
        for (int i = 0; meta[i] && meta[i + 1]; i += 2) json_object_set_new(m, meta[i], json_string(meta[i + 1]));
        json_object_set_new(hdr, "__metadata__", m);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        long cnt = e[i].shape[0] * (e[i].ndim == 2 ? e[i].shape[1] : 1);
        size_t bytes = (size_t)cnt * (size_t)dtype_size[dtype];
        json_t *shape = json_array();
        for (int k = 0; k < e[i].ndim; k++) json_array_append_new(shape, json_integer(e[i].shape[k]));
        json_object_set_new(hdr, e[i].name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype_names[dtype], "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    if (!text) return mg_err_set(err, MG_EINTERNAL, "%s: cannot encode the safetensors header", path);
    size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(((uint64_t)padded >> (8 * i)) & 0xFF);

    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(text);
        return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", path, strerror(errno));
    }
    int bad = write_all(fp, len8, 8) || write_all(fp, text, hl);
    for (size_t i = hl; i < padded && !bad; i++) bad = fputc(' ', fp) == EOF;
    free(text);
    for (int i = 0; i < n && !bad; i++) {
        long cnt = e[i].shape[0] * (e[i].ndim == 2 ? e[i].shape[1] : 1);
        if (dtype == MG_ST_F32) {
            bad = write_all(fp, e[i].data, sizeof(float) * (size_t)cnt);   /* little-endian hosts only */
        } else {
            for (long j = 0; j < cnt && !bad; j++) {
                unsigned short h = mg_f32_to_bf16(e[i].data[j]);
                unsigned char b[2] = {(unsigned char)(h & 0xFF), (unsigned char)(h >> 8)};
                bad = write_all(fp, b, 2);
            }
        }
    }
    if (!bad) bad = fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    if (fclose(fp) != 0) bad = 1;
    if (bad) return mg_err_set(err, MG_EUSER, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* read                                                                                 */

static int dtype_of(const char *s)
{
    for (int i = 0; i < 2; i++)
        if (!strcmp(s, dtype_names[i])) return i;
    return -1;
}

/* Checks one header entry; fills dtype, the element count and the byte range. */
static int check_entry(const mg_st_file *f, const char *name, json_t *v, int *dt, long *cnt, size_t *b, size_t *e,
                       mg_err *err)
{
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"), *jo = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return mg_err_set(err, MG_EUSER, "%s: corrupt: tensor '%s' lacks dtype, shape or data_offsets", f->path, name);
    *dt = dtype_of(json_string_value(jd));
    if (*dt < 0)
        return mg_err_set(err, MG_EUSER, "%s: tensor '%s': dtype %s not supported (F32, BF16)", f->path, name,
                          json_string_value(jd));
    long c = 1;
    for (size_t k = 0; k < json_array_size(js); k++) {
        json_t *d = json_array_get(js, k);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (1L << 40))
            return mg_err_set(err, MG_EUSER, "%s: corrupt: tensor '%s' has a bad shape", f->path, name);
        c *= (long)json_integer_value(d);
        if (c > (1L << 40)) return mg_err_set(err, MG_EUSER, "%s: corrupt: tensor '%s' is too large", f->path, name);
    }
    json_t *j0 = json_array_get(jo, 0), *j1 = json_array_get(jo, 1);
    if (!json_is_integer(j0) || !json_is_integer(j1) || json_integer_value(j0) < 0 ||
        json_integer_value(j1) < json_integer_value(j0))
        return mg_err_set(err, MG_EUSER, "%s: corrupt: tensor '%s' has bad data_offsets", f->path, name);
    *b = (size_t)json_integer_value(j0);
    *e = (size_t)json_integer_value(j1);
    if (*e > f->data_len)
        return mg_err_set(err, MG_EUSER, "%s: truncated: tensor '%s' ends at byte %zu of a %zu-byte data region",
                          f->path, name, *e, f->data_len);
    if (*e - *b != (size_t)c * (size_t)dtype_size[*dt])
        return mg_err_set(err, MG_EUSER, "%s: corrupt: tensor '%s' has %zu bytes for %ld elements of %s", f->path, name,
                          *e - *b, c, dtype_names[*dt]);
    *cnt = c;
    return 0;
}

int mg_st_open(const char *path, mg_st_file *f, mg_err *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mg_err_set(err, MG_EUSER, "%s: cannot open: %s", path, strerror(errno));
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    rewind(fp);
    if (size < 0) {
        fclose(fp);
        return mg_err_set(err, MG_EUSER, "%s: cannot read its size", path);
    }
    f->buf = malloc((size_t)size + 1);
    if (!f->buf || fread(f->buf, 1, (size_t)size, fp) != (size_t)size) {
        fclose(fp);
        mg_st_close(f);
        return mg_err_set(err, MG_EUSER, "%s: read failed", path);
    }
    fclose(fp);
    if (size < 8) {
        mg_st_close(f);
        return mg_err_set(err, MG_EUSER, "%s: truncated: %ld bytes, not even the header length", path, size);
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | f->buf[i];
    if (hl > (uint64_t)size - 8) {
        mg_st_close(f);
        return mg_err_set(err, MG_EUSER, "%s: truncated or not safetensors: header length %llu but %ld bytes follow",
                          path, (unsigned long long)hl, size - 8);
    }
    json_error_t je;
    f->header = json_loadb((const char *)f->buf + 8, (size_t)hl, 0, &je);
    if (!f->header || !json_is_object((json_t *)f->header)) {
        mg_st_close(f);
        return mg_err_set(err, MG_EUSER, "%s: corrupt header (not a JSON object): %s", path, je.text);
    }
    f->data = f->buf + 8 + hl;
    f->data_len = (size_t)size - 8 - hl;
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)f->header, name, v) {
        if (!strcmp(name, "__metadata__")) continue;
        int dt;
        long cnt;
        size_t b, e;
        if (check_entry(f, name, v, &dt, &cnt, &b, &e, err)) {
            mg_st_close(f);
            return err ? err->code : MG_EUSER;
        }
    }
    return 0;
}

void mg_st_close(mg_st_file *f)
{
    if (f->header) json_decref((json_t *)f->header);
    free(f->buf);
    f->header = NULL;
    f->buf = NULL;
}

int mg_st_count(const mg_st_file *f)
{
    int n = (int)json_object_size((json_t *)f->header);
    return json_object_get((json_t *)f->header, "__metadata__") ? n - 1 : n;
}

const char *mg_st_meta(const mg_st_file *f, const char *key)
{
    json_t *m = json_object_get((json_t *)f->header, "__metadata__");
    return json_string_value(json_object_get(m, key));
}

int mg_st_get(const mg_st_file *f, const char *name, int ndim, const long *shape, float *out, mg_err *err)
{
    json_t *v = json_object_get((json_t *)f->header, name);
    if (!v) return mg_err_set(err, MG_EUSER, "%s: tensor '%s' is missing", f->path, name);
    int dt;
    long cnt;
    size_t b, e;
    if (check_entry(f, name, v, &dt, &cnt, &b, &e, err)) return err ? err->code : MG_EUSER;
    json_t *js = json_object_get(v, "shape");
    int ok = (int)json_array_size(js) == ndim;
    for (int k = 0; ok && k < ndim; k++) ok = json_integer_value(json_array_get(js, (size_t)k)) == shape[k];
    if (!ok) {
        char *got = json_dumps(js, JSON_COMPACT), want[64];
        if (ndim == 2) snprintf(want, sizeof want, "[%ld,%ld]", shape[0], shape[1]);
        else snprintf(want, sizeof want, "[%ld]", shape[0]);
        mg_err_set(err, MG_EUSER, "%s: tensor '%s' has shape %s, expected %s", f->path, name, got ? got : "?", want);
        free(got);
        return MG_EUSER;
    }
    const unsigned char *p = f->data + b;
    if (dt == MG_ST_F32) {
        memcpy(out, p, (size_t)cnt * sizeof(float));
    } else {
        for (long i = 0; i < cnt; i++) out[i] = mg_bf16_to_f32((unsigned short)(p[2 * i] | p[2 * i + 1] << 8));
    }
    return 0;
}
