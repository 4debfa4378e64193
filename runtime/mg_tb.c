/* mg_tb: TensorBoard event files and PNG (see mg_tb.h for the formats). */
#include "mg_tb.h"
#include "mg_sb.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ---- CRC-32C ------------------------------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;   /* reflected Castagnoli */
        crc_table[i] = c;
    }
}

uint32_t mg_crc32c(uint32_t crc, const void *data, size_t n)
{
    if (!crc_table[1]) crc_init();   /* benign race: every thread writes the same table */
    const uint8_t *p = data;
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t mg_crc32c_masked(const void *data, size_t n)
{
    uint32_t c = mg_crc32c(0, data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ---- protobuf encoding --------------------------------------------------------------- */

static void pb_varint(mg_sb *b, uint64_t v)
{
    char buf[10];
    int n = 0;
    do {
        buf[n++] = (char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    mg_sb_putn(b, buf, (size_t)n);
}

static void pb_tag(mg_sb *b, int field, int wire) { pb_varint(b, (uint64_t)field << 3 | (uint64_t)wire); }

static void pb_le(mg_sb *b, uint64_t v, int bytes)
{
    char buf[8];
    for (int i = 0; i < bytes; i++) buf[i] = (char)(v >> (8 * i));
    mg_sb_putn(b, buf, (size_t)bytes);
}

static void pb_double(mg_sb *b, int field, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    pb_tag(b, field, 1);
    pb_le(b, u, 8);
}

static void pb_float(mg_sb *b, int field, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    pb_tag(b, field, 5);
    pb_le(b, u, 4);
}

static void pb_bytes(mg_sb *b, int field, const void *data, size_t n)
{
    pb_tag(b, field, 2);
    pb_varint(b, n);
    if (n) mg_sb_putn(b, data, n);
}

static void pb_packed_doubles(mg_sb *b, int field, const double *v, int n)
{
    pb_tag(b, field, 2);
    pb_varint(b, (uint64_t)n * 8);
    for (int i = 0; i < n; i++) {
        uint64_t u;
        memcpy(&u, &v[i], 8);
        pb_le(b, u, 8);
    }
}

/* ---- records ------------------------------------------------------------------------- */

void mg_tfrecord_frame(const void *data, size_t n, mg_sb *out)
{
    char len[8];
    for (int i = 0; i < 8; i++) len[i] = (char)((uint64_t)n >> (8 * i));
    mg_sb_putn(out, len, 8);
    pb_le(out, mg_crc32c_masked(len, 8), 4);
    if (n) mg_sb_putn(out, data, n);
    pb_le(out, mg_crc32c_masked(data, n), 4);
}

static double wall_time(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Writes Event{wall_time, step, summary = Summary{value = [value]}} given the Value bytes. */
static void write_event(mg_tb *tb, long step, const mg_sb *value)
{
    if (!tb || !tb->f) return;
    mg_sb summ, ev, rec;
    mg_sb_init(&summ), mg_sb_init(&ev), mg_sb_init(&rec);
    pb_bytes(&summ, 1, value->buf, value->len);
    pb_double(&ev, 1, wall_time());
    pb_tag(&ev, 2, 0);
    pb_varint(&ev, (uint64_t)step);
    pb_bytes(&ev, 5, summ.buf, summ.len);
    mg_tfrecord_frame(ev.buf, ev.len, &rec);
    fwrite(rec.buf, 1, rec.len, tb->f);
    mg_sb_free(&summ), mg_sb_free(&ev), mg_sb_free(&rec);
}

int mg_tb_open(mg_tb *tb, const char *dir, mg_err *err)
{
    memset(tb, 0, sizeof *tb);
    char p[1600];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        mkdir(p, 0755);
        *s = '/';
    }
    if (mkdir(p, 0755) && errno != EEXIST) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", p, strerror(errno));
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(tb->path, sizeof tb->path, "%s/events.out.tfevents.%ld.%s", dir, (long)time(NULL), host);
    tb->f = fopen(tb->path, "wb");
    if (!tb->f) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", tb->path, strerror(errno));
    mg_sb ev, rec;
    mg_sb_init(&ev), mg_sb_init(&rec);
    pb_double(&ev, 1, wall_time());
    pb_bytes(&ev, 3, "brain.Event:2", 13);
    mg_tfrecord_frame(ev.buf, ev.len, &rec);
    fwrite(rec.buf, 1, rec.len, tb->f);
    fflush(tb->f);
    mg_sb_free(&ev), mg_sb_free(&rec);
    return 0;
}

void mg_tb_flush(mg_tb *tb)
{
    if (tb && tb->f) fflush(tb->f);
}

void mg_tb_close(mg_tb *tb)
{
    if (tb && tb->f) fclose(tb->f);
    if (tb) tb->f = NULL;
}

void mg_tb_scalar(mg_tb *tb, const char *tag, long step, double value)
{
    mg_sb v;
    mg_sb_init(&v);
    pb_bytes(&v, 1, tag, strlen(tag));
    pb_float(&v, 2, (float)value);
    write_event(tb, step, &v);
    mg_sb_free(&v);
}

void mg_tb_histo(mg_tb *tb, const char *tag, long step, const double *limits, const double *counts, int n)
{
    double num = 0, sum = 0, sq = 0, lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        double left = i ? limits[i - 1] : limits[0] - 1, mid = 0.5 * (left + limits[i]);
        if (counts[i] > 0) lo = fmin(lo, left), hi = fmax(hi, limits[i]);
        num += counts[i], sum += counts[i] * mid, sq += counts[i] * mid * mid;
    }
    if (num == 0) lo = hi = 0;
    mg_sb h, v;
    mg_sb_init(&h), mg_sb_init(&v);
    pb_double(&h, 1, lo);
    pb_double(&h, 2, hi);
    pb_double(&h, 3, num);
    pb_double(&h, 4, sum);
    pb_double(&h, 5, sq);
    pb_packed_doubles(&h, 6, limits, n);
    pb_packed_doubles(&h, 7, counts, n);
    pb_bytes(&v, 1, tag, strlen(tag));
    pb_bytes(&v, 5, h.buf, h.len);
    write_event(tb, step, &v);
    mg_sb_free(&h), mg_sb_free(&v);
}

void mg_tb_image(mg_tb *tb, const char *tag, long step, const uint8_t *rgb, int w, int h)
{
    mg_sb png, img, v;
    mg_sb_init(&png), mg_sb_init(&img), mg_sb_init(&v);
    if (mg_png_encode(rgb, w, h, &png) == 0) {
        pb_tag(&img, 1, 0), pb_varint(&img, (uint64_t)h);
        pb_tag(&img, 2, 0), pb_varint(&img, (uint64_t)w);
        pb_tag(&img, 3, 0), pb_varint(&img, 3);   /* RGB */
        pb_bytes(&img, 4, png.buf, png.len);
        pb_bytes(&v, 1, tag, strlen(tag));
        pb_bytes(&v, 4, img.buf, img.len);
        write_event(tb, step, &v);
    }
    mg_sb_free(&png), mg_sb_free(&img), mg_sb_free(&v);
}

/* ---- PNG ----------------------------------------------------------------------------- */

static void be32(mg_sb *b, uint32_t v)
{
    char c[4] = {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
    mg_sb_putn(b, c, 4);
}

static void png_chunk(mg_sb *out, const char *type, const void *data, size_t n)
{
    be32(out, (uint32_t)n);
    size_t start = out->len;
    mg_sb_putn(out, type, 4);
    if (n) mg_sb_putn(out, data, n);
    be32(out, (uint32_t)crc32(0, (const Bytef *)out->buf + start, (uInt)(n + 4)));
}

int mg_png_encode(const uint8_t *rgb, int w, int h, mg_sb *out)
{
    if (w <= 0 || h <= 0) return -1;
    size_t row = (size_t)w * 3 + 1, raw_n = row * (size_t)h;
    uint8_t *raw = malloc(raw_n);
    uLongf zn = compressBound((uLong)raw_n);
    uint8_t *z = malloc(zn);
    if (!raw || !z) {
        free(raw), free(z);
        return -1;
    }
    for (int y = 0; y < h; y++) {
        raw[(size_t)y * row] = 0;   /* filter: none */
        memcpy(raw + (size_t)y * row + 1, rgb + (size_t)y * w * 3, (size_t)w * 3);
    }
    int rc = compress2(z, &zn, raw, (uLong)raw_n, 6) == Z_OK ? 0 : -1;
    if (!rc) {
        uint8_t ihdr[13] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                            (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h,
                            8, 2, 0, 0, 0};   /* 8-bit, truecolor, deflate, filter 0, no interlace */
        mg_sb_putn(out, "\x89PNG\r\n\x1a\n", 8);
        png_chunk(out, "IHDR", ihdr, 13);
        png_chunk(out, "IDAT", z, zn);
        png_chunk(out, "IEND", NULL, 0);
    }
    free(raw), free(z);
    return rc;
}
