/* mg_file: whole-file writes that never leave a half-written file behind. */
#ifndef MG_FILE_H
#define MG_FILE_H

#include "mg_err.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the n_parts buffers, in order, to a fresh temp file next to path (mode 0644),
 * fsyncs it and renames it over path. On failure the temp file is removed, path is left as
 * it was, and err names path. */
int mg_write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts, mg_err *err);

/* write(2) until done; -1 on error (errno set). */
int mg_write_all(int fd, const void *p, size_t n);

#ifdef __cplusplus
}
#endif
#endif
