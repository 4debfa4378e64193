/* mg_comm_cpu: the CPU backend of mg_comm — collectives between the local launcher's processes
 * over one shared-memory segment. Each rank copies into its slot, a barrier, each rank reads every
 * slot and sums in rank order (((r0 + r1) + r2) ...): the same bits on every rank and every run. */
#include "mg_comm.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

double mg_dist_now(void);

#define SHM_MAGIC 0x4d47434du   /* "MGCM" */

typedef struct shm_hdr {
    uint32_t magic, world;
    uint64_t slot_bytes;
    atomic_uint count, gen;   /* the barrier */
    atomic_int aborted;       /* set by a rank that gave up: every wait then fails */
    int pad;
} shm_hdr;

typedef struct cpu_comm {
    mg_comm base;
    unsigned char *map;
    size_t map_bytes, slot;   /* slot: bytes per rank */
    shm_hdr *h;
    uint64_t *counts;         /* world*world: all-to-all-v counts, [src*world + dst] */
    int32_t *status;          /* world: per-rank verdicts */
    unsigned char *slots;
} cpu_comm;

static size_t hdr_bytes(int world)
{
    size_t b = sizeof(shm_hdr) + (size_t)world * (size_t)world * 8 + (size_t)world * 4;
    return (b + 63) & ~(size_t)63;
}

size_t mg_comm_cpu_shm_size(int world, size_t slot_bytes) { return hdr_bytes(world) + (size_t)world * slot_bytes; }

int mg_comm_cpu_shm_init(int fd, int world, size_t slot_bytes, mg_err *err)
{
    if (world < 1 || slot_bytes < (size_t)world * 8 || slot_bytes % ((size_t)world * 8))
        return mg_err_set(err, MG_EUSER, "comm cpu: slot of %zu bytes: must be a positive multiple of 8 * world (%d)",
                          slot_bytes, world);
    size_t n = mg_comm_cpu_shm_size(world, slot_bytes);
    if (ftruncate(fd, (off_t)n)) return mg_err_set(err, MG_EINTERNAL, "comm cpu: cannot size the segment to %zu bytes", n);
    shm_hdr *h = mmap(NULL, sizeof *h, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) return mg_err_set(err, MG_EINTERNAL, "comm cpu: mmap failed");
    h->world = (uint32_t)world;
    h->slot_bytes = slot_bytes;
    atomic_store(&h->count, 0);
    atomic_store(&h->gen, 0);
    atomic_store(&h->aborted, 0);
    h->magic = SHM_MAGIC;
    munmap(h, sizeof *h);
    return 0;
}

/* ---------------------------------------------------------------- barrier with a deadline */

static int barrier(cpu_comm *c, mg_err *err)
{
    shm_hdr *h = c->h;
    unsigned g = atomic_load(&h->gen);
    if (atomic_fetch_add(&h->count, 1) == h->world - 1) {
        atomic_store(&h->count, 0);
        atomic_fetch_add(&h->gen, 1);
        return 0;
    }
    double deadline = mg_dist_now() + c->base.timeout_s;
    for (long spin = 0; atomic_load(&h->gen) == g; spin++) {
        if (atomic_load(&h->aborted))
            return mg_err_set(err, MG_EUSER, "comm cpu: rank %d: another rank aborted the communicator", c->base.rank);
        if (spin < 1000) continue;
        if (spin < 2000) {
            sched_yield();
            continue;
        }
        if (mg_dist_now() > deadline) {
            atomic_store(&h->aborted, 1);
            return mg_err_set(err, MG_EUSER, "comm cpu: rank %d: the other ranks did not reach the collective "
                              "within %.0f s; communicator aborted", c->base.rank, c->base.timeout_s);
        }
        struct timespec t = {0, 50000};
        nanosleep(&t, NULL);
    }
    return 0;
}

static unsigned char *slot_of(cpu_comm *c, int r) { return c->slots + (size_t)r * c->slot; }

/* dst[i] = sum over ranks r (in order) of the element at byte offset off of slot r, i < n. */
static void sum_slots(cpu_comm *c, size_t off, void *dst, size_t n, mg_comm_dtype t)
{
    if (t == MG_COMM_F32) {
        float *o = dst;
        for (size_t i = 0; i < n; i++) {
            float acc = ((const float *)(slot_of(c, 0) + off))[i];
            for (int r = 1; r < c->base.world; r++) acc += ((const float *)(slot_of(c, r) + off))[i];
            o[i] = acc;
        }
    } else {
        double *o = dst;
        for (size_t i = 0; i < n; i++) {
            double acc = ((const double *)(slot_of(c, 0) + off))[i];
            for (int r = 1; r < c->base.world; r++) acc += ((const double *)(slot_of(c, r) + off))[i];
            o[i] = acc;
        }
    }
}

static int need_float(mg_comm_dtype t, mg_err *err)
{
    return t == MG_COMM_BYTE ? mg_err_set(err, MG_EUSER, "comm: sums need f32 or f64, not bytes") : 0;
}

/* ---------------------------------------------------------------- collectives */

static int cpu_all_reduce(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    cpu_comm *c = (cpu_comm *)b;
    if (need_float(t, err)) return MG_EUSER;
    size_t es = mg_comm_dtype_size(t), chunk = c->slot / es;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        memcpy(slot_of(c, b->rank), (const unsigned char *)in + off * es, len * es);
        if (barrier(c, err)) return MG_EUSER;
        sum_slots(c, 0, (unsigned char *)out + off * es, len, t);
        if (barrier(c, err)) return MG_EUSER;
    }
    return 0;
}

static int cpu_reduce_scatter(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    cpu_comm *c = (cpu_comm *)b;
    if (need_float(t, err)) return MG_EUSER;
    size_t es = mg_comm_dtype_size(t), sub = c->slot / (size_t)b->world, chunk = sub / es;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        for (int j = 0; j < b->world; j++)
            memcpy(slot_of(c, b->rank) + (size_t)j * sub, (const unsigned char *)in + ((size_t)j * n + off) * es,
                   len * es);
        if (barrier(c, err)) return MG_EUSER;
        sum_slots(c, (size_t)b->rank * sub, (unsigned char *)out + off * es, len, t);
        if (barrier(c, err)) return MG_EUSER;
    }
    return 0;
}

static int cpu_all_gather(mg_comm *b, const void *in, void *out, size_t n, mg_comm_dtype t, mg_err *err)
{
    cpu_comm *c = (cpu_comm *)b;
    size_t es = mg_comm_dtype_size(t), chunk = c->slot / es;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        memcpy(slot_of(c, b->rank), (const unsigned char *)in + off * es, len * es);
        if (barrier(c, err)) return MG_EUSER;
        for (int r = 0; r < b->world; r++)
            memcpy((unsigned char *)out + ((size_t)r * n + off) * es, slot_of(c, r), len * es);
        if (barrier(c, err)) return MG_EUSER;
    }
    return 0;
}

static int cpu_all_to_all_v(mg_comm *b, const void *send, const size_t *send_counts, void *recv, size_t *recv_counts,
                            size_t recv_cap, mg_comm_dtype t, mg_err *err)
{
    cpu_comm *c = (cpu_comm *)b;
    int W = b->world, me = b->rank;
    size_t es = mg_comm_dtype_size(t), sub = c->slot / (size_t)W, chunk = sub / es;
    /* 1. exchange the counts; every rank checks its own capacity and learns everyone's verdict */
    for (int j = 0; j < W; j++) c->counts[(size_t)me * W + j] = send_counts[j];
    if (barrier(c, err)) return MG_EUSER;
    size_t total = 0, rounds = 0;
    for (int j = 0; j < W; j++) {
        recv_counts[j] = (size_t)c->counts[(size_t)j * W + me];
        total += recv_counts[j];
    }
    for (size_t k = 0; k < (size_t)W * W; k++) {
        size_t r = ((size_t)c->counts[k] + chunk - 1) / chunk;
        if (r > rounds) rounds = r;
    }
    c->status[me] = total <= recv_cap;
    if (barrier(c, err)) return MG_EUSER;
    for (int j = 0; j < W; j++)
        if (!c->status[j])
            return mg_err_set(err, MG_EUSER, "comm: all-to-all-v: rank %d receives more than its capacity%s", j,
                              j == me ? "" : " (reported by that rank)");
    /* 2. the data, in rounds of at most `chunk` elements per (source, destination) pair */
    size_t soff[W], roff[W];
    size_t s = 0, r = 0;
    for (int j = 0; j < W; j++) {
        soff[j] = s;
        roff[j] = r;
        s += send_counts[j];
        r += recv_counts[j];
    }
    for (size_t k = 0; k < rounds; k++) {
        size_t lo = k * chunk;
        for (int j = 0; j < W; j++)
            if (send_counts[j] > lo) {
                size_t len = send_counts[j] - lo < chunk ? send_counts[j] - lo : chunk;
                memcpy(slot_of(c, me) + (size_t)j * sub, (const unsigned char *)send + (soff[j] + lo) * es, len * es);
            }
        if (barrier(c, err)) return MG_EUSER;
        for (int i = 0; i < W; i++)
            if (recv_counts[i] > lo) {
                size_t len = recv_counts[i] - lo < chunk ? recv_counts[i] - lo : chunk;
                memcpy((unsigned char *)recv + (roff[i] + lo) * es, slot_of(c, i) + (size_t)me * sub, len * es);
            }
        if (barrier(c, err)) return MG_EUSER;
    }
    return 0;
}

static void cpu_abort(mg_comm *b) { atomic_store(&((cpu_comm *)b)->h->aborted, 1); }

static void cpu_close(mg_comm *b)
{
    cpu_comm *c = (cpu_comm *)b;
    munmap(c->map, c->map_bytes);
    free(c);
}

static const mg_comm_ops cpu_ops = {cpu_all_reduce, cpu_reduce_scatter, cpu_all_gather, cpu_all_to_all_v, cpu_abort,
                                    cpu_close};

mg_comm *mg_comm_cpu_open(int fd, int rank, int world, double timeout_s, mg_err *err)
{
    if (fd < 0) {
        const char *v = getenv("MOEGEN_SHM_FD");
        fd = v && *v ? atoi(v) : -1;
    }
    if (fd < 0) {
        mg_err_set(err, MG_EUSER, "comm cpu: no shared-memory segment ($MOEGEN_SHM_FD unset: start with "
                   "`moegen train --procs N`)");
        return NULL;
    }
    shm_hdr *h = mmap(NULL, sizeof *h, PROT_READ, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        mg_err_set(err, MG_EINTERNAL, "comm cpu: cannot map fd %d", fd);
        return NULL;
    }
    uint32_t magic = h->magic, w = h->world;
    size_t slot = (size_t)h->slot_bytes;
    munmap(h, sizeof *h);
    if (magic != SHM_MAGIC || (int)w != world || rank < 0 || rank >= world) {
        mg_err_set(err, MG_EUSER, "comm cpu: the segment is for world %u, this rank is %d of %d", w, rank, world);
        return NULL;
    }
    cpu_comm *c = calloc(1, sizeof *c);
    if (!c) {
        mg_err_set(err, MG_EINTERNAL, "comm cpu: out of memory");
        return NULL;
    }
    c->map_bytes = mg_comm_cpu_shm_size(world, slot);
    c->map = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c->map == MAP_FAILED) {
        free(c);
        mg_err_set(err, MG_EINTERNAL, "comm cpu: cannot map %zu bytes", mg_comm_cpu_shm_size(world, slot));
        return NULL;
    }
    c->base = (mg_comm){&cpu_ops, rank, world, timeout_s > 0 ? timeout_s : 300.0};
    c->slot = slot;
    c->h = (shm_hdr *)c->map;
    c->counts = (uint64_t *)(c->map + sizeof(shm_hdr));
    c->status = (int32_t *)(c->counts + (size_t)world * world);
    c->slots = c->map + hdr_bytes(world);
    return &c->base;
}
