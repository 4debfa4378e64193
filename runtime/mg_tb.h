/* mg_tb: TensorBoard event files (TFRecord framing, Event/Summary protobufs) and PNG.
 *
 * A file DIR/events.out.tfevents.<unix time>.<host> is a sequence of records:
 *   uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
 * with masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8. The first record is an Event with
 * file_version "brain.Event:2"; every other holds one Summary.
 *
 * Why a hand-written encoder and not protobuf-c: protobuf-c needs the .proto files and
 * protoc-c at build time (or checked-in generated code) plus one more library to link
 * statically, for four messages of which we write a dozen fields. Writing a protobuf is
 * easy (tag = field<<3 | wire type, varints, little-endian fixed64/fixed32, length-prefixed
 * sub-messages); the fields used, from tensorflow/core/util/event.proto and summary.proto:
 *   Event          wall_time=1 double, step=2 int64, file_version=3 string, summary=5
 *   Summary        value=1 (repeated)
 *   Summary.Value  tag=1 string, simple_value=2 float, image=4, histo=5
 *   Summary.Image  height=1 int32, width=2 int32, colorspace=3 int32, encoded_image_string=4
 *   HistogramProto min=1, max=2, num=3, sum=4, sum_squares=5 (double),
 *                  bucket_limit=6, bucket=7 (packed repeated double)
 * tests/test_metrics.c reads the files back with TensorBoard's own EventAccumulator.
 */
#ifndef MG_TB_H
#define MG_TB_H

#include "mg_err.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mg_sb;

typedef struct mg_tb {
    FILE *f;
    char path[1800];
} mg_tb;

/* CRC-32C (Castagnoli), table-driven; crc = 0 to start. */
uint32_t mg_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t mg_crc32c_masked(const void *data, size_t n);

/* Creates DIR (and parents) and a new event file in it with the file_version event. */
int  mg_tb_open(mg_tb *tb, const char *dir, mg_err *err);
void mg_tb_close(mg_tb *tb);
void mg_tb_flush(mg_tb *tb);

void mg_tb_scalar(mg_tb *tb, const char *tag, long step, double value);
/* A histogram with n buckets: bucket i counts counts[i] over (limits[i-1], limits[i]]; min,
 * max, num, sum and sum_squares are taken from the bucket midpoints. */
void mg_tb_histo(mg_tb *tb, const char *tag, long step, const double *limits, const double *counts, int n);
/* An RGB image (w·h·3 bytes, row-major) as PNG. */
void mg_tb_image(mg_tb *tb, const char *tag, long step, const uint8_t *rgb, int w, int h);

/* Appends a PNG (8-bit RGB, zlib-compressed, filter 0) of rgb to out. 0 or -1. */
int mg_png_encode(const uint8_t *rgb, int w, int h, struct mg_sb *out);
/* Appends one TFRecord holding data to out (the framing alone, for tests). */
void mg_tfrecord_frame(const void *data, size_t n, struct mg_sb *out);

#ifdef __cplusplus
}
#endif
#endif
