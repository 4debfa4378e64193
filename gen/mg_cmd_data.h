/* mg_cmd_data: the `moegen data` verb: corpus text -> train/valid token files + vocabulary. */
#ifndef MG_CMD_DATA_H
#define MG_CMD_DATA_H

#include "mg_err.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs `moegen data ARGS...` (argv excludes "moegen data"); prints its own messages and
 * returns the exit code (0, MG_EUSER, MG_EINTERNAL). */
int mg_cmd_data(int argc, char **argv);

/* The data directory holding the named corpora: dir_flag (--data-dir) if given, else
 * $MOEGEN_DATA_DIR, else ../shared/data when it is a directory, else /work/shared/data.
 * *from (optional) names where it came from, for hints. */
int mg_data_dir(const char *dir_flag, char *buf, size_t n, const char **from, mg_err *err);

/* Where `moegen data` writes by default: data/<corpus>-<tokenizer>, where <corpus> is the
 * corpus name or the last path component of a PATH corpus. */
void mg_data_default_outdir(const char *corpus, const char *tokenizer, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
