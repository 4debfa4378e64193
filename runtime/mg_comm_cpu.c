/* mg_comm_cpu: the CPU backend of mg_comm — collectives between the local launcher's processes
 * over one shared-memory segment. Each rank copies into its slot, a barrier, each rank reads every
 * slot and sums in rank order (((r0 + r1) + r2) ...): the same bits on every rank and every run.
 * A split communicator (mg_comm_split) is a view of the same segment: its members' slots and a
 * barrier of its own from a table in the header. Slots, the count table and the verdicts can be
 * shared by the views because a collective ends with a barrier after the last read of every
 * shared location it used, on every path (a failed all-to-all too): a rank then runs on into
 * another group only when this group's peers are done with its locations. */
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
#define MAX_SPLITS 8            /* mg_comm_split calls per job (each needs world barriers) */

typedef struct shm_bar {
    atomic_uint count, gen;
} shm_bar;

typedef struct shm_hdr {
    uint32_t magic, world;
    uint64_t slot_bytes;
    shm_bar bar;              /* the world's barrier */
    atomic_int aborted;       /* set by a rank that gave up: every wait then fails (every group too) */
    int pad;
} shm_hdr;

typedef struct cpu_comm {
    mg_comm base;
    unsigned char *map;
    size_t map_bytes, slot;   /* slot: bytes per rank */
    shm_hdr *h;
    uint64_t *counts;         /* world*world: all-to-all-v counts, [src*world + dst] (segment ranks) */
    int32_t *status;          /* world: per-rank verdicts (segment ranks) */
    unsigned char *slots;
    shm_bar *bar;             /* this communicator's barrier */
    shm_bar *split_bars;      /* MAX_SPLITS * world */
    int seg_world;            /* ranks of the segment */
    int *members;             /* [base.world] segment rank of each member, in order */
    int n_splits;             /* splits made from this communicator (the same count on every member) */
} cpu_comm;

static size_t hdr_bytes(int world)
{
    size_t b = sizeof(shm_hdr) + (size_t)world * (size_t)world * 8 + (size_t)world * 4 +
               (size_t)MAX_SPLITS * (size_t)world * sizeof(shm_bar);
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
    size_t hb = hdr_bytes(world);
    shm_hdr *h = mmap(NULL, hb, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) return mg_err_set(err, MG_EINTERNAL, "comm cpu: mmap failed");
    memset(h, 0, hb);   /* every barrier at (0, 0), not aborted */
    h->world = (uint32_t)world;
    h->slot_bytes = slot_bytes;
    h->magic = SHM_MAGIC;
    munmap(h, hb);
    return 0;
}

/* ---------------------------------------------------------------- barrier with a deadline */

static int barrier(cpu_comm *c, mg_err *err)
{
    shm_hdr *h = c->h;
    shm_bar *b = c->bar;
    unsigned g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == (unsigned)c->base.world - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1);
        return 0;
    }
    double deadline = mg_dist_now() + c->base.timeout_s;
    for (long spin = 0; atomic_load(&b->gen) == g; spin++) {
        /* An abort seen after the generation moved on came after this barrier completed (the
         * others left it, went on and gave up later, while this rank was descheduled between
         * its two loads): the barrier holds, and the abort is for the next collective to see. */
        if (atomic_load(&h->aborted) && atomic_load(&b->gen) == g)
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

/* Segment rank of member r. */
static int seg_rank(const cpu_comm *c, int r) { return c->members ? c->members[r] : r; }
static unsigned char *slot_of(cpu_comm *c, int r) { return c->slots + (size_t)seg_rank(c, r) * c->slot; }

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
    size_t SW = (size_t)c->seg_world;
#define COUNT(src, dst) c->counts[(size_t)seg_rank(c, src) * SW + (size_t)seg_rank(c, dst)]
    for (int j = 0; j < W; j++) COUNT(me, j) = send_counts[j];
    if (barrier(c, err)) return MG_EUSER;
    size_t total = 0, rounds = 0;
    for (int j = 0; j < W; j++) {
        recv_counts[j] = (size_t)COUNT(j, me);
        total += recv_counts[j];
    }
    for (int i = 0; i < W; i++)
        for (int j = 0; j < W; j++) {
            size_t r = ((size_t)COUNT(i, j) + chunk - 1) / chunk;
            if (r > rounds) rounds = r;
        }
#undef COUNT
    c->status[seg_rank(c, me)] = total <= recv_cap;
    if (barrier(c, err)) return MG_EUSER;
    int over = -1;
    for (int j = 0; j < W && over < 0; j++)
        if (!c->status[seg_rank(c, j)]) over = j;
    /* Every member writes its verdict in each of its groups: leaving now, a member could write
     * its next one (another group's exchange) before a slow peer here has read this one. The
     * first round's barrier covers that read; without rounds this one does. */
    if ((over >= 0 || rounds == 0) && barrier(c, err)) return MG_EUSER;
    if (over >= 0)
        return mg_err_set(err, MG_EUSER, "comm: all-to-all-v: rank %d receives more than its capacity%s", over,
                          over == me ? "" : " (reported by that rank)");
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
    if (!c->members) munmap(c->map, c->map_bytes);   /* a split view shares its parent's mapping */
    free(c->members);
    free(c);
}

static int cpu_split(mg_comm *b, int color, int key, mg_comm **out, mg_err *err);

static const mg_comm_ops cpu_ops = {.all_reduce = cpu_all_reduce, .reduce_scatter = cpu_reduce_scatter,
                                    .all_gather = cpu_all_gather, .all_to_all_v = cpu_all_to_all_v,
                                    .abort = cpu_abort, .close = cpu_close, .split = cpu_split};

/* Every member learns everyone's (color, key); a group's barrier is split_bars[n_splits·world +
 * its lowest segment rank], so groups of one split, and of different splits, never share one.
 * The view borrows the parent's mapping: close it before the parent. */
static int cpu_split(mg_comm *b, int color, int key, mg_comm **out, mg_err *err)
{
    cpu_comm *c = (cpu_comm *)b;
    int W = b->world, SW = c->seg_world;
    *out = NULL;
    if (c->members) return mg_err_set(err, MG_EUSER, "comm cpu: a split communicator cannot be split again");
    if (c->n_splits >= MAX_SPLITS)
        return mg_err_set(err, MG_EUSER, "comm cpu: more than %d splits of one communicator", MAX_SPLITS);
    int32_t mine[2] = {color, key}, *all = malloc(sizeof(int32_t) * 2 * (size_t)W);
    if (!all) return mg_err_set(err, MG_EINTERNAL, "comm cpu: out of memory");
    int rc = cpu_all_gather(b, mine, all, 8, MG_COMM_BYTE, err);
    int split_no = c->n_splits++;
    if (rc || color < 0) {
        free(all);
        return rc;
    }
    cpu_comm *s = calloc(1, sizeof *s);
    int *mem = malloc(sizeof(int) * (size_t)W), n = 0, me = -1;
    if (!s || !mem) {
        free(all), free(s), free(mem);
        return mg_err_set(err, MG_EINTERNAL, "comm cpu: out of memory");
    }
    /* members ordered by (key, rank in c): insertion sort over the ranks of this color */
    for (int r = 0; r < W; r++) {
        if (all[2 * r] != color) continue;
        int j = n++;
        while (j > 0 && all[2 * mem[j - 1] + 1] > all[2 * r + 1]) mem[j] = mem[j - 1], j--;
        mem[j] = r;
    }
    int lowest = SW;
    for (int j = 0; j < n; j++) {
        if (mem[j] == b->rank) me = j;
        mem[j] = seg_rank(c, mem[j]);
        if (mem[j] < lowest) lowest = mem[j];
    }
    free(all);
    *s = *c;
    s->base.rank = me;
    s->base.world = n;
    s->members = mem;
    s->n_splits = 0;
    s->bar = &c->split_bars[(size_t)split_no * (size_t)SW + (size_t)lowest];
    *out = &s->base;
    return 0;
}

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
    c->split_bars = (shm_bar *)(c->status + world);
    c->slots = c->map + hdr_bytes(world);
    c->bar = &c->h->bar;
    c->seg_world = world;
    return &c->base;
}
