/* test_dist: rank discovery, file/tcp rendezvous between forked processes, the CPU comm's
 * collectives (2 and 3 processes) against direct computation, and the local launcher's watchdog. */
#include "mg_test.h"
#include "mg_testproc.h"
#include "mg_comm.h"
#include "mg_dist.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static const char *const all_vars[] = {
    "MOEGEN_RANK", "MOEGEN_WORLD", "MOEGEN_LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_STEPID", "MOEGEN_LAUNCH_FD", "MOEGEN_SHM_FD", "MOEGEN_TIMEOUT"};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++) unsetenv(all_vars[i]);
}

static int wait_all(pid_t *pids, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            print_error("child %d: %s %d\n", i, WIFEXITED(st) ? "status" : "signal",
                        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            bad++;
        }
    }
    return bad;
}

static void make_id(unsigned char *id)
{
    for (int i = 0; i < MG_DIST_ID_BYTES; i++) id[i] = (unsigned char)(i * 7 + 3);
}

/* ---------------------------------------------------------------- rank discovery */

static void detect(mg_dist_env *e, int want_rc, mg_err *err)
{
    mg_err_clear(err);
    assert_int_equal(mg_dist_env_detect(e, err), want_rc);
}

static void test_env_families(void **state)
{
    (void)state;
    mg_dist_env e;
    mg_err err;
    clear_env();
    detect(&e, 0, &err);
    assert_int_equal(e.world, 1);
    assert_string_equal(e.source, "none");

    setenv("SLURM_PROCID", "5", 1), setenv("SLURM_NTASKS", "8", 1), setenv("SLURM_LOCALID", "1", 1);
    detect(&e, 0, &err);   /* the batch script, not an srun task: one process */
    assert_int_equal(e.world, 1);
    setenv("SLURM_STEP_ID", "0", 1);
    detect(&e, 0, &err);
    assert_true(e.rank == 5 && e.world == 8 && e.local_rank == 1);
    assert_string_equal(e.source, "slurm");

    setenv("PMI_RANK", "2", 1), setenv("PMI_SIZE", "4", 1);   /* PMI beats Slurm; no MPI_LOCALRANKID */
    detect(&e, 0, &err);
    assert_true(e.rank == 2 && e.world == 4 && e.local_rank == -1);
    assert_string_equal(e.source, "pmi");
    setenv("MPI_LOCALRANKID", "2", 1);
    detect(&e, 0, &err);
    assert_int_equal(e.local_rank, 2);

    setenv("OMPI_COMM_WORLD_RANK", "3", 1), setenv("OMPI_COMM_WORLD_SIZE", "6", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0", 1);
    detect(&e, 0, &err);
    assert_true(e.rank == 3 && e.world == 6 && e.local_rank == 0);
    assert_string_equal(e.source, "openmpi");

    setenv("MOEGEN_RANK", "1", 1), setenv("MOEGEN_WORLD", "2", 1), setenv("MOEGEN_LOCAL_RANK", "1", 1);
    detect(&e, 0, &err);
    assert_true(e.rank == 1 && e.world == 2 && e.local_rank == 1);
    assert_string_equal(e.source, "moegen");
    clear_env();
}

static void test_env_errors(void **state)
{
    (void)state;
    mg_dist_env e;
    mg_err err;
    clear_env();
    setenv("SLURM_PROCID", "4", 1), setenv("SLURM_NTASKS", "4", 1), setenv("SLURM_STEPID", "2", 1);
    detect(&e, MG_EUSER, &err);
    assert_string_equal(err.msg, "dist: SLURM_PROCID = 4: must be below SLURM_NTASKS = 4");
    clear_env();
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    detect(&e, MG_EUSER, &err);
    assert_string_equal(err.msg, "dist: OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not (openmpi "
                                 "launcher variables)");
    clear_env();
    setenv("PMI_RANK", "x1", 1), setenv("PMI_SIZE", "2", 1);
    detect(&e, MG_EUSER, &err);
    assert_string_equal(err.msg, "dist: PMI_RANK = 'x1': must be an integer >= 0");
    clear_env();
    setenv("MOEGEN_RANK", "0", 1), setenv("MOEGEN_WORLD", "0", 1);
    detect(&e, MG_EUSER, &err);
    assert_string_equal(err.msg, "dist: MOEGEN_WORLD = '0': must be an integer >= 1");
    clear_env();
    setenv("SLURM_PROCID", "0", 1), setenv("SLURM_NTASKS", "2", 1), setenv("SLURM_LOCALID", "2", 1);
    setenv("SLURM_STEP_ID", "0", 1);
    detect(&e, MG_EUSER, &err);
    assert_string_equal(err.msg, "dist: SLURM_LOCALID = 2: must be below SLURM_NTASKS = 2");
    clear_env();
}

/* ---------------------------------------------------------------- rendezvous */

/* Ranks 1..world-1 in children, rank 0 here after a short delay; every child checks the id. */
static void rendezvous_between_processes(const char *how, int world)
{
    pid_t pids[8];
    for (int r = 1; r < world; r++) {
        pids[r - 1] = fork();
        if (pids[r - 1] == 0) {
            unsigned char id[MG_DIST_ID_BYTES] = {0}, want[MG_DIST_ID_BYTES];
            make_id(want);
            mg_err err;
            int rc = mg_dist_rendezvous(how, r, world, id, 5.0, &err);
            if (rc) fprintf(stderr, "rank %d: %s\n", r, err.msg);
            _exit(rc || memcmp(id, want, sizeof id));
        }
    }
    usleep(100000);
    unsigned char id[MG_DIST_ID_BYTES];
    make_id(id);
    mg_err err;
    int rc = mg_dist_rendezvous(how, 0, world, id, 5.0, &err);
    if (rc) print_error("rank 0: %s\n", err.msg);
    assert_int_equal(wait_all(pids, world - 1), 0);
    assert_int_equal(rc, 0);
}

static void test_rendezvous_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/mg_dist_XXXXXX", how[128], path[96];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/id", dir);
    snprintf(how, sizeof how, "file:%s", path);
    rendezvous_between_processes(how, 3);
    /* a stale file of another world size is refused; a missing one times out naming the path */
    unsigned char id[MG_DIST_ID_BYTES];
    mg_err err;
    assert_int_equal(mg_dist_rendezvous(how, 1, 2, id, 0.2, &err), MG_EUSER);
    mg_assert_contains(err.msg, "written for world 3, this job has 2");
    unlink(path);
    assert_int_equal(mg_dist_rendezvous(how, 1, 2, id, 0.2, &err), MG_EUSER);
    mg_assert_contains(err.msg, path);
    mg_assert_contains(err.msg, "rank 1 got no id from rank 0 within 0 s");
    rmdir(dir);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

static void test_rendezvous_tcp(void **state)
{
    (void)state;
    char how[64];
    snprintf(how, sizeof how, "tcp:127.0.0.1:%d", free_port());
    rendezvous_between_processes(how, 3);
    unsigned char id[MG_DIST_ID_BYTES];
    make_id(id);
    mg_err err;
    snprintf(how, sizeof how, "tcp:127.0.0.1:%d", free_port());
    assert_int_equal(mg_dist_rendezvous(how, 1, 2, id, 0.3, &err), MG_EUSER);   /* nobody serves */
    mg_assert_contains(err.msg, how);
    mg_assert_contains(err.msg, "rank 1 got no id from rank 0");
    assert_int_equal(mg_dist_rendezvous(how, 0, 3, id, 0.3, &err), MG_EUSER);   /* nobody comes */
    mg_assert_contains(err.msg, "rank 0 served 0 of 2 ranks");
    assert_int_equal(mg_dist_rendezvous("tcp:nohostport", 0, 2, id, 0.3, &err), MG_EUSER);
    mg_assert_contains(err.msg, "expected tcp:HOST:PORT");
    assert_int_equal(mg_dist_rendezvous("nfs:x", 0, 2, id, 0.3, &err), MG_EUSER);
    mg_assert_contains(err.msg, "must be file:PATH, tcp:HOST:PORT or launcher");
}

/* ---------------------------------------------------------------- CPU comm */

static float val(int r, size_t i) { return (float)((double)(r * 1000 + (int)i) * 0.37 + 1.0 / (r + 3)); }

static size_t a2a_count(int src, int dst) { return (size_t)((src * 3 + dst * 5) % 7) * 4; }   /* 0..24, some 0 */

/* Every collective once on this rank; returns the number of mismatches. Slots are tiny so every
 * collective goes in several rounds. */
static int comm_checks(mg_comm *c)
{
    int W = c->world, me = c->rank, bad = 0;
    mg_err err;
    enum { N = 50 };
    float in[3 * N], out[3 * N], want;
    for (size_t i = 0; i < 3 * N; i++) in[i] = val(me, i);
    /* all-reduce, in place */
    memcpy(out, in, sizeof in);
    if (mg_comm_all_reduce(c, out, out, N, MG_COMM_F32, &err)) return fprintf(stderr, "%s\n", err.msg), 100;
    for (size_t i = 0; i < N; i++) {
        want = val(0, i);
        for (int r = 1; r < W; r++) want += val(r, i);
        bad += memcmp(&want, &out[i], 4) != 0;
    }
    /* all-reduce in f64 */
    double din[N], dout[N];
    for (size_t i = 0; i < N; i++) din[i] = (double)val(me, i) / 3.0;
    if (mg_comm_all_reduce(c, din, dout, N, MG_COMM_F64, &err)) return fprintf(stderr, "%s\n", err.msg), 100;
    for (size_t i = 0; i < N; i++) {
        double w = (double)val(0, i) / 3.0;
        for (int r = 1; r < W; r++) w += (double)val(r, i) / 3.0;
        bad += w != dout[i];
    }
    /* reduce-scatter: block `me` of the sum */
    if (mg_comm_reduce_scatter(c, in, out, N, MG_COMM_F32, &err)) return fprintf(stderr, "%s\n", err.msg), 100;
    for (size_t i = 0; i < N; i++) {
        want = val(0, (size_t)me * N + i);
        for (int r = 1; r < W; r++) want += val(r, (size_t)me * N + i);
        bad += memcmp(&want, &out[i], 4) != 0;
    }
    /* all-gather */
    if (mg_comm_all_gather(c, in, out, N, MG_COMM_F32, &err)) return fprintf(stderr, "%s\n", err.msg), 100;
    for (int r = 0; r < W; r++)
        for (size_t i = 0; i < N; i++) {
            want = val(r, i);
            bad += memcmp(&want, &out[(size_t)r * N + i], 4) != 0;
        }
    /* in place, as ZeRO-1 uses them (mg_zero.h): the reduce-scatter into this rank's own block (the
     * others keep their values), through the async helper (the CPU backend's blocking fallback) */
    memcpy(out, in, sizeof in);
    if (mg_comm_reduce_scatter_async(c, out, out + (size_t)me * N, N, MG_COMM_F32, NULL, &err))
        return fprintf(stderr, "%s\n", err.msg), 100;
    for (size_t i = 0; i < (size_t)W * N; i++) {
        size_t blk = i / N;
        want = val(0, i);
        for (int r = 1; r < W && blk == (size_t)me; r++) want += val(r, i);
        if (blk != (size_t)me) want = val(me, i);
        bad += memcmp(&want, &out[i], 4) != 0;
    }
    /* ... and the all-gather of bytes from this rank's block of out (odd sizes: 3 floats + 1 byte) */
    size_t nb = 3 * 4 + 1;
    memset(out, 0, sizeof out);
    memcpy((unsigned char *)out + (size_t)me * nb, in, nb);
    if (mg_comm_all_gather_async(c, (unsigned char *)out + (size_t)me * nb, out, nb, MG_COMM_BYTE, NULL, &err))
        return fprintf(stderr, "%s\n", err.msg), 100;
    for (int r = 0; r < W; r++) {
        float want_blk[4];
        for (size_t i = 0; i < 4; i++) want_blk[i] = val(r, i);
        bad += memcmp(want_blk, (unsigned char *)out + (size_t)r * nb, nb) != 0;
    }
    /* all-to-all-v: element k of the block src -> dst is src*10000 + dst*100 + k */
    size_t sc[3], rc[3], so = 0;
    float send[3 * 24], recv[3 * 24];
    for (int j = 0; j < W; j++) {
        sc[j] = a2a_count(me, j);
        for (size_t k = 0; k < sc[j]; k++) send[so++] = (float)(me * 10000 + j * 100 + (int)k);
    }
    if (mg_comm_all_to_all_v(c, send, sc, recv, rc, 3 * 24, MG_COMM_F32, &err))
        return fprintf(stderr, "%s\n", err.msg), 100;
    size_t ro = 0;
    for (int i = 0; i < W; i++) {
        bad += rc[i] != a2a_count(i, me);
        for (size_t k = 0; k < rc[i]; k++) bad += recv[ro++] != (float)(i * 10000 + me * 100 + (int)k);
    }
    /* the known-counts exchange (mg_comm_all_to_all_vk; the CPU backend's fallback checks them) */
    for (int j = 0; j < W; j++) rc[j] = a2a_count(j, me);
    memset(recv, 0, sizeof recv);
    if (mg_comm_all_to_all_vk(c, send, sc, recv, rc, MG_COMM_F32, &err)) return fprintf(stderr, "%s\n", err.msg), 100;
    ro = 0;
    for (int i = 0; i < W; i++)
        for (size_t k = 0; k < rc[i]; k++) bad += recv[ro++] != (float)(i * 10000 + me * 100 + (int)k);
    /* ... and a wrong expectation is named (rank 0 expects one element more from rank 1) */
    if (me == 0) rc[1]++;
    int r = mg_comm_all_to_all_vk(c, send, sc, recv, rc, MG_COMM_F32, &err);
    bad += me == 0 ? r != MG_EINTERNAL || !strstr(err.msg, "rank 1 sent") : r != 0;
    /* a rank over its capacity: every rank fails, naming it */
    size_t cap = me == W - 1 ? 1 : 3 * 24;
    r = mg_comm_all_to_all_v(c, send, sc, recv, rc, cap, MG_COMM_F32, &err);
    char want_msg[96];
    snprintf(want_msg, sizeof want_msg, "rank %d receives more than its capacity", W - 1);
    bad += r != MG_EUSER || !strstr(err.msg, want_msg);
    if (bad) fprintf(stderr, "rank %d: %d mismatches\n", me, bad);
    return bad;
}

static void comm_world(int W)
{
    int fd = memfd_create("test-comm", 0);
    assert_true(fd >= 0);
    mg_err err;
    assert_int_equal(mg_comm_cpu_shm_init(fd, W, 8 * (size_t)W * 3, &err), 0);   /* 24 bytes per peer */
    pid_t pids[3];
    for (int r = 0; r < W; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            mg_comm *c = mg_comm_cpu_open(fd, r, W, 5.0, &err);
            if (!c) fprintf(stderr, "%s\n", err.msg), _exit(99);
            int bad = comm_checks(c);
            mg_comm_close(c);
            _exit(bad ? 1 : 0);
        }
    }
    close(fd);
    assert_int_equal(wait_all(pids, W), 0);
}

static void test_comm_cpu_2(void **state) { (void)state; comm_world(2); }
static void test_comm_cpu_3(void **state) { (void)state; comm_world(3); }

/* mg_comm_split on a 2 x 2 grid (rank = d·2 + e, as dp x ep): the ep groups {0,1} {2,3} and the
 * dp groups {0,2} {1,3} each pass every collective, used in turn; rank 3 also tries a color of its
 * own with another split (a group of one) and color -1 (none); the world still works after. */
static int split_child(int fd, int r)
{
    mg_err err;
    mg_comm *w = mg_comm_cpu_open(fd, r, 4, 5.0, &err), *ep = NULL, *dp = NULL, *solo = NULL;
    if (!w) return fprintf(stderr, "%s\n", err.msg), 99;
    int bad = 0;
    if (mg_comm_split(w, r / 2, r, &ep, &err) || mg_comm_split(w, r % 2, -r, &dp, &err) ||
        mg_comm_split(w, r == 3 ? 7 : -1, 0, &solo, &err))
        return fprintf(stderr, "rank %d: %s\n", r, err.msg), 98;
    bad += !ep || ep->world != 2 || ep->rank != r % 2;
    bad += !dp || dp->world != 2 || dp->rank != 1 - r / 2;   /* key -r: the higher world rank first */
    bad += r == 3 ? !solo || solo->world != 1 || solo->rank != 0 : solo != NULL;
    bad += comm_checks(dp) + comm_checks(ep) + comm_checks(dp);
    double x = r + 1;
    if (solo && mg_comm_all_reduce(solo, &x, &x, 1, MG_COMM_F64, &err)) bad += 100;
    bad += solo && x != 4;
    x = r + 1;
    if (mg_comm_all_reduce(w, &x, &x, 1, MG_COMM_F64, &err)) bad += 100;
    bad += x != 10;
    mg_comm *again = NULL;
    bad += mg_comm_split(dp, 0, 0, &again, &err) != MG_EUSER || again != NULL;   /* views are not split again */
    mg_comm_close(solo);
    mg_comm_close(dp);
    mg_comm_close(ep);
    mg_comm_close(w);
    if (bad) fprintf(stderr, "rank %d: %d split mismatches\n", r, bad);
    return bad ? 1 : 0;
}

static void test_comm_cpu_split(void **state)
{
    (void)state;
    int fd = memfd_create("test-comm", 0);
    assert_true(fd >= 0);
    mg_err err;
    assert_int_equal(mg_comm_cpu_shm_init(fd, 4, 96, &err), 0);
    pid_t pids[4];
    for (int r = 0; r < 4; r++)
        if ((pids[r] = fork()) == 0) _exit(split_child(fd, r));
    close(fd);
    assert_int_equal(wait_all(pids, 4), 0);
}

/* The all-to-all-v verdicts, like the slots, are shared by every view of a rank: an exchange
 * must not return before its peers have read them, or the rank's next exchange in another group
 * overwrites its verdict under a slow peer (once in CI). Three ranks on one CPU, so the last to
 * leave a barrier runs on while the others wait for the CPU: rank 0 alternates an exchange with
 * rank 1 that fails (rank 0 over its capacity) and an empty one (no rounds) with rank 2; rank 1
 * must see every failure and rank 2 none. */
static int verdict_child(int fd, int r, int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);   /* best effort: the race only gets rarer without it */
    mg_err err;
    mg_comm *w = mg_comm_cpu_open(fd, r, 3, 2.0, &err), *a = NULL, *b = NULL;
    if (!w) return fprintf(stderr, "%s\n", err.msg), 99;
    if (mg_comm_split(w, r < 2 ? 0 : -1, 0, &a, &err) || mg_comm_split(w, r != 1 ? 0 : -1, 0, &b, &err))
        return fprintf(stderr, "rank %d: %s\n", r, err.msg), 98;
    int bad = 0;
    size_t one_each[2] = {1, 1}, none[2] = {0, 0}, rc[2];
    float send[2] = {1, 2}, recv[2];
    for (int k = 0; k < 1000 && !bad; k++) {
        if (r == 1) sched_yield();   /* rank 1 comes last to the exchange, so rank 0 leaves it last */
        size_t cap = a && a->rank == 0 ? 1 : 2;
        if (a && mg_comm_all_to_all_v(a, send, one_each, recv, rc, cap, MG_COMM_F32, &err) != MG_EUSER)
            bad = fprintf(stderr, "rank %d, exchange %d: a failing all-to-all passed\n", r, k);
        if (b && mg_comm_all_to_all_v(b, send, none, recv, rc, 0, MG_COMM_F32, &err))
            bad = fprintf(stderr, "rank %d, exchange %d: an empty all-to-all failed: %s\n", r, k, err.msg);
    }
    if (bad) mg_comm_abort(w);   /* the peers fail at once instead of timing out */
    mg_comm_close(a);
    mg_comm_close(b);
    mg_comm_close(w);
    return bad ? 1 : 0;
}

static void test_comm_cpu_split_verdicts(void **state)
{
    (void)state;
    cpu_set_t mine;
    int cpu = 0;
    if (sched_getaffinity(0, sizeof mine, &mine) == 0)
        while (cpu < CPU_SETSIZE - 1 && !CPU_ISSET(cpu, &mine)) cpu++;
    int fd = memfd_create("test-comm", 0);
    assert_true(fd >= 0);
    mg_err err;
    assert_int_equal(mg_comm_cpu_shm_init(fd, 3, 48, &err), 0);
    pid_t pids[3];
    for (int r = 0; r < 3; r++)
        if ((pids[r] = fork()) == 0) _exit(verdict_child(fd, r, cpu));
    close(fd);
    assert_int_equal(wait_all(pids, 3), 0);
}

static void test_comm_cpu_timeout(void **state)
{
    (void)state;
    int fd = memfd_create("test-comm", 0);
    mg_err err;
    assert_int_equal(mg_comm_cpu_shm_init(fd, 2, 64, &err), 0);
    assert_int_equal(mg_comm_cpu_shm_init(fd, 2, 60, &err), MG_EUSER);
    assert_int_equal(mg_comm_cpu_shm_init(fd, 2, 64, &err), 0);
    mg_comm *c = mg_comm_cpu_open(fd, 0, 2, 0.2, &err);   /* rank 1 never comes */
    assert_non_null(c);
    float x = 1;
    assert_int_equal(mg_comm_all_reduce(c, &x, &x, 1, MG_COMM_F32, &err), MG_EUSER);
    mg_assert_contains(err.msg, "did not reach the collective within 0 s; communicator aborted");
    mg_comm_close(c);
    assert_null(mg_comm_cpu_open(fd, 0, 3, 0.2, &err));
    mg_assert_contains(err.msg, "the segment is for world 2, this rank is 0 of 3");
    close(fd);
}

/* ---------------------------------------------------------------- launcher */

typedef struct { int code; double secs; char out[8192]; } launch_result;

/* Runs mg_dist_launch in a child with stdout+stderr in a file, so the prefixes can be checked. */
static void launch(launch_result *res, const mg_launch_opts *o, int (*fn)(int, void *))
{
    char path[] = "/tmp/mg_dist_out_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    double t0 = mg_dist_now();
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        dup2(fd, 1), dup2(fd, 2);
        setvbuf(stdout, NULL, _IONBF, 0);
        mg_err err;
        mg_err_clear(&err);
        int rc = mg_dist_launch(o, fn, NULL, &err);
        if (rc) fprintf(stderr, "moegen: train: %s\n", err.msg);
        fflush(NULL);
        _exit(rc);
    }
    int st;
    waitpid(p, &st, 0);
    res->secs = mg_dist_now() - t0;
    res->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    ssize_t n = pread(fd, res->out, sizeof res->out - 1, 0);
    res->out[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(path);
}

/* Rendezvous over the launcher, then an all-reduce over the launcher's shared segment. */
static int worker_ok(int rank, void *arg)
{
    (void)arg;
    mg_err err;
    mg_dist_env e;
    if (mg_dist_env_detect(&e, &err) || mg_dist_heartbeat_start(&err)) return fprintf(stderr, "%s\n", err.msg), 9;
    unsigned char id[MG_DIST_ID_BYTES] = {0}, want[MG_DIST_ID_BYTES];
    make_id(want);
    if (e.rank == 0) make_id(id);
    if (mg_dist_rendezvous("launcher", e.rank, e.world, id, 5.0, &err)) return fprintf(stderr, "%s\n", err.msg), 8;
    mg_comm *c = mg_comm_cpu_open(-1, e.rank, e.world, 5.0, &err);
    if (!c) return fprintf(stderr, "%s\n", err.msg), 7;
    double x = rank + 1;
    if (mg_comm_all_reduce(c, &x, &x, 1, MG_COMM_F64, &err)) return fprintf(stderr, "%s\n", err.msg), 6;
    mg_comm_close(c);
    printf("\rstep 1/2");
    printf("\rstep 2/2\n");
    printf("id %s, sum %.0f, local %d of %d\n", memcmp(id, want, sizeof id) ? "differs" : "ok", x, e.local_rank, e.world);
    fprintf(stderr, "a warning\n");
    mg_dist_heartbeat_stop();
    return 0;
}

static void test_launch_ok(void **state)
{
    (void)state;
    clear_env();
    mg_launch_opts o = {.n = 2, .timeout_s = 5, .grace_s = 1, .shm_bytes = 4096};
    launch_result r;
    launch(&r, &o, worker_ok);
    if (r.code) print_error("%s\n", r.out);
    assert_int_equal(r.code, 0);
    mg_assert_contains(r.out, "[rank 0] id ok, sum 3, local 0 of 2\n");
    mg_assert_contains(r.out, "[rank 1] id ok, sum 3, local 1 of 2\n");
    mg_assert_contains(r.out, "[rank 1] a warning\n");
    mg_assert_contains(r.out, "\r[rank 0] step 1/2 ");
    assert_null(strstr(r.out, "[rank 1] step"));   /* progress only from rank 0 */
}

static int worker_killed(int rank, void *arg)
{
    (void)arg;
    mg_err err;
    mg_dist_heartbeat_start(&err);
    if (rank == 1) {
        printf("about to die\n");
        fflush(stdout);
        usleep(200000);
        raise(SIGKILL);
    }
    for (int i = 0; i < 300; i++) mg_dist_alive(), usleep(100000);   /* 30 s unless ended */
    return 0;
}

static void test_launch_killed(void **state)
{
    (void)state;
    mg_launch_opts o = {.n = 2, .timeout_s = 30, .grace_s = 1};
    launch_result r;
    launch(&r, &o, worker_killed);
    assert_int_equal(r.code, MG_EUSER);
    mg_assert_contains(r.out, "[rank 1] about to die\n");
    mg_assert_contains(r.out, "moegen: train: rank 1 died (signal 9: Killed)");
    assert_true(r.secs < 10.0);
}

/* Rank 1 keeps its heartbeat thread but stops calling mg_dist_alive (a hung collective). */
static int worker_hung(int rank, void *arg)
{
    (void)arg;
    mg_err err;
    mg_dist_heartbeat_start(&err);
    for (int i = 0; i < 300; i++) {
        if (rank == 0) mg_dist_alive();
        usleep(100000);
    }
    return 0;
}

static void test_launch_hung(void **state)
{
    (void)state;
    mg_launch_opts o = {.n = 2, .timeout_s = 1, .grace_s = 0.5};
    launch_result r;
    launch(&r, &o, worker_hung);
    assert_int_equal(r.code, MG_EUSER);
    mg_assert_contains(r.out, "moegen: train: rank 1 sent no heartbeat for 1 s (hung?); ending the job");
    assert_true(r.secs < 10.0);
}

/* A worker that ignores SIGTERM still ends (SIGKILL after the grace period). */
static int worker_status(int rank, void *arg)
{
    (void)arg;
    mg_err err;
    mg_dist_heartbeat_start(&err);
    if (rank == 2) return 3;
    signal(SIGTERM, SIG_IGN);
    for (int i = 0; i < 300; i++) mg_dist_alive(), usleep(100000);
    return 0;
}

static void test_launch_status(void **state)
{
    (void)state;
    mg_launch_opts o = {.n = 3, .timeout_s = 30, .grace_s = 0.5};
    launch_result r;
    launch(&r, &o, worker_status);
    assert_int_equal(r.code, MG_EUSER);
    mg_assert_contains(r.out, "moegen: train: rank 2 exited with status 3");
    assert_true(r.secs < 10.0);
}

/* The CLI: `moegen train --procs 3` starts 3 workers that re-execute moegen and check the comm;
 * ci-cpu's batch of 8 (grad_accum 1) cannot be split over 3 ranks, which every rank says. */
static void test_cli_procs(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "env -u MOEGEN_RANK -u SLURM_PROCID -u OMPI_COMM_WORLD_RANK -u PMI_RANK "
               "%s train specs/ci-cpu.lua --procs 3 --timeout 10 --run-dir /tmp/mg_dist_cli_none", mg_bin());
    assert_int_equal(p.code, MG_EUSER);
    mg_assert_contains(p.out, "[rank 0] dist: rank 0 of 3 (moegen, local rank 0): cpu all-reduce ok\n");
    mg_assert_contains(p.out, "[rank 2] dist: rank 2 of 3 (moegen, local rank 2): cpu all-reduce ok\n");
    mg_assert_contains(p.out, "train.batch = 8, train.grad_accum = 1: cannot be split over 3 ranks");
    mg_run(&p, "%s train specs/ci-cpu.lua --procs 2 --gpus 2", mg_bin());
    assert_int_equal(p.code, MG_EUSER);
    mg_assert_contains(p.out, "--gpus and --procs exclude each other");
    mg_run(&p, "MOEGEN_RANK=1 MOEGEN_WORLD=1 %s train specs/ci-cpu.lua --procs 2", mg_bin());
    assert_int_equal(p.code, MG_EUSER);
    mg_assert_contains(p.out, "moegen: train: dist: MOEGEN_RANK = 1: must be below MOEGEN_WORLD = 1");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_families),    cmocka_unit_test(test_env_errors),
        cmocka_unit_test(test_rendezvous_file), cmocka_unit_test(test_rendezvous_tcp),
        cmocka_unit_test(test_comm_cpu_2),      cmocka_unit_test(test_comm_cpu_3),
        cmocka_unit_test(test_comm_cpu_split),  cmocka_unit_test(test_comm_cpu_split_verdicts),
        cmocka_unit_test(test_comm_cpu_timeout), cmocka_unit_test(test_launch_ok),
        cmocka_unit_test(test_launch_killed),   cmocka_unit_test(test_launch_hung),
        cmocka_unit_test(test_launch_status),   cmocka_unit_test(test_cli_procs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
