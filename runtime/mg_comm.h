/* mg_comm: collectives across the ranks of one job, two backends with one interface:
 * NCCL (runtime/mg_comm_nccl.c; device buffers, one stream) and CPU (runtime/mg_comm_cpu.c; host
 * buffers, shared memory between the local launcher's processes, sums in rank order so results are
 * bitwise reproducible). Every call is collective: all ranks call it with matching sizes. */
#ifndef MG_COMM_H
#define MG_COMM_H

#include <stddef.h>
#include <stdlib.h>
#include "mg_err.h"

typedef enum { MG_COMM_F32, MG_COMM_F64, MG_COMM_BYTE } mg_comm_dtype;   /* sums: F32, F64 only */

static inline size_t mg_comm_dtype_size(mg_comm_dtype t) { return t == MG_COMM_F64 ? 8 : t == MG_COMM_F32 ? 4 : 1; }

typedef struct mg_comm mg_comm;

typedef struct mg_comm_ops {
    int (*all_reduce)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, mg_err *);
    int (*reduce_scatter)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, mg_err *);
    int (*all_gather)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, mg_err *);
    int (*all_to_all_v)(mg_comm *, const void *send, const size_t *send_counts, void *recv, size_t *recv_counts,
                        size_t recv_cap, mg_comm_dtype, mg_err *);
    void (*abort)(mg_comm *);
    void (*close)(mg_comm *);
    /* NULL in the CPU backend (the helpers below fall back to the blocking call / a no-op) */
    int (*all_reduce_async)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, void *stream, mg_err *);
    int (*wait)(mg_comm *, void *stream, mg_err *);
    int (*split)(mg_comm *, int color, int key, mg_comm **out, mg_err *);
    /* NULL in the CPU backend: mg_comm_all_to_all_vk falls back to all_to_all_v + a check */
    int (*all_to_all_vk)(mg_comm *, const void *send, const size_t *send_counts, void *recv,
                         const size_t *recv_counts, mg_comm_dtype, mg_err *);
    /* NULL in the CPU backend: mg_comm_all_to_all_vk_async runs the blocking call */
    int (*all_to_all_vk_async)(mg_comm *, const void *send, const size_t *send_counts, void *recv,
                               const size_t *recv_counts, mg_comm_dtype, void *stream, mg_err *);
    /* NULL in the CPU backend: the helpers below run the blocking call */
    int (*reduce_scatter_async)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, void *stream, mg_err *);
    int (*all_gather_async)(mg_comm *, const void *in, void *out, size_t n, mg_comm_dtype, void *stream, mg_err *);
} mg_comm_ops;

struct mg_comm {
    const mg_comm_ops *ops;
    int rank, world;
    double timeout_s;   /* a collective that does not finish in this long fails (and aborts, NCCL) */
};

/* out[i] = sum over ranks of in[i], n elements; in may equal out. The NCCL backend's blocking
 * calls also take host buffers (staged through device memory): small statistics need no copies. */
static inline int mg_comm_all_reduce(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{ return c->ops->all_reduce(c, in, out, n, t, err); }
/* in: world*n elements; out (n): the sum over ranks of block `rank` of in. In place (NCCL's rule):
 * out = in + rank*n, the sum lands in this rank's own block and the other blocks keep their values. */
static inline int mg_comm_reduce_scatter(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{ return c->ops->reduce_scatter(c, in, out, n, t, err); }
/* in: n elements; out: world*n, block r from rank r. In place (NCCL's rule): in = out + rank*n.
 * MG_COMM_BYTE gathers any element type (n in bytes): ZeRO-1 gathers bf16 weights so. */
static inline int mg_comm_all_gather(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{ return c->ops->all_gather(c, in, out, n, t, err); }
/* send: blocks for rank 0, 1, ... back to back, send_counts[r] elements each (host array).
 * The counts are exchanged first; recv_counts[r] (host, out) = what rank r sends here, and recv
 * holds the blocks in rank order. Fails (on every rank) when a rank's total exceeds its recv_cap. */
static inline int mg_comm_all_to_all_v(mg_comm *c, const void *send, const size_t *send_counts, void *recv,
                                       size_t *recv_counts, size_t recv_cap, mg_comm_dtype t, mg_err *err)
{ return c->ops->all_to_all_v(c, send, send_counts, recv, recv_counts, recv_cap, t, err); }
/* The same exchange when every rank already knows what it receives (recv_counts, host, in: what
 * rank r sends here): no count exchange. The EP layer knows them from its per-expert count
 * all-gather, which serves the dispatch and the return; the count round trip (an all-gather and a
 * device-to-host copy) would otherwise cost more than a 16 MiB transfer over NVLink. Counts that
 * disagree with the senders' are a caller bug: the CPU fallback reports it, NCCL may hang until
 * the timeout. */
static inline int mg_comm_all_to_all_vk(mg_comm *c, const void *send, const size_t *send_counts, void *recv,
                                        const size_t *recv_counts, mg_comm_dtype t, mg_err *err)
{
    if (c->ops->all_to_all_vk) return c->ops->all_to_all_vk(c, send, send_counts, recv, recv_counts, t, err);
    size_t *got = malloc((size_t)c->world * sizeof *got), cap = 0;
    if (!got) return mg_err_set(err, MG_EINTERNAL, "comm: out of memory");
    for (int r = 0; r < c->world; r++) cap += recv_counts[r];
    int rc = c->ops->all_to_all_v(c, send, send_counts, recv, got, cap, t, err);
    for (int r = 0; !rc && r < c->world; r++)
        if (got[r] != recv_counts[r])
            rc = mg_err_set(err, MG_EINTERNAL, "comm: all-to-all-v: rank %d sent %zu elements to rank %d, which expected %zu",
                            r, got[r], c->rank, recv_counts[r]);
    free(got);
    return rc;
}
/* mg_comm_all_to_all_vk enqueued on `stream` (a cudaStream_t, device buffers) without waiting
 * (NCCL); mg_comm_wait(c, stream) waits for it. Backends without streams run it now, blocking. */
static inline int mg_comm_all_to_all_vk_async(mg_comm *c, const void *send, const size_t *send_counts, void *recv,
                                              const size_t *recv_counts, mg_comm_dtype t, void *stream, mg_err *err)
{
    if (c->ops->all_to_all_vk_async)
        return c->ops->all_to_all_vk_async(c, send, send_counts, recv, recv_counts, t, stream, err);
    return mg_comm_all_to_all_vk(c, send, send_counts, recv, recv_counts, t, err);
}
/* Enqueues the all-reduce on `stream` (a cudaStream_t, device buffers) and returns without waiting
 * (NCCL); mg_comm_wait(c, stream) waits for it. Backends without streams run it now, blocking. */
static inline int mg_comm_all_reduce_async(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t,
                                           void *stream, mg_err *err)
{ return c->ops->all_reduce_async ? c->ops->all_reduce_async(c, in, out, n, t, stream, err) : c->ops->all_reduce(c, in, out, n, t, err); }
/* mg_comm_reduce_scatter / mg_comm_all_gather enqueued on `stream` (a cudaStream_t, device
 * buffers) without waiting (NCCL), in place as above; mg_comm_wait(c, stream) waits for them.
 * Backends without streams run them now, blocking. ZeRO-1 (mg_zero.h) reduce-scatters each
 * gradient bucket while the backward goes on, and all-gathers the updated weights. */
static inline int mg_comm_reduce_scatter_async(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t,
                                               void *stream, mg_err *err)
{
    return c->ops->reduce_scatter_async ? c->ops->reduce_scatter_async(c, in, out, n, t, stream, err)
                                        : c->ops->reduce_scatter(c, in, out, n, t, err);
}
static inline int mg_comm_all_gather_async(mg_comm *c, const void *in, void *out, size_t n, mg_comm_dtype t,
                                           void *stream, mg_err *err)
{
    return c->ops->all_gather_async ? c->ops->all_gather_async(c, in, out, n, t, stream, err)
                                    : c->ops->all_gather(c, in, out, n, t, err);
}
/* Waits until everything enqueued on `stream` has finished, up to timeout_s, watching the
 * communicator for errors; an error or the timeout aborts the communicator (NCCL). */
static inline int mg_comm_wait(mg_comm *c, void *stream, mg_err *err)
{ return c->ops->wait ? c->ops->wait(c, stream, err) : 0; }
/* Collective over c: the ranks that pass the same color form one new communicator, ranked by
 * (key, rank in c). color < 0: this rank joins none (*out = NULL). The new communicator is
 * independent of c (close both). E.g. a world of dp·ep ranks, rank = d·ep + e: color d gives the
 * ep group of replica d, color e the dp group of expert shard e. */
static inline int mg_comm_split(mg_comm *c, int color, int key, mg_comm **out, mg_err *err)
{ return c->ops->split(c, color, key, out, err); }
/* Ends outstanding work without waiting for the peers (after an error or a timeout). */
static inline void mg_comm_abort(mg_comm *c) { c->ops->abort(c); }
static inline void mg_comm_close(mg_comm *c) { if (c) c->ops->close(c); }

/* ---------------------------------------------------------------- CPU backend */
/* The segment: a header, per-rank counts and one slot of slot_bytes per rank; bigger transfers go
 * in rounds. The launcher creates it (mg_launch_opts.shm_bytes) and passes the fd as $MOEGEN_SHM_FD. */
size_t mg_comm_cpu_shm_size(int world, size_t slot_bytes);
int mg_comm_cpu_shm_init(int fd, int world, size_t slot_bytes, mg_err *err);
/* fd < 0: $MOEGEN_SHM_FD. */
mg_comm *mg_comm_cpu_open(int fd, int rank, int world, double timeout_s, mg_err *err);

/* ---------------------------------------------------------------- NCCL backend (untested: no GPU here) */
/* Rank 0 makes the id (ncclGetUniqueId), mg_dist_rendezvous shares it, every rank opens.
 * stream: a cudaStream_t (NULL: the default stream). Collectives wait for completion up to
 * timeout_s, polling ncclCommGetAsyncError; on an error or the timeout they call ncclCommAbort. */
int mg_comm_nccl_unique_id(unsigned char id[128], mg_err *err);
mg_comm *mg_comm_nccl_open(const unsigned char id[128], int rank, int world, void *stream, double timeout_s, mg_err *err);

#endif
