/* mg_dist: rank discovery, id rendezvous (file, tcp, launcher), the local launcher + watchdog,
 * and the worker heartbeat. See runtime/DISTRIBUTED.md. */
#include "mg_dist.h"
#include "mg_comm.h"   /* the CPU comm's shared segment, made before the fork */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double mg_dist_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void nap_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* ================================================================ rank discovery */

/* Parses an integer variable: 1 set and valid, 0 unset, -1 error (err set). */
static int env_int(const char *name, int lo, int *out, mg_err *err)
{
    const char *v = getenv(name);
    if (!v) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > 1 << 30) {
        mg_err_set(err, MG_EUSER, "dist: %s = '%s': must be an integer >= %d", name, v, lo);
        return -1;
    }
    *out = (int)x;
    return 1;
}

typedef struct { const char *source, *rank, *world, *local; } env_family;

static const env_family families[] = {
    {"moegen", "MOEGEN_RANK", "MOEGEN_WORLD", "MOEGEN_LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

int mg_dist_env_detect(mg_dist_env *e, mg_err *err)
{
    *e = (mg_dist_env){0, 1, 0, "none"};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        const env_family *f = &families[i];
        /* a batch script itself also carries SLURM_PROCID=0 and the allocation's SLURM_NTASKS; only
         * srun's tasks (which have a step id) are ranks of a step */
        if (!strcmp(f->source, "slurm") && !getenv("SLURM_STEP_ID") && !getenv("SLURM_STEPID")) continue;
        int rank = 0, world = 0, local = -1;
        int hr = env_int(f->rank, 0, &rank, err), hw = env_int(f->world, 1, &world, err);
        if (hr < 0 || hw < 0) return MG_EUSER;
        if (!hr && !hw) continue;
        if (!hr || !hw)
            return mg_err_set(err, MG_EUSER, "dist: %s is set but %s is not (%s launcher variables)",
                              hr ? f->rank : f->world, hr ? f->world : f->rank, f->source);
        if (rank >= world)
            return mg_err_set(err, MG_EUSER, "dist: %s = %d: must be below %s = %d", f->rank, rank, f->world, world);
        int hl = env_int(f->local, 0, &local, err);
        if (hl < 0) return MG_EUSER;
        if (hl && local >= world)
            return mg_err_set(err, MG_EUSER, "dist: %s = %d: must be below %s = %d", f->local, local, f->world, world);
        if (!hl) local = world == 1 ? 0 : -1;
        *e = (mg_dist_env){rank, world, local, f->source};
        return 0;
    }
    return 0;
}

/* ================================================================ byte I/O with deadlines */

/* Waits until fd is ready for events or the deadline passes: 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - mg_dist_now();
        if (left <= 0) return 0;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -1;
    }
}

/* Reads exactly n bytes by the deadline: 0 ok, -1 EOF/error, -2 timeout. */
static int read_full(int fd, void *buf, size_t n, double deadline)
{
    unsigned char *p = buf;
    while (n) {
        int w = wait_fd(fd, POLLIN, deadline);
        if (w == 0) return -2;
        if (w < 0) return -1;
        ssize_t r = read(fd, p, n);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK) r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* ================================================================ rendezvous: file */

/* File layout: "MGID" magic, world (u32 LE), then the id. */
#define RV_MAGIC "MGID"
#define RV_HDR 8

static void rv_pack(unsigned char *buf, int world, const unsigned char *id)
{
    memcpy(buf, RV_MAGIC, 4);
    uint32_t w = (uint32_t)world;
    for (int i = 0; i < 4; i++) buf[4 + i] = (unsigned char)(w >> (8 * i));
    memcpy(buf + RV_HDR, id, MG_DIST_ID_BYTES);
}

static int rv_world(const unsigned char *buf)
{
    if (memcmp(buf, RV_MAGIC, 4)) return -1;
    return (int)(buf[4] | buf[5] << 8 | buf[6] << 16 | (uint32_t)buf[7] << 24);
}

static int rv_file(const char *path, int rank, int world, unsigned char *id, double timeout_s, mg_err *err)
{
    unsigned char buf[RV_HDR + MG_DIST_ID_BYTES];
    if (rank == 0) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
        rv_pack(buf, world, id);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write_full(fd, buf, sizeof buf) || fsync(fd) || close(fd) || rename(tmp, path)) {
            int e = errno;
            if (fd >= 0) unlink(tmp);
            return mg_err_set(err, MG_EUSER, "rendezvous file:%s: cannot write: %s", path, strerror(e));
        }
        return 0;
    }
    double deadline = mg_dist_now() + timeout_s;
    for (int ms = 10;; ms = ms < 200 ? ms * 2 : 200) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf);
            close(fd);
            if (n == (ssize_t)sizeof buf) {
                int w = rv_world(buf);
                if (w != world)
                    return mg_err_set(err, MG_EUSER, "rendezvous file:%s: written for world %d, this job has %d "
                                      "(a stale file from another job? use a fresh path per job)", path, w, world);
                memcpy(id, buf + RV_HDR, MG_DIST_ID_BYTES);
                return 0;
            }
        }
        if (mg_dist_now() >= deadline)
            return mg_err_set(err, MG_EUSER, "rendezvous file:%s: rank %d got no id from rank 0 within %.0f s "
                              "(is rank 0 running, and is the path on a filesystem every rank shares?)",
                              path, rank, timeout_s);
        nap_ms(ms);
    }
}

/* ================================================================ rendezvous: tcp */

static int tcp_addr(const char *hostport, struct sockaddr_storage *sa, socklen_t *len, mg_err *err)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || !colon[1] || (size_t)(colon - hostport) >= sizeof host)
        return mg_err_set(err, MG_EUSER, "rendezvous tcp:%s: expected tcp:HOST:PORT", hostport);
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc || !res)
        return mg_err_set(err, MG_EUSER, "rendezvous tcp:%s: %s", hostport, gai_strerror(rc));
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Client hello: "MGRV", rank, world (u32 LE each); the server answers with the packed id. */
static int rv_tcp_serve(const char *hp, int world, const unsigned char *id, double timeout_s, mg_err *err)
{
    struct sockaddr_storage sa;
    socklen_t len;
    if (tcp_addr(hp, &sa, &len, err)) return MG_EUSER;
    int ls = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (ls < 0) return mg_err_set(err, MG_EINTERNAL, "rendezvous tcp:%s: socket: %s", hp, strerror(errno));
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, len) || listen(ls, world)) {
        int e = errno;
        close(ls);
        return mg_err_set(err, MG_EUSER, "rendezvous tcp:%s: cannot listen: %s", hp, strerror(e));
    }
    unsigned char out[RV_HDR + MG_DIST_ID_BYTES];
    rv_pack(out, world, id);
    double deadline = mg_dist_now() + timeout_s;
    int served = 0, rc = 0;
    while (served < world - 1) {
        int w = wait_fd(ls, POLLIN, deadline);
        if (w <= 0) {
            rc = mg_err_set(err, MG_EUSER, "rendezvous tcp:%s: rank 0 served %d of %d ranks within %.0f s "
                            "(are the others running, and can they reach this address?)", hp, served, world - 1,
                            timeout_s);
            break;
        }
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        unsigned char hello[12];
        if (read_full(c, hello, sizeof hello, mg_dist_now() + 5.0) == 0 && !memcmp(hello, "MGRV", 4)) {
            int cw = (int)(hello[8] | hello[9] << 8 | hello[10] << 16 | (uint32_t)hello[11] << 24);
            if (cw == world && write_full(c, out, sizeof out) == 0) served++;
        }
        close(c);   /* a client of another job or size gets nothing and times out with its own error */
    }
    close(ls);
    return rc;
}

static int rv_tcp_fetch(const char *hp, int rank, int world, unsigned char *id, double timeout_s, mg_err *err)
{
    struct sockaddr_storage sa;
    socklen_t len;
    if (tcp_addr(hp, &sa, &len, err)) return MG_EUSER;
    double deadline = mg_dist_now() + timeout_s;
    unsigned char hello[12], in[RV_HDR + MG_DIST_ID_BYTES];
    memcpy(hello, "MGRV", 4);
    for (int i = 0; i < 4; i++) {
        hello[4 + i] = (unsigned char)((uint32_t)rank >> (8 * i));
        hello[8 + i] = (unsigned char)((uint32_t)world >> (8 * i));
    }
    const char *why = "connection refused";
    for (int ms = 10; mg_dist_now() < deadline; ms = ms < 200 ? ms * 2 : 200) {
        int s = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) return mg_err_set(err, MG_EINTERNAL, "rendezvous tcp:%s: socket: %s", hp, strerror(errno));
        if (connect(s, (struct sockaddr *)&sa, len) == 0) {
            int r = write_full(s, hello, sizeof hello) ? -1 : read_full(s, in, sizeof in, deadline);
            close(s);
            if (r == 0 && rv_world(in) == world) {
                memcpy(id, in + RV_HDR, MG_DIST_ID_BYTES);
                return 0;
            }
            why = r == -2 ? "rank 0 accepted but sent nothing" : "rank 0 closed the connection (world mismatch?)";
        } else {
            close(s);
        }
        nap_ms(ms);
    }
    return mg_err_set(err, MG_EUSER, "rendezvous tcp:%s: rank %d got no id from rank 0 within %.0f s (%s)", hp, rank,
                      timeout_s, why);
}

/* ================================================================ rendezvous: launcher + dispatch */

static int ctrl_fd(void)
{
    const char *v = getenv("MOEGEN_LAUNCH_FD");
    return v && *v ? atoi(v) : -1;
}

static pthread_mutex_t ctrl_mu = PTHREAD_MUTEX_INITIALIZER;   /* heartbeat and id share the socket */

static int rv_launcher(int rank, unsigned char *id, double timeout_s, mg_err *err)
{
    int fd = ctrl_fd();
    if (fd < 0) return mg_err_set(err, MG_EUSER, "rendezvous launcher: MOEGEN_LAUNCH_FD is not set (not started by "
                                  "`moegen train --gpus N`? use file:PATH or tcp:HOST:PORT)");
    unsigned char msg[1 + MG_DIST_ID_BYTES];
    if (rank == 0) {
        msg[0] = 'I';
        memcpy(msg + 1, id, MG_DIST_ID_BYTES);
        pthread_mutex_lock(&ctrl_mu);
        int r = write_full(fd, msg, sizeof msg);
        pthread_mutex_unlock(&ctrl_mu);
        return r ? mg_err_set(err, MG_EUSER, "rendezvous launcher: cannot send the id: %s", strerror(errno)) : 0;
    }
    int r = read_full(fd, msg, sizeof msg, mg_dist_now() + timeout_s);
    if (r || msg[0] != 'I')
        return mg_err_set(err, MG_EUSER, "rendezvous launcher: rank %d got no id within %.0f s", rank, timeout_s);
    memcpy(id, msg + 1, MG_DIST_ID_BYTES);
    return 0;
}

int mg_dist_rendezvous(const char *how, int rank, int world, unsigned char *id, double timeout_s, mg_err *err)
{
    if (world == 1) return 0;
    if (!strncmp(how, "file:", 5) && how[5]) return rv_file(how + 5, rank, world, id, timeout_s, err);
    if (!strncmp(how, "tcp:", 4))
        return rank == 0 ? rv_tcp_serve(how + 4, world, id, timeout_s, err)
                         : rv_tcp_fetch(how + 4, rank, world, id, timeout_s, err);
    if (!strcmp(how, "launcher")) return rv_launcher(rank, id, timeout_s, err);
    return mg_err_set(err, MG_EUSER, "--rendezvous '%s': must be file:PATH, tcp:HOST:PORT or launcher", how);
}

/* ================================================================ worker heartbeat */

static struct {
    pthread_t th;
    int running;
    atomic_int stop;
    _Atomic double last_alive;
    double limit_s;
} hb;

void mg_dist_alive(void) { atomic_store(&hb.last_alive, mg_dist_now()); }

static void *hb_loop(void *arg)
{
    int fd = *(int *)arg;
    while (!atomic_load(&hb.stop)) {
        if (mg_dist_now() - atomic_load(&hb.last_alive) < hb.limit_s) {
            pthread_mutex_lock(&ctrl_mu);
            int r = write_full(fd, "H", 1);
            pthread_mutex_unlock(&ctrl_mu);
            if (r) break;   /* the launcher is gone */
        }
        /* a beat at least 4 times per watchdog period, at most once a second */
        for (double t = 0; t < hb.limit_s / 4 && t < 1.0 && !atomic_load(&hb.stop); t += 0.05) nap_ms(50);
    }
    return NULL;
}

int mg_dist_heartbeat_start(mg_err *err)
{
    static int fd;
    fd = ctrl_fd();
    if (fd < 0 || hb.running) return 0;
    const char *t = getenv("MOEGEN_TIMEOUT");
    hb.limit_s = t && atof(t) > 0 ? atof(t) : 300.0;
    atomic_store(&hb.stop, 0);
    mg_dist_alive();
    if (pthread_create(&hb.th, NULL, hb_loop, &fd))
        return mg_err_set(err, MG_EINTERNAL, "dist: cannot start the heartbeat thread");
    hb.running = 1;
    return 0;
}

void mg_dist_heartbeat_stop(void)
{
    if (!hb.running) return;
    atomic_store(&hb.stop, 1);
    pthread_join(hb.th, NULL);
    hb.running = 0;
}

/* ================================================================ local launcher */

typedef struct {
    pid_t pid;
    int ctrl, out, err;      /* our ends; -1 once closed */
    double last_beat;
    int done, status;
    char line[2][1024];      /* partial output lines: stdout, stderr */
    size_t len[2];
    int progress[2];         /* a '\r' came since the last '\n': this line is a progress line */
} worker;

static void set_env_int(const char *k, long v)
{
    char b[32];
    snprintf(b, sizeof b, "%ld", v);
    setenv(k, b, 1);
}

/* Emits one chunk of a worker's output: complete lines get the "[rank R] " prefix; a '\r'
 * (progress) segment is shown for rank 0 and dropped for the others. */
static void flush_line(worker *w, int rank, int which, char end)
{
    FILE *f = which ? stderr : stdout;
    int progress = end == '\r' || w->progress[which];
    w->progress[which] = end == '\r';
    if (progress && rank != 0) {
        w->len[which] = 0;
        return;
    }
    fprintf(f, "%s[rank %d] %.*s%c", progress ? "\r" : "", rank, (int)w->len[which], w->line[which],
            end == '\r' ? ' ' : '\n');
    fflush(f);
    w->len[which] = 0;
}

static void pump_output(worker *w, int rank, int which, int *fd)
{
    char buf[4096];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n <= 0) {
        if (n < 0 && errno == EINTR) return;
        if (w->len[which]) flush_line(w, rank, which, '\n');
        close(*fd);
        *fd = -1;
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n' || c == '\r') flush_line(w, rank, which, c);
        else {
            if (w->len[which] == sizeof w->line[which]) flush_line(w, rank, which, '\n');
            w->line[which][w->len[which]++] = c;
        }
    }
}

/* Reads what is left in a worker's output pipes, for at most 1 s (a pipe some grandchild still
 * holds open must not hang the launcher). */
static void drain(worker *w, int rank)
{
    double deadline = mg_dist_now() + 1.0;
    while (w->out >= 0 && wait_fd(w->out, POLLIN, deadline) > 0) pump_output(w, rank, 0, &w->out);
    while (w->err >= 0 && wait_fd(w->err, POLLIN, deadline) > 0) pump_output(w, rank, 1, &w->err);
}

/* Reads control messages: 'H' heartbeats, 'I' + id from rank 0 (forwarded to the others). */
static void pump_ctrl(worker *ws, int n, int rank, double now)
{
    worker *w = &ws[rank];
    unsigned char c;
    ssize_t r = read(w->ctrl, &c, 1);
    if (r <= 0) {
        if (r < 0 && errno == EINTR) return;
        close(w->ctrl);
        w->ctrl = -1;
        return;
    }
    w->last_beat = now;
    if (c != 'I') return;
    unsigned char msg[1 + MG_DIST_ID_BYTES];
    msg[0] = 'I';
    if (read_full(w->ctrl, msg + 1, MG_DIST_ID_BYTES, now + 5.0)) return;
    for (int j = 0; j < n; j++)
        if (j != rank && ws[j].ctrl >= 0) write_full(ws[j].ctrl, msg, sizeof msg);
}

static void describe_exit(mg_err *err, int rank, int st)
{
    if (WIFSIGNALED(st))
        mg_err_set(err, MG_EUSER, "rank %d died (signal %d: %s)", rank, WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        mg_err_set(err, MG_EUSER, "rank %d exited with status %d", rank, WEXITSTATUS(st));
}

static void reap(worker *ws, int n, int block)
{
    for (int i = 0; i < n; i++)
        if (!ws[i].done && ws[i].pid > 0 && waitpid(ws[i].pid, &ws[i].status, block ? 0 : WNOHANG) == ws[i].pid)
            ws[i].done = 1;
}

/* Ends every live worker: SIGTERM, then SIGKILL after grace_s. */
static void end_all(worker *ws, int n, double grace_s)
{
    for (int i = 0; i < n; i++)
        if (!ws[i].done && ws[i].pid > 0) kill(ws[i].pid, SIGTERM);
    double deadline = mg_dist_now() + grace_s;
    for (;;) {
        reap(ws, n, 0);
        int live = 0;
        for (int i = 0; i < n; i++) live += !ws[i].done && ws[i].pid > 0;
        if (!live) return;
        if (mg_dist_now() >= deadline) break;
        nap_ms(20);
    }
    for (int i = 0; i < n; i++)
        if (!ws[i].done && ws[i].pid > 0) kill(ws[i].pid, SIGKILL);
    reap(ws, n, 1);
}

static int make_shm(size_t bytes, mg_err *err)
{
    int fd = memfd_create("moegen-comm", 0);
    if (fd < 0 || ftruncate(fd, (off_t)bytes))
        return -mg_err_set(err, MG_EINTERNAL, "launcher: shared memory of %zu bytes: %s", bytes, strerror(errno));
    return fd;
}


static void start_worker(worker *w, int rank, const mg_launch_opts *o, int shm, int (*fn)(int, void *), void *arg,
                         int ctrl_child, int out_child, int err_child, worker *ws)
{
    fflush(stdout);
    fflush(stderr);
    w->pid = fork();
    if (w->pid != 0) return;
    /* the worker: close the launcher's ends of every other worker, wire up the fds, set the env */
    for (int j = 0; j <= rank; j++) {
        if (ws[j].ctrl >= 0) close(ws[j].ctrl);
        if (ws[j].out >= 0) close(ws[j].out);
        if (ws[j].err >= 0) close(ws[j].err);
    }
    dup2(out_child, 1);
    dup2(err_child, 2);
    close(out_child);
    close(err_child);
    set_env_int("MOEGEN_RANK", rank);
    set_env_int("MOEGEN_WORLD", o->n);
    set_env_int("MOEGEN_LOCAL_RANK", rank);
    set_env_int("MOEGEN_LAUNCH_FD", ctrl_child);
    char t[32];
    snprintf(t, sizeof t, "%g", o->timeout_s > 0 ? o->timeout_s : 300.0);
    setenv("MOEGEN_TIMEOUT", t, 1);
    if (shm >= 0) set_env_int("MOEGEN_SHM_FD", shm);
    if (o->gpus) set_env_int("CUDA_VISIBLE_DEVICES", rank);
    signal(SIGPIPE, SIG_DFL);
    int rc = fn(rank, arg);
    fflush(NULL);
    _exit(rc & 0xff);
}

int mg_dist_launch(const mg_launch_opts *o, int (*fn)(int rank, void *arg), void *arg, mg_err *err)
{
    int n = o->n;
    double timeout = o->timeout_s > 0 ? o->timeout_s : 300.0, grace = o->grace_s > 0 ? o->grace_s : 5.0;
    if (n < 1) return mg_err_set(err, MG_EUSER, "launcher: %d workers: must be >= 1", n);
    worker *ws = calloc((size_t)n, sizeof *ws);
    if (!ws) return mg_err_set(err, MG_EINTERNAL, "launcher: out of memory");
    for (int i = 0; i < n; i++) ws[i].ctrl = ws[i].out = ws[i].err = -1;
    int shm = -1, rc = 0;
    if (o->shm_bytes) {
        size_t unit = 8 * (size_t)n, slot = (o->shm_bytes + unit - 1) / unit * unit;
        shm = make_shm(mg_comm_cpu_shm_size(n, slot), err);
        if (shm < 0 || mg_comm_cpu_shm_init(shm, n, slot, err)) {
            free(ws);
            if (shm >= 0) close(shm);
            return err ? err->code : MG_EINTERNAL;
        }
    }
    double now = mg_dist_now();
    for (int i = 0; i < n && !rc; i++) {
        int sp[2], po[2], pe[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp)) {
            rc = mg_err_set(err, MG_EINTERNAL, "launcher: socketpair: %s", strerror(errno));
            break;
        }
        if (pipe(po) || pipe(pe)) {
            rc = mg_err_set(err, MG_EINTERNAL, "launcher: pipe: %s", strerror(errno));
            break;
        }
        ws[i].ctrl = sp[0];
        ws[i].out = po[0];
        ws[i].err = pe[0];
        ws[i].last_beat = now;
        fcntl(sp[0], F_SETFD, FD_CLOEXEC);
        fcntl(po[0], F_SETFD, FD_CLOEXEC);
        fcntl(pe[0], F_SETFD, FD_CLOEXEC);
        start_worker(&ws[i], i, o, shm, fn, arg, sp[1], po[1], pe[1], ws);
        close(sp[1]);
        close(po[1]);
        close(pe[1]);
        if (ws[i].pid < 0) rc = mg_err_set(err, MG_EINTERNAL, "launcher: fork: %s", strerror(errno));
    }
    if (shm >= 0) close(shm);
    struct pollfd *pf = calloc((size_t)n * 3, sizeof *pf);
    int *who = calloc((size_t)n * 3, sizeof *who);
    while (!rc && pf && who) {
        int np = 0;
        for (int i = 0; i < n; i++) {
            int fds[3] = {ws[i].ctrl, ws[i].out, ws[i].err};
            for (int k = 0; k < 3; k++)
                if (fds[k] >= 0) {
                    pf[np] = (struct pollfd){fds[k], POLLIN, 0};
                    who[np++] = i * 3 + k;
                }
        }
        int r = poll(pf, (nfds_t)np, 100);
        now = mg_dist_now();
        for (int p = 0; r > 0 && p < np; p++) {
            if (!pf[p].revents) continue;
            int i = who[p] / 3, k = who[p] % 3;
            if (k == 0 && ws[i].ctrl >= 0) pump_ctrl(ws, n, i, now);
            else if (k == 1 && ws[i].out >= 0) pump_output(&ws[i], i, 0, &ws[i].out);
            else if (k == 2 && ws[i].err >= 0) pump_output(&ws[i], i, 1, &ws[i].err);
        }
        reap(ws, n, 0);
        int all_done = 1;
        for (int i = 0; i < n && !rc; i++) {
            if (ws[i].done) {
                if (!WIFEXITED(ws[i].status) || WEXITSTATUS(ws[i].status)) {
                    /* drain what it said before dying, so its last words come out before the verdict */
                    drain(&ws[i], i);
                    describe_exit(err, i, ws[i].status);
                    rc = MG_EUSER;
                }
            } else {
                all_done = 0;
                if (now - ws[i].last_beat > timeout)
                    rc = mg_err_set(err, MG_EUSER, "rank %d sent no heartbeat for %.0f s (hung?); ending the job", i,
                                    timeout);
            }
        }
        if (!rc && all_done) {
            for (int i = 0; i < n; i++) drain(&ws[i], i);   /* the rest of the output */
            break;
        }
    }
    if (!rc && (!pf || !who)) rc = mg_err_set(err, MG_EINTERNAL, "launcher: out of memory");
    if (rc) end_all(ws, n, grace);
    for (int i = 0; i < n; i++) {
        if (ws[i].ctrl >= 0) close(ws[i].ctrl);
        if (ws[i].out >= 0) close(ws[i].out);
        if (ws[i].err >= 0) close(ws[i].err);
    }
    free(pf);
    free(who);
    free(ws);
    return rc;
}
