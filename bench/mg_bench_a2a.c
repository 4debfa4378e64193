/* mg_bench_a2a: the EP all-to-all (mg_comm_all_to_all_v, NCCL backend) against NCCL's own grouped
 * ncclSend/ncclRecv all-to-all, same bytes, same GPUs (issue 6: ours must reach >= 70%).
 *
 * One process per GPU, as everywhere in moegen (one process driving several GPUs through NCCL gave
 * wrong sums on our machines, and mg_comm_nccl is written for one rank per process). The parent
 * makes both ids (mg_comm_nccl_unique_id, ncclGetUniqueId), starts G workers with
 * fork + execv("/proc/self/exe", .. --rank r ..) (a fresh process: the forked copy of a process
 * that initialized CUDA cannot use CUDA), collects each worker's per-size medians over a pipe,
 * watches them (a rank that dies or hangs past --timeout ends the run, naming the rank), and
 * prints the table. Worker r runs on device r with two communicators: mg_comm_nccl_open (what the
 * trainer uses) and a plain blocking ncclCommInitRank. Every rank sends `bytes` in total, bytes/G
 * to each rank (itself included, as the EP dispatch does). Before every iteration the ranks meet
 * (a 1-element ncclAllReduce on the plain communicator + stream sync, not timed); each iteration
 * is timed on the host from enqueue to completion, the way the trainer sees it:
 *   nccl  ncclGroupStart; ncclSend + ncclRecv per peer; ncclGroupEnd; cudaStreamSynchronize
 *   mg    mg_comm_all_to_all_v (count exchange, then the same grouped send/recv, then the wait)
 *   mgk   mg_comm_all_to_all_vk: the receive counts known, no count exchange: what the EP layer
 *         calls for its dispatch and return (its per-layer count all-gather tells every rank)
 *   nb    the nccl kind on a non-blocking communicator (ncclCommSplit of the plain one with
 *         config.blocking = 0, as mg_comm_nccl makes its own): poll ncclCommGetAsyncError until
 *         the group is enqueued, then cudaStreamSynchronize. Diagnostic: nccl vs nb is the cost
 *         of the communicator mode, nb vs mgk the cost of mg_comm's wait loop
 * after a warm-up; the median of --iters, and per size the slowest rank's median. Bandwidth =
 * bytes that leave the GPU / time (bytes·(G−1)/G), the same formula for both; ratio = mg / nccl.
 * After each kind and size every rank checks that block p of its receive buffer holds rank p's
 * fill byte (p + 1) throughout.
 *
 * Usage: mg_bench_a2a [--gpus G] [--iters N] [--sizes MiB,...] [--judge MiB] [--timeout S]
 *        (default 2, 50, 1,4,16,64, 8, 100 s for the whole run)
 * Prints one line per size and `a2a: worst ratio R at S MiB over sizes >= J MiB (need >= 0.70): PASS|FAIL`
 * for the EP's exchange (mgk / nccl), with the generic call's ratio (mg / nccl) beside it;
 * exit 0 PASS, 3 FAIL, 1 on an error (a rank failed: its messages start with "rank r:").
 * Sizes below --judge are shown, not judged: ours pays a fixed count exchange (an all-gather, a
 * device-to-host copy) per call that a 1 MiB transfer cannot hide; the EP exchanges of wt2-moe8 at
 * ep = 2 move 16 MiB (bf16 rows out) and 32 MiB (fp32 rows back) per rank.
 * With fewer than G devices it prints "skipped: ..." and exits 0. */

/* ---- includes ---------------------------------------------------------------------------- */
#include "mg_comm.h"   /* mg_comm_nccl_unique_id, mg_comm_nccl_open, mg_comm_all_to_all_v */
#include "mg_cuda.h"   /* mg_cuda_device_count */
#include "mg_bench_timer.h"   /* mg_bench_median */

#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <nccl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_GPUS 8
#define MAX_SIZES 16
#define WARMUP 10

/* ---- options (the parent's, passed on to every worker) ----------------------------------- */
typedef struct opts {
    int G, iters, n_sizes;
    double sizes_mib[MAX_SIZES], judge, timeout_s;
    const char *sizes;   /* as given, passed to the workers */
    /* worker only */
    int rank, fd;
    const char *id_mg_hex, *id_nccl_hex;
} opts;

static void usage(void)
{
    fprintf(stderr, "usage: mg_bench_a2a [--gpus G] [--iters N] [--sizes MiB,MiB,...] [--judge MiB] [--timeout S]\n");
    exit(1);
}

static double num(const char *s, const char *flag)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "mg_bench_a2a: %s %s: not a number\n", flag, s);
        usage();
    }
    return v;
}

static opts parse(int argc, char **argv)
{
    opts o = {.G = 2, .iters = 50, .judge = 8, .timeout_s = 100, .sizes = "1,4,16,64", .rank = -1, .fd = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--gpus")) o.G = (int)num(v, a);
        else if (!strcmp(a, "--iters")) o.iters = (int)num(v, a);
        else if (!strcmp(a, "--sizes")) o.sizes = v;
        else if (!strcmp(a, "--judge")) o.judge = num(v, a);
        else if (!strcmp(a, "--timeout")) o.timeout_s = num(v, a);
        else if (!strcmp(a, "--rank")) o.rank = (int)num(v, a);        /* the workers' own flags */
        else if (!strcmp(a, "--fd")) o.fd = (int)num(v, a);
        else if (!strcmp(a, "--id-mg")) o.id_mg_hex = v;
        else if (!strcmp(a, "--id-nccl")) o.id_nccl_hex = v;
        else usage();
        i++;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", o.sizes);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o.n_sizes == MAX_SIZES) {
            fprintf(stderr, "mg_bench_a2a: --sizes: at most %d sizes\n", MAX_SIZES);
            usage();
        }
        double mib = num(t, "--sizes");
        if (!(mib * 1048576 >= 4.0 * MAX_GPUS) || mib > 4096) {
            fprintf(stderr, "mg_bench_a2a: --sizes %s: must be in (0, 4096] MiB\n", t);
            usage();
        }
        o.sizes_mib[o.n_sizes++] = mib;
    }
    if (!o.n_sizes || o.iters < 1 || !(o.timeout_s > 0)) usage();
    return o;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- worker: one rank on device `rank` ---------------------------------------------------- */
static int g_rank = -1;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rank %d: ", g_rank);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

#define cuda_check(call)                                                                               \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) die("%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call, cudaGetErrorString(e_), \
                                   cudaGetErrorName(e_));                                              \
    } while (0)
#define nccl_check(call)                                                                               \
    do {                                                                                               \
        ncclResult_t r_ = (call);                                                                      \
        if (r_ != ncclSuccess) die("%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call, ncclGetErrorString(r_), \
                                   ncclGetLastError(NULL));                                            \
    } while (0)

static void hex_decode(const char *hex, unsigned char out[128], const char *what)
{
    if (!hex || strlen(hex) != 256) die("%s: want 256 hex digits", what);
    for (int i = 0; i < 128; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) die("%s: bad hex at %d", what, 2 * i);
        out[i] = (unsigned char)v;
    }
}

static void nccl_a2a(ncclComm_t nc, cudaStream_t st, const char *s, char *r, size_t chunk, int G)
{
    nccl_check(ncclGroupStart());
    for (int p = 0; p < G; p++) {
        nccl_check(ncclSend(s + (size_t)p * chunk, chunk, ncclUint8, p, nc, st));
        nccl_check(ncclRecv(r + (size_t)p * chunk, chunk, ncclUint8, p, nc, st));
    }
    nccl_check(ncclGroupEnd());
    cuda_check(cudaStreamSynchronize(st));
}

/* The same on a non-blocking communicator: the group may still be enqueueing on return. */
static void nb_a2a(ncclComm_t nc, cudaStream_t st, const char *s, char *r, size_t chunk, int G)
{
    ncclResult_t g = ncclGroupStart();
    for (int p = 0; p < G && (g == ncclSuccess || g == ncclInProgress); p++) {
        g = ncclSend(s + (size_t)p * chunk, chunk, ncclUint8, p, nc, st);
        if (g == ncclSuccess || g == ncclInProgress) g = ncclRecv(r + (size_t)p * chunk, chunk, ncclUint8, p, nc, st);
    }
    ncclResult_t e = ncclGroupEnd();
    if (g != ncclSuccess && g != ncclInProgress) nccl_check(g);
    while (e == ncclInProgress) ncclCommGetAsyncError(nc, &e);
    nccl_check(e);
    cuda_check(cudaStreamSynchronize(st));
}

/* Every rank leaves together: a 1-element all-reduce on the plain communicator, then a sync. */
static void barrier(ncclComm_t nc, cudaStream_t st, float *d_one)
{
    nccl_check(ncclAllReduce(d_one, d_one, 1, ncclFloat32, ncclSum, nc, st));
    cuda_check(cudaStreamSynchronize(st));
}

/* Block p of r (chunk bytes) must hold p + 1 in every byte. */
static void check_blocks(const char *r, size_t chunk, int G, unsigned char *host, cudaStream_t st, const char *kind,
                         double mib)
{
    cuda_check(cudaStreamSynchronize(st));
    cuda_check(cudaMemcpy(host, r, chunk * (size_t)G, cudaMemcpyDeviceToHost));
    for (int p = 0; p < G; p++)
        for (size_t k = 0; k < chunk; k++)
            if (host[(size_t)p * chunk + k] != p + 1)
                die("%s all-to-all, %.1f MiB: the block from rank %d holds %d at byte %zu, want %d", kind, mib, p,
                    host[(size_t)p * chunk + k], k, p + 1);
}

static int worker(const opts *o)
{
    int me = o->rank, G = o->G;
    g_rank = me;
    if (me < 0 || me >= G || G > MAX_GPUS || o->fd < 0) die("bad worker arguments");
    unsigned char id_mg[128];
    ncclUniqueId id_nccl;
    hex_decode(o->id_mg_hex, id_mg, "--id-mg");
    hex_decode(o->id_nccl_hex, (unsigned char *)id_nccl.internal, "--id-nccl");

    cuda_check(cudaSetDevice(me));
    cudaStream_t st;
    cuda_check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    ncclComm_t nc;
    nccl_check(ncclCommInitRank(&nc, G, id_nccl, me));
    ncclComm_t nb = NULL;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t sr = ncclCommSplit(nc, 0, me, &nb, &cfg);
    if ((sr == ncclSuccess || sr == ncclInProgress) && nb)
        do ncclCommGetAsyncError(nb, &sr); while (sr == ncclInProgress);
    nccl_check(sr);
    if (!nb) die("ncclCommSplit gave no communicator");
    mg_err err;
    mg_err_clear(&err);
    mg_comm *c = mg_comm_nccl_open(id_mg, me, G, st, o->timeout_s, &err);
    if (!c) die("mg_comm_nccl_open: %s", err.msg);

    size_t maxb = 0;
    for (int i = 0; i < o->n_sizes; i++)
        if ((size_t)(o->sizes_mib[i] * 1048576) > maxb) maxb = (size_t)(o->sizes_mib[i] * 1048576);
    char *s, *r;
    float *d_one;
    cuda_check(cudaMalloc((void **)&s, maxb + 256));
    cuda_check(cudaMalloc((void **)&r, maxb + 256));
    cuda_check(cudaMalloc((void **)&d_one, sizeof *d_one));
    cuda_check(cudaMemset(s, me + 1, maxb));
    cuda_check(cudaMemset(d_one, 0, sizeof *d_one));
    cuda_check(cudaDeviceSynchronize());   /* cudaMemset runs on the legacy stream; st does not wait for it */
    float *t = malloc(sizeof(float) * (size_t)o->iters);   /* ms */
    unsigned char *host = malloc(maxb);
    if (!t || !host) die("out of host memory (%zu bytes)", maxb);

    static const char *const kinds[4] = {"nccl", "mg", "mgk", "nb"};
    for (int i = 0; i < o->n_sizes; i++) {
        size_t chunk = (size_t)(o->sizes_mib[i] * 1048576) / (size_t)G / 4 * 4;   /* whole floats per peer */
        size_t counts[MAX_GPUS], got[MAX_GPUS];
        for (int p = 0; p < G; p++) counts[p] = chunk / 4;
        double ms[4];
        size_t want[MAX_GPUS];
        for (int p = 0; p < G; p++) want[p] = chunk / 4;
        for (int kind = 0; kind < 4; kind++) {
            cuda_check(cudaMemsetAsync(r, 0, chunk * (size_t)G, st));   /* so the check sees this kind's data */
            for (int it = -WARMUP; it < o->iters; it++) {
                barrier(nc, st, d_one);
                double t0 = now_s();
                if (kind == 0) nccl_a2a(nc, st, s, r, chunk, G);
                else if (kind == 3) nb_a2a(nb, st, s, r, chunk, G);
                else if (kind == 1 && mg_comm_all_to_all_v(c, s, counts, r, got, chunk / 4 * (size_t)G, MG_COMM_F32, &err))
                    die("mg_comm_all_to_all_v, %.1f MiB: %s", o->sizes_mib[i], err.msg);
                else if (kind == 2 && mg_comm_all_to_all_vk(c, s, counts, r, want, MG_COMM_F32, &err))
                    die("mg_comm_all_to_all_vk, %.1f MiB: %s", o->sizes_mib[i], err.msg);
                if (it >= 0) t[it] = (float)((now_s() - t0) * 1e3);
            }
            ms[kind] = mg_bench_median(t, o->iters);
            check_blocks(r, chunk, G, host, st, kinds[kind], o->sizes_mib[i]);
            for (int p = 0; kind == 1 && p < G; p++)
                if (got[p] != chunk / 4)
                    die("mg all-to-all, %.1f MiB: %zu elements from rank %d, want %zu", o->sizes_mib[i], got[p], p,
                        chunk / 4);
        }
        /* one line per size: index, then the nccl and mg medians in ms (%a: exact) */
        if (dprintf(o->fd, "R %d %a %a %a %a\n", i, ms[0], ms[1], ms[2], ms[3]) < 0) die("cannot report to the parent: %s", strerror(errno));
    }
    if (dprintf(o->fd, "done\n") < 0) die("cannot report to the parent: %s", strerror(errno));
    close(o->fd);
    free(t);
    free(host);
    mg_comm_close(c);
    ncclResult_t fr = ncclCommFinalize(nb);   /* non-blocking: finished before it may be destroyed */
    while (fr == ncclInProgress) ncclCommGetAsyncError(nb, &fr);
    ncclCommDestroy(nb);
    nccl_check(ncclCommDestroy(nc));
    cudaFree(s);
    cudaFree(r);
    cudaFree(d_one);
    cudaStreamDestroy(st);
    return 0;
}

/* ---- parent: start the workers, watch them, print the table ------------------------------ */
typedef struct child {
    pid_t pid;
    int fd;            /* read end of its result pipe; -1 after EOF */
    int exited, status;
    char buf[4096];
    size_t len;
} child;

static volatile sig_atomic_t g_stop;
static void on_stop(int sig) { g_stop = sig; }

static void hex_encode(const unsigned char in[128], char out[257])
{
    for (int i = 0; i < 128; i++) snprintf(out + 2 * i, 3, "%02x", in[i]);
}

static void describe(int st, char *buf, size_t n)
{
    if (WIFSIGNALED(st)) snprintf(buf, n, "died on signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, n, "exited with status %d", WEXITSTATUS(st));
}

static void kill_all(child *ch, int G)
{
    for (int r = 0; r < G; r++)
        if (ch[r].pid > 0 && !ch[r].exited) kill(ch[r].pid, SIGKILL);
    double until = now_s() + 10;   /* a process stuck in the driver may take a moment to go */
    for (int r = 0; r < G; r++)
        while (ch[r].pid > 0 && !ch[r].exited) {
            pid_t w = waitpid(ch[r].pid, &ch[r].status, WNOHANG);
            if (w == ch[r].pid || (w < 0 && errno != EINTR)) ch[r].exited = 1;
            else if (now_s() > until) break;
            else usleep(10000);
        }
}

/* fork + exec one worker; its result pipe's write end (passed as argv[fd_slot]) is the only fd
 * it inherits beyond 0-2. */
static int spawn(child *ch, char **argv, int fd_slot, char *fd_str, size_t fd_len)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC)) return -1;
    snprintf(fd_str, fd_len, "%d", p[1]);
    argv[fd_slot] = fd_str;
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) {
        close(p[0]), close(p[1]);
        return -1;
    }
    if (pid == 0) {   /* only async-signal-safe calls until exec */
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* the parent killed by `timeout` takes the workers along */
        if (getppid() != parent) _exit(127);
        fcntl(p[1], F_SETFD, 0);
        execv("/proc/self/exe", argv);
        static const char msg[] = "mg_bench_a2a: execv /proc/self/exe failed\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    close(p[1]);
    ch->pid = pid, ch->fd = p[0];
    return 0;
}

/* Reads what the workers have written and reaps those that exited; 0 while all is well.
 * On a failure writes the reason to why. */
static int watch(child *ch, int G, double deadline, double timeout_s, char *why, size_t n)
{
    for (;;) {
        int live = 0;
        for (int r = 0; r < G; r++) live += !ch[r].exited || ch[r].fd >= 0;
        if (!live) return 0;
        if (g_stop) {
            snprintf(why, n, "interrupted by signal %d (%s); workers killed", (int)g_stop, strsignal(g_stop));
            return -1;
        }
        if (now_s() > deadline) {
            int k = 0;
            k += snprintf(why + k, n - (size_t)k, "did not finish within %.0f s (--timeout):", timeout_s);
            for (int r = 0; r < G && (size_t)k < n; r++)
                if (!ch[r].exited) {
                    int sizes = 0;
                    for (size_t i = 0; i < ch[r].len; i++) sizes += ch[r].buf[i] == 'R';
                    k += snprintf(why + k, n - (size_t)k, " rank %d still running (%d size(s) reported);", r, sizes);
                }
            if ((size_t)k < n) snprintf(why + k, n - (size_t)k, " workers killed");
            return -1;
        }
        struct pollfd pf[MAX_GPUS];
        int np = 0, who[MAX_GPUS];
        for (int r = 0; r < G; r++)
            if (ch[r].fd >= 0) pf[np] = (struct pollfd){.fd = ch[r].fd, .events = POLLIN}, who[np++] = r;
        if (np) poll(pf, (nfds_t)np, 100);
        else usleep(20000);
        for (int i = 0; i < np; i++) {
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            child *c = &ch[who[i]];
            ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
            if (got > 0) c->len += (size_t)got;
            else if (got == 0 || errno != EINTR) close(c->fd), c->fd = -1;
        }
        /* every rank found dead in this pass is named: the first to die is usually the cause,
         * the others failed in NCCL because it went */
        size_t k = 0;
        for (int r = 0; r < G; r++) {
            if (ch[r].exited) continue;
            pid_t w = waitpid(ch[r].pid, &ch[r].status, WNOHANG);
            if (w != ch[r].pid) continue;
            ch[r].exited = 1;
            if (WIFEXITED(ch[r].status) && !WEXITSTATUS(ch[r].status)) continue;
            char d[96];
            describe(ch[r].status, d, sizeof d);
            if (k < n) k += (size_t)snprintf(why + k, n - k, "%srank %d (pid %d) %s", k ? "; " : "", r, (int)ch[r].pid, d);
        }
        if (k) {
            if (k < n) snprintf(why + k, n - k, "; the other ranks were killed");
            return -1;
        }
    }
}

static int parent(const opts *o, char **argv0)
{
    unsigned char id_mg[128];
    ncclUniqueId id_nccl;
    mg_err err;
    mg_err_clear(&err);
    if (mg_comm_nccl_unique_id(id_mg, &err)) return fprintf(stderr, "mg_bench_a2a: %s\n", err.msg), 1;
    ncclResult_t nr = ncclGetUniqueId(&id_nccl);
    if (nr != ncclSuccess) return fprintf(stderr, "mg_bench_a2a: ncclGetUniqueId: %s\n", ncclGetErrorString(nr)), 1;
    char hex_mg[257], hex_nccl[257], G_s[16], iters_s[16], judge_s[32], timeout_s[32], rank_s[MAX_GPUS][16],
        fd_s[MAX_GPUS][16];
    hex_encode(id_mg, hex_mg);
    hex_encode((const unsigned char *)id_nccl.internal, hex_nccl);
    snprintf(G_s, sizeof G_s, "%d", o->G);
    snprintf(iters_s, sizeof iters_s, "%d", o->iters);
    snprintf(judge_s, sizeof judge_s, "%.17g", o->judge);
    snprintf(timeout_s, sizeof timeout_s, "%.17g", o->timeout_s);

    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    child ch[MAX_GPUS];
    memset(ch, 0, sizeof ch);
    for (int r = 0; r < MAX_GPUS; r++) ch[r].fd = -1;
    double deadline = now_s() + o->timeout_s;
    int failed = 0;
    char why[1024] = "";
    for (int r = 0; r < o->G && !failed; r++) {
        snprintf(rank_s[r], sizeof rank_s[r], "%d", r);
        char *argv[] = {argv0[0], "--gpus", G_s, "--iters", iters_s, "--sizes", (char *)o->sizes, "--judge", judge_s,
                        "--timeout", timeout_s, "--rank", rank_s[r], "--id-mg", hex_mg, "--id-nccl", hex_nccl,
                        "--fd", NULL, NULL};
        int fd_slot = (int)(sizeof argv / sizeof argv[0]) - 2;
        if (spawn(&ch[r], argv, fd_slot, fd_s[r], sizeof fd_s[r])) {
            snprintf(why, sizeof why, "cannot start rank %d: %s", r, strerror(errno));
            failed = 1;
        }
    }
    if (!failed) failed = watch(ch, o->G, deadline, o->timeout_s, why, sizeof why) != 0;
    kill_all(ch, o->G);
    for (int r = 0; r < o->G; r++)
        if (ch[r].fd >= 0) close(ch[r].fd);
    if (failed) return fprintf(stderr, "mg_bench_a2a: %s\n", why), 1;

    /* the results: per size, the slowest rank's median */
    double ms[4][MAX_SIZES] = {{0}};
    for (int r = 0; r < o->G; r++) {
        int seen = 0, done = 0;
        ch[r].buf[ch[r].len] = 0;
        for (char *save = NULL, *l = strtok_r(ch[r].buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            int i;
            double tn, tm, tk, tb;
            if (!strcmp(l, "done")) done = 1;
            else if (sscanf(l, "R %d %la %la %la %la", &i, &tn, &tm, &tk, &tb) == 5 && i == seen && i < o->n_sizes) {
                if (tb > ms[3][i]) ms[3][i] = tb;
                if (tn > ms[0][i]) ms[0][i] = tn;
                if (tm > ms[1][i]) ms[1][i] = tm;
                if (tk > ms[2][i]) ms[2][i] = tk;
                seen++;
            }
        }
        if (!done || seen != o->n_sizes)
            return fprintf(stderr, "mg_bench_a2a: rank %d exited 0 but reported %d of %d sizes%s\n", r, seen,
                           o->n_sizes, done ? "" : " and no end marker"), 1;
    }

    printf("all-to-all over %d GPUs, %d timed iterations (median of the slowest rank), host-timed to completion\n",
           o->G, o->iters);
    printf("(mg: with the count exchange; mgk: counts known, the EP layer's dispatch and return)\n");
    printf("%10s %10s %10s %10s %10s %8s %10s %10s %8s %10s\n", "MiB/rank", "nccl ms", "nccl GB/s", "mg ms", "mg GB/s",
           "mg/nccl", "mgk ms", "mgk GB/s", "mgk/nccl", "nb ms");
    double worst = 1e9, worst_at = 0;
    for (int i = 0; i < o->n_sizes; i++) {
        double tn = ms[0][i], tm = ms[1][i], tk = ms[2][i];
        double out = o->sizes_mib[i] * 1048576 * (o->G - 1) / o->G;
        double bn = out / tn / 1e6, bm = out / tm / 1e6, bk = out / tk / 1e6;
        printf("%10.1f %10.4f %10.1f %10.4f %10.1f %8.3f %10.4f %10.1f %8.3f %10.4f\n", o->sizes_mib[i], tn, bn, tm, bm,
               bm / bn, tk, bk, bk / bn, ms[3][i]);
        if (o->sizes_mib[i] >= o->judge && bk / bn < worst) worst = bk / bn, worst_at = o->sizes_mib[i];
    }
    printf("a2a: worst ratio %.3f at %.1f MiB over sizes >= %.0f MiB (need >= 0.70): %s\n", worst, worst_at, o->judge,
           worst >= 0.70 ? "PASS" : "FAIL");
    return worst >= 0.70 ? 0 : 3;
}

int main(int argc, char **argv)
{
    /* Before anything else, while this process has one thread: no NVLink multicast for either
     * communicator unless the environment asks for it (the project's rule). The workers inherit it
     * through exec; NCCL reads it once per process, so mg_comm_nccl_open's own default would come
     * too late for the plain communicator that each worker makes first. */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    opts o = parse(argc, argv);
    if (o.rank >= 0) return worker(&o);

    char why[256] = "";
    int have = mg_cuda_device_count(why, sizeof why);   /* CUDA in the parent is fine: the workers exec */
    if (o.G < 2 || o.G > MAX_GPUS || have < o.G) {
        printf("skipped: %d CUDA device(s) here, --gpus %d wanted%s%s\n", have, o.G, *why ? ": " : "", why);
        return 0;
    }
    return parent(&o, argv);
}
