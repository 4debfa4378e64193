/* mg_cpu_data: token splits for the CPU trainer and its batch sampler (see the header). */
#include "mg_cpu_data.h"
#include "mg_cmd_data.h"   /* mg_data_dir: the same data directory `moegen data` reads */
#include "mg_tokfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_dir(const char *p)
{
    struct stat sb;
    return !stat(p, &sb) && S_ISDIR(sb.st_mode);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The tokens of a `moegen data` token file as int32. */
static int read_tokfile(const char *path, int32_t **out, long *n, uint32_t *vocab, char *tokenizer, mg_err *err)
{
    mg_tokfile tf;
    if (mg_tokfile_open(path, "make it with: moegen data --corpus NAME --tokenizer word|gpt2", &tf, err))
        return err ? err->code : MG_EUSER;
    uint64_t cnt = tf.info.n_tokens;
    int32_t *t = malloc(sizeof(int32_t) * (size_t)(cnt ? cnt : 1));
    if (!t) {
        mg_tokfile_close(&tf);
        return mg_err_set(err, MG_EINTERNAL, "%s: out of memory for %llu tokens", path, (unsigned long long)cnt);
    }
    for (uint64_t i = 0; i < cnt; i++) t[i] = (int32_t)mg_tokfile_at(&tf, i);
    *out = t;
    *n = (long)cnt;
    if (tf.info.vocab > *vocab) *vocab = tf.info.vocab;
    snprintf(tokenizer, 16, "%s", tf.info.tokenizer);
    mg_tokfile_close(&tf);
    return 0;
}

/* DIR/train.tok + DIR/valid.tok, written by `moegen data -o DIR`. */
static int tok_dir(const char *dir, mg_cpu_data *d, mg_err *err)
{
    char a[1600], b[1600], tk[16];
    uint32_t vocab = 0;
    snprintf(a, sizeof a, "%s/train.tok", dir);
    snprintf(b, sizeof b, "%s/valid.tok", dir);
    if (read_tokfile(a, &d->train, &d->n_train, &vocab, tk, err) || read_tokfile(b, &d->val, &d->n_val, &vocab, tk, err))
        return MG_EUSER;
    d->vocab = (int)vocab;
    snprintf(d->desc, sizeof d->desc, "token files %.1600s/{train,valid}.tok (%s, vocab %u)", dir, tk, vocab);
    return 0;
}

/* The bytes of path as tokens. */
static int read_bytes(const char *path, int32_t **out, long *n, mg_err *err)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return mg_err_set(err, MG_EUSER, "%s: cannot open: %s (HINT: set MOEGEN_DATA_DIR to the directory holding "
                          "tinyshakespeare/, wikitext-2/, ptb/)", path, strerror(errno));
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    rewind(fp);
    unsigned char *b = malloc((size_t)(size > 0 ? size : 1));
    int32_t *t = malloc(sizeof(int32_t) * (size_t)(size > 0 ? size : 1));
    if (!b || !t || fread(b, 1, (size_t)size, fp) != (size_t)size) {
        fclose(fp);
        free(b);
        free(t);
        return mg_err_set(err, MG_EUSER, "%s: read failed", path);
    }
    fclose(fp);
    for (long i = 0; i < size; i++) t[i] = b[i];
    free(b);
    *out = t;
    *n = size;
    return 0;
}

static int split_90_10(const char *path, mg_cpu_data *d, mg_err *err)
{
    int32_t *all;
    long n;
    if (read_bytes(path, &all, &n, err)) return MG_EUSER;
    long nt = n * 9 / 10;
    d->train = all;
    d->n_train = nt;
    d->val = malloc(sizeof(int32_t) * (size_t)(n - nt + 1));
    memcpy(d->val, all + nt, sizeof(int32_t) * (size_t)(n - nt));
    d->n_val = n - nt;
    snprintf(d->desc, sizeof d->desc, "bytes of %s (90/10 split)", path);
    return 0;
}

static int two_files(const char *tr, const char *va, mg_cpu_data *d, mg_err *err)
{
    if (read_bytes(tr, &d->train, &d->n_train, err) || read_bytes(va, &d->val, &d->n_val, err)) return MG_EUSER;
    snprintf(d->desc, sizeof d->desc, "bytes of %s, %s", tr, va);
    return 0;
}

static int check_sizes(const mg_spec *s, mg_cpu_data *d, mg_err *err)
{
    if (s->model.vocab < d->vocab)
        return mg_err_set(err, MG_EUSER, "%s: model.vocab = %d: the data (%s) needs vocab >= %d", s->path,
                          s->model.vocab, d->desc, d->vocab);
    long need = (long)s->model.seq_len + 2;
    if (d->n_train < need || d->n_val < need)
        return mg_err_set(err, MG_EUSER, "%s: train.data = \"%s\": %ld train / %ld valid tokens, need at least %ld "
                          "(model.seq_len + 2) in each", s->path, s->train.data, d->n_train, d->n_val, need);
    return 0;
}

int mg_cpu_data_open(const mg_spec *s, mg_cpu_data *d, mg_err *err)
{
    memset(d, 0, sizeof *d);
    d->vocab = 256;
    char dir[1024], a[1600], b[1600], tt[1600];
    const char *name = s->train.data;
    int rc = mg_data_dir(NULL, dir, sizeof dir, NULL, err);
    if (rc) return rc;
    snprintf(tt, sizeof tt, "%s/train.tok", name);
    if (is_dir(name) && !access(tt, F_OK)) {
        rc = tok_dir(name, d, err);
    } else if (!strcmp(name, "tinyshakespeare")) {
        snprintf(a, sizeof a, "%s/tinyshakespeare/input.txt", dir);
        rc = split_90_10(a, d, err);
    } else if (!strcmp(name, "wikitext-2")) {
        snprintf(a, sizeof a, "%s/wikitext-2/wiki.train.tokens", dir);
        snprintf(b, sizeof b, "%s/wikitext-2/wiki.valid.tokens", dir);
        rc = two_files(a, b, d, err);
    } else if (!strcmp(name, "ptb")) {
        snprintf(a, sizeof a, "%s/ptb/ptb.train.txt", dir);
        snprintf(b, sizeof b, "%s/ptb/ptb.valid.txt", dir);
        rc = two_files(a, b, d, err);
    } else if (is_dir(name)) {
        snprintf(a, sizeof a, "%s/train.txt", name);
        snprintf(b, sizeof b, "%s/valid.txt", name);
        rc = two_files(a, b, d, err);
    } else {
        rc = split_90_10(name, d, err);
    }
    if (!rc) rc = check_sizes(s, d, err);
    if (!rc) {
        /* int32 tokens in [0, vocab) have the bits of their uint32 values */
        d->train_view.info.vocab = (uint32_t)d->vocab;
        d->train_view.info.width = 4;
        d->train_view.info.n_tokens = (uint64_t)d->n_train;
        d->train_view.tokens = d->train;
        mg_loader_opts lo = {.batch = s->train.batch, .seq_len = s->model.seq_len, .seed = (uint64_t)s->train.seed,
                             .order = MG_LOADER_RANDOM, .sync = 1, .no_pinned = 1, .name = s->train.data};
        rc = mg_loader_open(&d->loader, &d->train_view, &lo, err);
    }
    if (rc) mg_cpu_data_free(d);
    else {
        size_t l = strlen(d->desc);
        snprintf(d->desc + l, sizeof d->desc - l, ": %ld train / %ld valid tokens", d->n_train, d->n_val);
    }
    return rc;
}

int mg_cpu_data_open_eval(const char *path, const mg_spec *s, mg_cpu_data *d, mg_err *err)
{
    memset(d, 0, sizeof *d);
    d->vocab = 256;
    char tk[16];
    uint32_t vocab = 0;
    int tok = ends_with(path, ".tok");
    int rc = tok ? read_tokfile(path, &d->val, &d->n_val, &vocab, tk, err) : read_bytes(path, &d->val, &d->n_val, err);
    if (tok) d->vocab = (int)vocab;
    if (!rc && d->n_val < (long)s->model.seq_len + 1)
        rc = mg_err_set(err, MG_EUSER, "%s: %ld tokens, need at least model.seq_len + 1 = %d", path, d->n_val,
                        s->model.seq_len + 1);
    if (!rc && s->model.vocab < d->vocab)
        rc = mg_err_set(err, MG_EUSER, "%s: model.vocab = %d: this data needs vocab >= %d", path, s->model.vocab,
                        d->vocab);
    if (rc) mg_cpu_data_free(d);
    else snprintf(d->desc, sizeof d->desc, "%s of %s: %ld tokens", tok ? "tokens" : "bytes", path, d->n_val);
    return rc;
}

void mg_cpu_data_free(mg_cpu_data *d)
{
    if (d->loader) mg_loader_close(d->loader);
    free(d->train);
    free(d->val);
    memset(d, 0, sizeof *d);
}

int mg_cpu_data_train_batch(const mg_cpu_data *d, uint64_t k, int32_t *out, mg_err *err)
{
    return mg_loader_batch_at(d->loader, k, out, err);
}

void mg_cpu_data_val_batch(const mg_cpu_data *d, int j, int n_batches, int B, int T, int32_t *out)
{
    long W = (long)n_batches * B, stride = (d->n_val - T - 1) / W;
    for (int b = 0; b < B; b++) {
        long start = ((long)j * B + b) * stride;
        memcpy(out + (long)b * (T + 1), d->val + start, sizeof(int32_t) * (size_t)(T + 1));
    }
}
