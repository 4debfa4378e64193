/* mg_file: atomic whole-file writes (temp file + fsync + rename). */
#include "mg_file.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int mg_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int mg_write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts, mg_err *err)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return mg_err_set(err, MG_EUSER, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return mg_err_set(err, MG_EUSER, "%s: cannot create a temp file: %s", path, strerror(errno));
    int bad = fchmod(fd, 0644);
    for (int i = 0; !bad && i < n_parts; i++) bad = mg_write_all(fd, parts[i], lens[i]);
    bad = bad || fsync(fd);
    int e = errno;
    if (close(fd) && !bad) { bad = 1; e = errno; }
    if (!bad && rename(tmp, path)) { bad = 1; e = errno; }
    if (bad) {
        unlink(tmp);
        return mg_err_set(err, MG_EUSER, "%s: cannot write: %s", path, strerror(e));
    }
    return MG_OK;
}
