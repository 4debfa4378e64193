/* mg_comm_nccl: the NCCL backend of mg_comm (device buffers on one stream). The only file that
 * includes <nccl.h>. Untested: written and compiled on a host without GPUs (runtime/DISTRIBUTED.md).
 * The communicator is non-blocking (config.blocking = 0) so that every wait can time out: each
 * collective is enqueued, then we poll the stream and ncclCommGetAsyncError until it is done, an
 * error shows up, or timeout_s passes; the last two abort the communicator. */
#include "mg_comm.h"
#include "mg_cuda.h"

#include <nccl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double mg_dist_now(void);

_Static_assert(sizeof(ncclUniqueId) == 128, "mg_dist shares the id as 128 opaque bytes");

typedef struct nccl_comm {
    mg_comm base;
    ncclComm_t nc;
    cudaStream_t stream;
    size_t *d_counts;   /* world*world counts for all-to-all-v */
    size_t *h_counts;   /* the same, pinned: the exchange's copies are async, one wait for all */
    void *scratch;      /* device staging of host buffers (blocking calls), scratch_bytes */
    size_t scratch_bytes;
    int aborted;
    /* the all-to-all's sends and receives go through a blocking split of nc, made at the first
     * exchange (nd; nd_state 0 not tried, 1 made, -1 not wanted: MOEGEN_NCCL_A2A=nonblocking) */
    ncclComm_t nd;
    int nd_state;
} nccl_comm;

static ncclDataType_t nccl_type(mg_comm_dtype t)
{
    return t == MG_COMM_F64 ? ncclFloat64 : t == MG_COMM_F32 ? ncclFloat32 : ncclUint8;
}

static void nccl_abort(mg_comm *b)
{
    nccl_comm *c = (nccl_comm *)b;
    if (!c->aborted && c->nd) ncclCommAbort(c->nd);
    if (!c->aborted) ncclCommAbort(c->nc);
    c->aborted = 1;
}

/* Waits for the communicator to leave ncclInProgress and (stream_too) `stream` to drain. */
static int nccl_wait_on(nccl_comm *c, cudaStream_t stream, int stream_too, ncclResult_t r, const char *what, mg_err *err)
{
    /* spin for the first 2 ms: an all-to-all of the EP dispatch takes tens of µs, a 100 µs nap per
     * poll would dominate it (bench/mg_bench_a2a) */
    double deadline = mg_dist_now() + c->base.timeout_s, spin_until = mg_dist_now() + 2e-3;
    for (;;) {
        ncclResult_t async = ncclSuccess;
        if (r != ncclSuccess && r != ncclInProgress) break;
        ncclCommGetAsyncError(c->nc, &async);
        if (async != ncclSuccess && async != ncclInProgress) {
            r = async;
            break;
        }
        if (async == ncclSuccess) {
            cudaError_t q = stream_too ? cudaStreamQuery(stream) : cudaSuccess;
            if (q == cudaSuccess) return 0;
            if (q != cudaErrorNotReady) {
                nccl_abort(&c->base);
                return mg_err_set(err, MG_EINTERNAL, "comm nccl: %s: %s", what, cudaGetErrorString(q));
            }
        }
        if (mg_dist_now() > deadline) {
            nccl_abort(&c->base);
            return mg_err_set(err, MG_EUSER, "comm nccl: rank %d: %s did not finish within %.0f s; communicator aborted",
                              c->base.rank, what, c->base.timeout_s);
        }
        struct timespec t = {0, 100000};
        if (mg_dist_now() < spin_until) sched_yield();
        else nanosleep(&t, NULL);
        r = ncclSuccess;
    }
    nccl_abort(&c->base);
    return mg_err_set(err, MG_EINTERNAL, "comm nccl: rank %d: %s: %s (%s); communicator aborted", c->base.rank, what,
                      ncclGetErrorString(r), ncclGetLastError(c->nc));
}

static int nccl_wait(nccl_comm *c, ncclResult_t r, const char *what, mg_err *err)
{
    return nccl_wait_on(c, c->stream, 1, r, what, err);
}

/* 1 when p is host memory (pageable or pinned): the blocking calls then stage through scratch. */
static int is_host(const void *p)
{
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 1;
    }
    return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
}

static int scratch(nccl_comm *c, size_t bytes, mg_err *err)
{
    if (bytes <= c->scratch_bytes) return 0;
    cudaFree(c->scratch);
    c->scratch = NULL, c->scratch_bytes = 0;
    MG_CUDA_TRY(cudaMalloc(&c->scratch, bytes), err);
    c->scratch_bytes = bytes;
    return 0;
}

typedef enum { OP_ALL_REDUCE, OP_REDUCE_SCATTER, OP_ALL_GATHER } nccl_op;

/* One blocking collective; host buffers go through the scratch (in at offset 0, out after it). */
static int nccl_collective(nccl_comm *c, nccl_op op, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    size_t es = mg_comm_dtype_size(t), W = (size_t)c->base.world;
    size_t in_n = op == OP_REDUCE_SCATTER ? W * n : n, out_n = op == OP_ALL_GATHER ? W * n : n;
    int host_in = is_host(in), host_out = is_host(out), rc;
    const void *din = in;
    void *dout = out;
    if (host_in || host_out) {
        if ((rc = scratch(c, (in_n + out_n) * es, err))) return rc;
        if (host_in) {
            din = c->scratch;
            MG_CUDA_TRY(cudaMemcpyAsync(c->scratch, in, in_n * es, cudaMemcpyHostToDevice, c->stream), err);
        }
        if (host_out) dout = (char *)c->scratch + in_n * es;
    }
    ncclDataType_t ty = nccl_type(t);
    ncclResult_t r = op == OP_ALL_REDUCE ? ncclAllReduce(din, dout, n, ty, ncclSum, c->nc, c->stream)
                     : op == OP_REDUCE_SCATTER ? ncclReduceScatter(din, dout, n, ty, ncclSum, c->nc, c->stream)
                                               : ncclAllGather(din, dout, n, ty, c->nc, c->stream);
    static const char *const names[] = {"all-reduce", "reduce-scatter", "all-gather"};
    if ((rc = nccl_wait(c, r, names[op], err))) return rc;
    if (host_out) MG_CUDA_TRY(cudaMemcpy(out, dout, out_n * es, cudaMemcpyDeviceToHost), err);
    return 0;
}

static int nccl_all_reduce(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    return nccl_collective((nccl_comm *)b, OP_ALL_REDUCE, in, out, n, t, err);
}

static int nccl_reduce_scatter(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    return nccl_collective((nccl_comm *)b, OP_REDUCE_SCATTER, in, out, n, t, err);
}

static int nccl_all_gather(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    return nccl_collective((nccl_comm *)b, OP_ALL_GATHER, in, out, n, t, err);
}

/* Enqueued on `stream`; waits only for the enqueue (a non-blocking communicator may report
 * ncclInProgress until the call is queued), not for the result: see nccl_stream_wait. */
static int nccl_all_reduce_async(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, void *stream,
                                 mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    ncclResult_t r = ncclAllReduce(in, out, n, nccl_type(t), ncclSum, c->nc, (cudaStream_t)stream);
    return nccl_wait_on(c, (cudaStream_t)stream, 0, r, "all-reduce (async)", err);
}

static int nccl_reduce_scatter_async(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, void *stream,
                                     mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    if (t == MG_COMM_BYTE) return mg_err_set(err, MG_EUSER, "comm: sums need f32 or f64, not bytes");
    ncclResult_t r = ncclReduceScatter(in, out, n, nccl_type(t), ncclSum, c->nc, (cudaStream_t)stream);
    return nccl_wait_on(c, (cudaStream_t)stream, 0, r, "reduce-scatter (async)", err);
}

static int nccl_all_gather_async(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, void *stream,
                                 mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    ncclResult_t r = ncclAllGather(in, out, n, nccl_type(t), c->nc, (cudaStream_t)stream);
    return nccl_wait_on(c, (cudaStream_t)stream, 0, r, "all-gather (async)", err);
}

static int nccl_stream_wait(mg_comm *b, void *stream, mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    return nccl_wait_on(c, (cudaStream_t)stream, 1, ncclSuccess, "waiting for the stream", err);
}

static int nccl_wait_on(nccl_comm *c, cudaStream_t stream, int stream_too, ncclResult_t r, const char *what, mg_err *err);

/* The all-to-all's data communicator: a blocking split of nc, made at the first exchange (every
 * rank of c is in the exchange, so the split is collective as it must be). On 2 H100s the same
 * grouped send/recv reached 0.44-0.61 of a blocking communicator's bandwidth on the non-blocking
 * nc, and 0.99-1.02 on this split (bench/results/2026-11-26-s3); MOEGEN_NCCL_A2A=nonblocking keeps
 * nc. The wait still polls and times out (nccl_wait). Its connections to every peer are made
 * here, while all ranks are alive: a blocking call that set up a connection to a dead peer could
 * not time out. */
static int data_comm(nccl_comm *c, mg_err *err)
{
    if (c->nd_state) return 0;
    const char *v = getenv("MOEGEN_NCCL_A2A");
    c->nd_state = -1;
    if (v && !strcmp(v, "nonblocking")) return 0;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 1;
    int rc = nccl_wait_on(c, c->stream, 0, ncclCommSplit(c->nc, 0, c->base.rank, &c->nd, &cfg), "ncclCommSplit (a2a)", err);
    if (rc) return rc;
    ncclResult_t a = ncclInProgress;
    while (c->nd && a == ncclInProgress) ncclCommGetAsyncError(c->nd, &a);
    if (!c->nd || a != ncclSuccess)
        return mg_err_set(err, MG_EINTERNAL, "comm nccl: rank %d: the blocking all-to-all communicator: %s", c->base.rank,
                          c->nd ? ncclGetErrorString(a) : "none made");
    c->nd_state = 1;
    if (c->base.world < 2) return 0;
    size_t *d = c->d_counts;   /* warm-up: one count to and from every peer (W + j < W² for W >= 2) */
    ncclResult_t r = ncclGroupStart();
    for (int j = 0; j < c->base.world && r == ncclSuccess; j++) {
        r = ncclSend(d + c->base.rank, sizeof *d, ncclUint8, j, c->nd, c->stream);
        if (r == ncclSuccess) r = ncclRecv(d + (size_t)c->base.world + j, sizeof *d, ncclUint8, j, c->nd, c->stream);
    }
    ncclResult_t g = ncclGroupEnd();
    return nccl_wait_on(c, c->stream, 1, r == ncclSuccess ? g : r, "all-to-all warm-up", err);
}

/* One grouped round of sends and receives enqueued on `stream` (polling the data communicator's
 * errors as well when it is the blocking one); returns once NCCL has queued it. */
static int nccl_send_recv_enqueue(nccl_comm *c, const void *send, const size_t *send_counts, void *recv,
                                  const size_t *recv_counts, size_t es, cudaStream_t stream, mg_err *err)
{
    int rc = data_comm(c, err);
    if (rc) return rc;
    ncclComm_t nc = c->nd_state == 1 ? c->nd : c->nc;
    size_t so = 0, ro = 0;
    ncclResult_t r = ncclGroupStart();
    for (int j = 0; j < c->base.world && (r == ncclSuccess || r == ncclInProgress); j++) {
        if (send_counts[j]) r = ncclSend((const char *)send + so * es, send_counts[j] * es, ncclUint8, j, nc, stream);
        if (recv_counts[j] && (r == ncclSuccess || r == ncclInProgress))
            r = ncclRecv((char *)recv + ro * es, recv_counts[j] * es, ncclUint8, j, nc, stream);
        so += send_counts[j];
        ro += recv_counts[j];
    }
    ncclResult_t g = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) g = r;
    if (nc == c->nd && g == ncclSuccess) ncclCommGetAsyncError(c->nd, &g);   /* the stream wait watches nc */
    return nccl_wait_on(c, stream, 0, g, "all-to-all-v", err);
}

/* The same, then the wait for the data. */
static int nccl_send_recv(nccl_comm *c, const void *send, const size_t *send_counts, void *recv,
                          const size_t *recv_counts, size_t es, mg_err *err)
{
    int rc = nccl_send_recv_enqueue(c, send, send_counts, recv, recv_counts, es, c->stream, err);
    return rc ? rc : nccl_wait(c, ncclSuccess, "all-to-all-v", err);
}

static int nccl_all_to_all_v(mg_comm *b, const void *send, const size_t *send_counts, void *recv, size_t *recv_counts,
                             size_t recv_cap, mg_comm_dtype t, mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    int W = b->world, me = b->rank;
    size_t es = mg_comm_dtype_size(t), *all = c->h_counts;
    /* 1. the counts: all-gather every rank's row, then take our column, through pinned host rows.
     *    The read-back is enqueued only once NCCL has enqueued the all-gather: a non-blocking
     *    communicator may answer ncclInProgress before the collective is on the stream, and a
     *    copy queued then would read the old counts (that hung the exchange) */
    memcpy(all + (size_t)me * W, send_counts, (size_t)W * sizeof *all);
    MG_CUDA_TRY(cudaMemcpyAsync(c->d_counts + (size_t)me * W, all + (size_t)me * W, (size_t)W * sizeof(size_t),
                                cudaMemcpyHostToDevice, c->stream), err);
    int rc = nccl_wait_on(c, c->stream, 0, ncclAllGather(c->d_counts + (size_t)me * W, c->d_counts,
                                                         (size_t)W * sizeof(size_t), ncclUint8, c->nc, c->stream),
                          "all-to-all-v counts", err);
    if (rc) return rc;
    MG_CUDA_TRY(cudaMemcpyAsync(all, c->d_counts, (size_t)W * W * sizeof *all, cudaMemcpyDeviceToHost, c->stream), err);
    rc = nccl_wait(c, ncclSuccess, "all-to-all-v counts", err);
    size_t total = 0;
    for (int j = 0; !rc && j < W; j++) total += recv_counts[j] = all[(size_t)j * W + me];
    if (!rc && total > recv_cap)
        rc = mg_err_set(err, MG_EUSER, "comm: all-to-all-v: rank %d receives %zu elements, capacity %zu", me, total,
                        recv_cap);
    if (rc) return rc;   /* note: unlike the CPU backend the other ranks are not told; they time out */
    /* 2. the data */
    return nccl_send_recv(c, send, send_counts, recv, recv_counts, es, err);
}

static int nccl_all_to_all_vk(mg_comm *b, const void *send, const size_t *send_counts, void *recv,
                              const size_t *recv_counts, mg_comm_dtype t, mg_err *err)
{
    return nccl_send_recv((nccl_comm *)b, send, send_counts, recv, recv_counts, mg_comm_dtype_size(t), err);
}

/* Enqueued on the caller's stream (the GPU EP layer's own, so that NCCL's kernels start before the
 * shared experts' GEMMs take the SMs); mg_comm_wait(b, stream) waits for it. */
static int nccl_all_to_all_vk_async(mg_comm *b, const void *send, const size_t *send_counts, void *recv,
                                    const size_t *recv_counts, mg_comm_dtype t, void *stream, mg_err *err)
{
    return nccl_send_recv_enqueue((nccl_comm *)b, send, send_counts, recv, recv_counts, mg_comm_dtype_size(t),
                                  (cudaStream_t)stream, err);
}

static void nccl_close(mg_comm *b)
{
    nccl_comm *c = (nccl_comm *)b;
    /* The communicator is non-blocking: ncclCommFinalize may return ncclInProgress, and NCCL's
     * rule is that after ncclInProgress no other call (ncclCommDestroy included) may be made on
     * the communicator until ncclCommGetAsyncError says ncclSuccess; destroying it at once was a
     * misuse. An error or the timeout aborts instead (nccl_wait_on sets aborted). */
    if (!c->aborted && c->nd && ncclCommFinalize(c->nd) == ncclSuccess) ncclCommDestroy(c->nd);
    if (!c->aborted) nccl_wait_on(c, c->stream, 0, ncclCommFinalize(c->nc), "ncclCommFinalize", NULL);
    if (!c->aborted) ncclCommDestroy(c->nc);
    cudaFree(c->d_counts);
    cudaFreeHost(c->h_counts);
    cudaFree(c->scratch);
    free(c);
}

static int nccl_split(mg_comm *b, int color, int key, mg_comm **out, mg_err *err);

static const mg_comm_ops nccl_ops = {.all_reduce = nccl_all_reduce, .reduce_scatter = nccl_reduce_scatter,
                                     .all_gather = nccl_all_gather, .all_to_all_v = nccl_all_to_all_v,
                                     .abort = nccl_abort, .close = nccl_close,
                                     .all_reduce_async = nccl_all_reduce_async, .wait = nccl_stream_wait,
                                     .split = nccl_split, .all_to_all_vk = nccl_all_to_all_vk,
                                     .all_to_all_vk_async = nccl_all_to_all_vk_async,
                                     .reduce_scatter_async = nccl_reduce_scatter_async,
                                     .all_gather_async = nccl_all_gather_async};

static nccl_comm *nccl_new(int rank, int world, cudaStream_t stream, double timeout_s, mg_err *err)
{
    nccl_comm *c = calloc(1, sizeof *c);
    if (!c) {
        mg_err_set(err, MG_EINTERNAL, "comm nccl: out of memory");
        return NULL;
    }
    c->base = (mg_comm){&nccl_ops, rank, world, timeout_s > 0 ? timeout_s : 300.0};
    c->stream = stream;
    size_t cb = (size_t)world * world * sizeof(size_t);
    if (cudaMalloc((void **)&c->d_counts, cb) != cudaSuccess || cudaHostAlloc((void **)&c->h_counts, cb, 0) != cudaSuccess) {
        cudaFree(c->d_counts);
        free(c);
        mg_err_set(err, MG_EINTERNAL, "comm nccl: cannot allocate the all-to-all counts (%zu bytes)", cb);
        return NULL;
    }
    return c;
}

/* ncclCommSplit (non-blocking like the parent; never ncclCommInitAll). */
static int nccl_split(mg_comm *b, int color, int key, mg_comm **out, mg_err *err)
{
    nccl_comm *c = (nccl_comm *)b;
    ncclComm_t nc = NULL;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    *out = NULL;
    ncclResult_t r = ncclCommSplit(c->nc, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &nc, &cfg);
    int rc = nccl_wait_on(c, c->stream, 0, r, "ncclCommSplit", err);
    if (rc || !nc) return rc;
    double deadline = mg_dist_now() + b->timeout_s;
    for (;;) {   /* the new communicator finishes its own initialisation */
        ncclResult_t a = ncclInProgress;
        ncclCommGetAsyncError(nc, &a);
        if (a == ncclSuccess) break;
        if (a != ncclInProgress || mg_dist_now() > deadline) {
            ncclCommAbort(nc);
            return mg_err_set(err, MG_EUSER, "comm nccl: rank %d: ncclCommSplit(color %d): %s", b->rank, color,
                              a == ncclInProgress ? "timed out" : ncclGetErrorString(a));
        }
        struct timespec t = {0, 100000};
        nanosleep(&t, NULL);
    }
    int rank = 0, world = 0;
    ncclCommUserRank(nc, &rank);
    ncclCommCount(nc, &world);
    nccl_comm *s = nccl_new(rank, world, c->stream, b->timeout_s, err);
    if (!s) {
        ncclCommAbort(nc);
        return MG_EINTERNAL;
    }
    s->nc = nc;
    *out = &s->base;
    return 0;
}

/* NVLink multicast (NVLS) is off unless the environment asks for it (runtime/DISTRIBUTED.md).
 * This used to be a setenv() at every mg_comm_nccl_open, which is unsafe and can be useless:
 *  - setenv is not thread-safe: adding a variable makes glibc reallocate the environ array while
 *    other threads may be inside getenv (NCCL's init and proxy threads read NCCL_* variables, and a
 *    process with one thread per rank opens communicators concurrently): a use-after-free;
 *  - NCCL reads each NCCL_* variable once per process, at the first communicator that needs it,
 *    so setting it after the process made any other NCCL communicator changes nothing.
 * So it is done once, at the first NCCL call of this module (a process that opens its communicator
 * through us has no NCCL threads yet), and only when unset (setenv(.., 0) of a variable that
 * exists writes nothing, but we do not even take that path). A program that makes its own NCCL
 * communicators first must put NCCL_NVLS_ENABLE=0 in its environment itself, at start-up
 * (bench/mg_bench_a2a.c does). */
static void nvls_default_once(void)
{
    if (!getenv("NCCL_NVLS_ENABLE")) setenv("NCCL_NVLS_ENABLE", "0", 0);
}

static void nvls_default(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, nvls_default_once);
}

int mg_comm_nccl_unique_id(unsigned char id[128], mg_err *err)
{
    nvls_default();
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return mg_err_set(err, MG_EINTERNAL, "comm nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, u.internal, 128);
    return 0;
}

mg_comm *mg_comm_nccl_open(const unsigned char id[128], int rank, int world, void *stream, double timeout_s, mg_err *err)
{
    nvls_default();
    nccl_comm *c = nccl_new(rank, world, (cudaStream_t)stream, timeout_s, err);
    if (!c) return NULL;
    ncclUniqueId u;
    memcpy(u.internal, id, 128);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    if (nccl_wait(c, ncclCommInitRankConfig(&c->nc, world, u, rank, &cfg), "ncclCommInitRank", err)) {
        cudaFree(c->d_counts);
        cudaFreeHost(c->h_counts);
        free(c);
        return NULL;
    }
    return &c->base;
}
