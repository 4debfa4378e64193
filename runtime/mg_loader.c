/* mg_loader: stateless batch windows (random or shuffled epochs) and the double-buffered
 * prefetch thread that fills them (contract: mg_loader.h). */
#include "mg_loader.h"
#include "mg_rng.h"

#include <cuda_runtime.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_HELD };

/* One epoch's window order; regenerated when a batch reaches another epoch. */
typedef struct perm_cache {
    uint32_t *perm;
    uint64_t epoch;
    int valid;
} perm_cache;

struct mg_loader {
    const mg_tokfile *tf;
    mg_loader_opts o;
    uint64_t n, windows;         /* tokens; epoch-order windows W */
    size_t row, batch_len;       /* T+1; B*(T+1) */
    int32_t *buf[2];
    int pinned;
    perm_cache worker_perm;      /* the filler's (worker thread, or next() when sync) */
    /* prefetch state, under mu */
    pthread_t th;
    int have_thread, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state[2];
    uint64_t slot_batch[2];
    uint64_t next_fill;          /* the batch the worker fills next */
    uint64_t handed;             /* batches handed out */
    int held;                    /* slot the consumer holds, -1 none */
};

/* ---------------------------------------------------------------------------------------
 * Which windows: pure functions of (configuration, batch index) */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t stream(uint64_t seed, uint64_t a, uint64_t b)
{
    return mix64(mix64(mix64(seed ^ 0x10ADE710ADE7ull) + a * 0x9E3779B97F4A7C15ull) + b);
}

static int make_perm(const mg_loader *L, perm_cache *c, uint64_t epoch)
{
    if (c->valid && c->epoch == epoch) return 0;
    if (!c->perm && !(c->perm = malloc(L->windows * sizeof *c->perm))) return -1;
    for (uint64_t i = 0; i < L->windows; i++) c->perm[i] = (uint32_t)i;
    mg_rng r;
    mg_rng_seed(&r, stream(L->o.seed, 0xE9, epoch));
    for (uint64_t i = L->windows - 1; i > 0; i--) {
        uint64_t j = mg_rng_u64(&r) % (i + 1);
        uint32_t t = c->perm[i];
        c->perm[i] = c->perm[j];
        c->perm[j] = t;
    }
    c->epoch = epoch;
    c->valid = 1;
    return 0;
}

static void copy_row(const mg_tokfile *tf, uint64_t start, size_t len, int32_t *out)
{
    if (tf->info.width == 2) {
        const uint16_t *t = (const uint16_t *)tf->tokens + start;
        for (size_t i = 0; i < len; i++) out[i] = t[i];
    } else {
        const uint32_t *t = (const uint32_t *)tf->tokens + start;
        for (size_t i = 0; i < len; i++) out[i] = (int32_t)t[i];
    }
}

static int fill(const mg_loader *L, perm_cache *c, uint64_t k, int32_t *out)
{
    uint64_t B = (uint64_t)L->o.batch, T = (uint64_t)L->o.seq_len;
    for (uint64_t b = 0; b < B; b++) {
        uint64_t start;
        if (L->o.order == MG_LOADER_RANDOM) {
            start = stream(L->o.seed, k, b) % (L->n - T);
        } else {
            uint64_t g = k * B + b;
            if (make_perm(L, c, g / L->windows)) return -1;
            start = (uint64_t)c->perm[g % L->windows] * T;
        }
        copy_row(L->tf, start, L->row, out + b * L->row);
    }
    return 0;
}

int mg_loader_batch_at(const mg_loader *L, uint64_t k, int32_t *out, mg_err *err)
{
    perm_cache c = {0};
    int rc = fill(L, &c, k, out);
    free(c.perm);
    return rc ? mg_err_set(err, MG_EINTERNAL, "loader: out of memory") : MG_OK;
}

/* ---------------------------------------------------------------------------------------
 * Prefetch: the worker fills batch j into slot j % 2 while the consumer holds the other. */

static void *worker(void *arg)
{
    mg_loader *L = arg;
    pthread_mutex_lock(&L->mu);
    while (!L->stop) {
        int s = (int)(L->next_fill % 2);
        if (L->state[s] != SLOT_FREE) {
            pthread_cond_wait(&L->cv, &L->mu);
            continue;
        }
        uint64_t k = L->next_fill;
        L->state[s] = SLOT_FILLING;
        pthread_mutex_unlock(&L->mu);
        int bad = fill(L, &L->worker_perm, k, L->buf[s]);
        pthread_mutex_lock(&L->mu);
        /* An out-of-memory fill is left FILLING; next() sees the thread gone and reports it. */
        if (bad) { L->stop = 2; pthread_cond_broadcast(&L->cv); break; }
        L->slot_batch[s] = k;
        L->state[s] = SLOT_READY;
        L->next_fill++;
        pthread_cond_broadcast(&L->cv);
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

static int start_worker(mg_loader *L, uint64_t at, mg_err *err)
{
    L->handed = L->next_fill = at;
    L->state[0] = L->state[1] = SLOT_FREE;
    L->held = -1;
    L->stop = 0;
    if (L->o.sync) return MG_OK;
    if (pthread_create(&L->th, NULL, worker, L)) return mg_err_set(err, MG_EINTERNAL, "loader: cannot start its thread");
    L->have_thread = 1;
    return MG_OK;
}

static void stop_worker(mg_loader *L)
{
    if (!L->have_thread) return;
    pthread_mutex_lock(&L->mu);
    L->stop = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    pthread_join(L->th, NULL);
    L->have_thread = 0;
}

int mg_loader_next(mg_loader *L, mg_batch *b, mg_err *err)
{
    uint64_t k = L->handed;
    int s = (int)(k % 2);
    if (L->o.sync) {
        if (fill(L, &L->worker_perm, k, L->buf[0])) return mg_err_set(err, MG_EINTERNAL, "loader: out of memory");
        s = 0;
    } else {
        pthread_mutex_lock(&L->mu);
        if (L->held >= 0) {
            L->state[L->held] = SLOT_FREE;
            L->held = -1;
            pthread_cond_broadcast(&L->cv);
        }
        while (!(L->state[s] == SLOT_READY && L->slot_batch[s] == k) && L->stop != 2) pthread_cond_wait(&L->cv, &L->mu);
        int failed = L->stop == 2;
        if (!failed) {
            L->state[s] = SLOT_HELD;
            L->held = s;
        }
        pthread_mutex_unlock(&L->mu);
        if (failed) return mg_err_set(err, MG_EINTERNAL, "loader: out of memory in the prefetch thread");
    }
    L->handed = k + 1;
    b->tok = L->buf[s];
    b->index = k;
    b->B = L->o.batch;
    b->T = L->o.seq_len;
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------
 * Open, position, close */

static void *host_alloc(size_t bytes, int try_pinned, int *pinned)
{
    *pinned = 0;
    int ndev = 0;
    void *p = NULL;
    if (try_pinned && cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0 &&
        cudaHostAlloc(&p, bytes, cudaHostAllocDefault) == cudaSuccess) {
        *pinned = 1;
        return p;
    }
    cudaGetLastError();  /* a failed probe must not leak into the caller's error checks */
    return malloc(bytes);
}

int mg_loader_open(mg_loader **out, const mg_tokfile *tf, const mg_loader_opts *o, mg_err *err)
{
    *out = NULL;
    const char *name = o->name ? o->name : "token file";
    if (o->batch < 1 || o->seq_len < 1)
        return mg_err_set(err, MG_EUSER, "loader: batch = %d, seq_len = %d: both must be >= 1", o->batch, o->seq_len);
    uint64_t n = tf->info.n_tokens, T = (uint64_t)o->seq_len;
    if (n < T + 1)
        return mg_err_set(err, MG_EUSER, "%s: %llu tokens, fewer than one window of seq_len + 1 = %llu", name,
                          (unsigned long long)n, (unsigned long long)(T + 1));
    if ((n - 1) / T > UINT32_MAX) return mg_err_set(err, MG_EUSER, "%s: more than 2^32 windows", name);
    mg_loader *L = calloc(1, sizeof *L);
    if (!L) return mg_err_set(err, MG_EINTERNAL, "loader: out of memory");
    L->tf = tf;
    L->o = *o;
    L->o.name = NULL;
    L->n = n;
    L->windows = (n - 1) / T;
    L->row = (size_t)T + 1;
    L->batch_len = (size_t)o->batch * L->row;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    int pinned[2] = {0, 0};
    for (int i = 0; i < (o->sync ? 1 : 2); i++)
        L->buf[i] = host_alloc(L->batch_len * sizeof(int32_t), !o->no_pinned, &pinned[i]);
    L->pinned = pinned[0];
    int rc = (!L->buf[0] || (!o->sync && !L->buf[1])) ? mg_err_set(err, MG_EINTERNAL, "loader: out of memory") : MG_OK;
    if (!rc) rc = start_worker(L, 0, err);
    if (rc) {
        mg_loader_close(L);
        return rc;
    }
    *out = L;
    return MG_OK;
}

void mg_loader_seen(const mg_loader *L, uint64_t *tokens, double *epochs)
{
    uint64_t rows = L->handed * (uint64_t)L->o.batch;
    if (tokens) *tokens = rows * (uint64_t)L->o.seq_len;
    if (epochs)
        *epochs = L->o.order == MG_LOADER_EPOCH ? (double)rows / (double)L->windows
                                                 : (double)(rows * (uint64_t)L->o.seq_len) / (double)L->n;
}

void mg_loader_tell(const mg_loader *L, mg_loader_pos *pos)
{
    memset(pos, 0, sizeof *pos);
    pos->batch = L->handed;
    pos->seed = L->o.seed;
    pos->n_tokens = L->n;
    pos->B = (uint32_t)L->o.batch;
    pos->T = (uint32_t)L->o.seq_len;
    pos->order = (uint32_t)L->o.order;
}

int mg_loader_seek(mg_loader *L, const mg_loader_pos *pos, mg_err *err)
{
    static const char *const orders[] = {"random", "epoch"};
    if (pos->seed != L->o.seed || pos->n_tokens != L->n || pos->B != (uint32_t)L->o.batch ||
        pos->T != (uint32_t)L->o.seq_len || pos->order != (uint32_t)L->o.order)
        return mg_err_set(err, MG_EUSER,
                          "loader: the saved position is for seed %llu, batch %u, seq_len %u, %s order over %llu tokens; "
                          "this run has seed %llu, batch %d, seq_len %d, %s order over %llu tokens",
                          (unsigned long long)pos->seed, pos->B, pos->T, pos->order < 2 ? orders[pos->order] : "unknown",
                          (unsigned long long)pos->n_tokens, (unsigned long long)L->o.seed, L->o.batch, L->o.seq_len,
                          orders[L->o.order], (unsigned long long)L->n);
    stop_worker(L);
    return start_worker(L, pos->batch, err);
}

int mg_loader_pinned(const mg_loader *L) { return L->pinned; }

void mg_loader_close(mg_loader *L)
{
    if (!L) return;
    stop_worker(L);
    for (int i = 0; i < 2; i++) {
        if (!L->buf[i]) continue;
        if (L->pinned) cudaFreeHost(L->buf[i]);
        else free(L->buf[i]);
    }
    free(L->worker_perm.perm);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
    free(L);
}
