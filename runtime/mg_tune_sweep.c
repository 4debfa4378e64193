/* mg_tune_sweep: the resumable, crash-proof sweep engine of `moegen tune` (mg_tune.h). */
#include "mg_tune.h"
#include "mg_tune_report.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double mg_tune_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Copies with truncation (snprintf "%s" trips -Wformat-truncation on fixed buffers). */
static void scopy(char *d, size_t n, const char *s)
{
    size_t l = strlen(s);
    if (l >= n) l = n - 1;
    memcpy(d, s, l);
    d[l] = 0;
}

/* Worker -> parent messages: fixed size, below PIPE_BUF, so each write is atomic. */
enum { MSG_READY = 1, MSG_INIT_FAILED, MSG_START, MSG_DONE, MSG_BUDGET };
typedef struct sweep_msg {
    int kind, idx;
    mg_tune_cand c;
} sweep_msg;
_Static_assert(sizeof(sweep_msg) <= 4096, "sweep messages must be atomic pipe writes");

static void send_msg(int fd, int kind, int idx, const mg_tune_cand *c)
{
    sweep_msg m;
    memset(&m, 0, sizeof m);
    m.kind = kind;
    m.idx = idx;
    if (c) m.c = *c;
    ssize_t w;
    do w = write(fd, &m, sizeof m); while (w < 0 && errno == EINTR);
}

/* The worker process: its own database connection, init, then every pending candidate in
 * order; each result is committed before it is reported. Never returns. */
static void worker_main(mg_tune_sweep *s, int fd)
{
    mg_tune_db *db = NULL;
    mg_err err;
    mg_err_clear(&err);
    char msg[sizeof s->c[0].reason] = "";
    if (mg_tune_db_open(s->db_path, &db, &err)) scopy(msg, sizeof msg, err.msg);
    else if (s->init && s->init(s->ctx, msg, sizeof msg) && !msg[0]) snprintf(msg, sizeof msg, "worker init failed");
    if (msg[0]) {
        mg_tune_cand c;
        memset(&c, 0, sizeof c);
        scopy(c.reason, sizeof c.reason, msg);
        send_msg(fd, MSG_INIT_FAILED, -1, &c);
        _exit(1);
    }
    send_msg(fd, MSG_READY, -1, NULL);
    for (int i = 0; i < s->n; i++) {
        mg_tune_cand *c = &s->c[i];
        if (c->status != MG_TUNE_PENDING) continue;
        if (s->deadline > 0 && mg_tune_now() > s->deadline) {
            send_msg(fd, MSG_BUDGET, i, NULL);
            break;
        }
        send_msg(fd, MSG_START, i, NULL);
        int restart = s->eval(s->ctx, c);
        if (c->status == MG_TUNE_PENDING) {
            c->status = MG_TUNE_LAUNCH_ERROR;
            snprintf(c->reason, sizeof c->reason, "evaluation returned no result");
        }
        if (mg_tune_db_put(db, s->key, c, &err)) fprintf(stderr, "moegen: tune: %s\n", err.msg);
        send_msg(fd, MSG_DONE, i, c);
        if (restart) break;
    }
    mg_tune_db_close(db);
    _exit(0);
}

/* Reads one whole message, waiting at most timeout_s. 1 = got one, 0 = timeout, -1 = EOF. */
static int read_msg(int fd, sweep_msg *m, double timeout_s)
{
    size_t got = 0;
    double end = mg_tune_now() + timeout_s;
    while (got < sizeof *m) {
        double left = end - mg_tune_now();
        if (left <= 0) return 0;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, left > 1e6 ? -1 : (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        ssize_t n = read(fd, (char *)m + got, sizeof *m - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    return 1;
}

static void describe_exit(int st, char *buf, size_t n)
{
    if (WIFSIGNALED(st)) snprintf(buf, n, "worker died on signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else if (WIFEXITED(st)) snprintf(buf, n, "worker exited with status %d", WEXITSTATUS(st));
    else snprintf(buf, n, "worker stopped (status %#x)", st);
}

static int count_status(const mg_tune_sweep *s, mg_tune_status st)
{
    int n = 0;
    for (int i = 0; i < s->n; i++) n += s->c[i].status == st;
    return n;
}

/* Marks candidate i and stores it (the worker is gone, so the parent writes). */
static int record(mg_tune_sweep *s, int i, mg_tune_status st, const char *why, mg_err *err)
{
    mg_tune_db *db;
    s->c[i].status = st;
    scopy(s->c[i].reason, sizeof s->c[i].reason, why);
    if (mg_tune_db_open(s->db_path, &db, err)) return -1;
    int rc = mg_tune_db_put(db, s->key, &s->c[i], err);
    mg_tune_db_close(db);
    return rc ? -1 : 0;
}

static void progress(const mg_tune_sweep *s, int done, int total, const mg_tune_cand *c)
{
    if (!s->progress) return;
    char cfg[96] = "", label[200];
    if (c) mg_tune_tile_str(&c->tile, cfg, sizeof cfg);
    if (c && c->status == MG_TUNE_OK)
        snprintf(label, sizeof label, "%s %s %.4f ms", s->label ? s->label : "", cfg, c->median_ms);
    else if (c)
        snprintf(label, sizeof label, "%s %s %s", s->label ? s->label : "", cfg, mg_tune_status_names[c->status]);
    else
        snprintf(label, sizeof label, "%s", s->label ? s->label : "");
    mg_tune_progress(stderr, done, total, label);
}

int mg_tune_sweep_run(mg_tune_sweep *s, mg_err *err)
{
    /* 1. store what needs no run; resume finished rows */
    mg_tune_db *db;
    if (mg_tune_db_open(s->db_path, &db, err)) return -1;
    if (mg_tune_db_exec(db, "BEGIN", err)) { mg_tune_db_close(db); return -1; }   /* one commit for these */
    for (int i = 0; i < s->n; i++) {
        mg_tune_cand *c = &s->c[i];
        if (c->status != MG_TUNE_PENDING) {
            if (mg_tune_db_put(db, s->key, c, err)) { mg_tune_db_close(db); return -1; }
            continue;
        }
        mg_tune_cand row = *c;
        int r = mg_tune_db_get(db, s->key, &c->tile, &row, err);
        if (r < 0) { mg_tune_db_close(db); return -1; }
        if (r == 1 && row.status != MG_TUNE_PENDING && row.status != MG_TUNE_BUDGET) {
            *c = row;   /* finished in an earlier run */
            if (strlen(c->reason) + 12 < sizeof c->reason) strcat(c->reason, c->reason[0] ? " (resumed)" : "(resumed)");
        }
    }
    if (mg_tune_db_exec(db, "COMMIT", err)) { mg_tune_db_close(db); return -1; }
    mg_tune_db_close(db);   /* no connection of ours may live across fork() */

    const int total = count_status(s, MG_TUNE_PENDING);
    int done = 0, init_failures = 0, evaluated = 0;
    progress(s, 0, total, NULL);
    /* 2. workers until nothing is pending */
    while (count_status(s, MG_TUNE_PENDING) > 0) {
        if (s->deadline > 0 && mg_tune_now() > s->deadline) break;
        int fds[2];
        if (pipe(fds)) { mg_err_set(err, MG_EINTERNAL, "tune: pipe: %s", strerror(errno)); return -1; }
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            close(fds[0]);
            close(fds[1]);
            mg_err_set(err, MG_EINTERNAL, "tune: fork: %s", strerror(errno));
            return -1;
        }
        if (pid == 0) {
            close(fds[0]);
            worker_main(s, fds[1]);
        }
        close(fds[1]);
        int in_flight = -1, ready = 0, budget_stop = 0, killed = 0;
        char why[256] = "";
        for (;;) {
            sweep_msg m;
            int r = read_msg(fds[0], &m, ready ? s->timeout_s : 5 * s->timeout_s);
            if (r == 0) {   /* hung: kill it; the candidate in flight is the culprit */
                kill(pid, SIGKILL);
                killed = 1;
                snprintf(why, sizeof why, "no result after %.0f s: worker killed", ready ? s->timeout_s : 5 * s->timeout_s);
                break;
            }
            if (r < 0) break;
            if (m.kind == MSG_READY) ready = 1;
            else if (m.kind == MSG_INIT_FAILED) {
                scopy(why, sizeof why, m.c.reason);
                break;
            } else if (m.kind == MSG_START) in_flight = m.idx;
            else if (m.kind == MSG_DONE && m.idx >= 0 && m.idx < s->n) {
                s->c[m.idx] = m.c;
                in_flight = -1;
                evaluated++;
                progress(s, ++done, total, &s->c[m.idx]);
            } else if (m.kind == MSG_BUDGET) budget_stop = 1;
        }
        close(fds[0]);
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        if (!why[0] && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) describe_exit(st, why, sizeof why);
        if (in_flight >= 0) {   /* the worker died or hung on this one */
            if (record(s, in_flight, killed ? MG_TUNE_TIMEOUT : MG_TUNE_CRASH, why[0] ? why : "worker vanished", err))
                return -1;
            evaluated++;
            progress(s, ++done, total, &s->c[in_flight]);
        } else if (!ready) {   /* died before it could run anything */
            if (++init_failures >= 2) {
                for (int i = 0; i < s->n; i++)
                    if (s->c[i].status == MG_TUNE_PENDING &&
                        record(s, i, MG_TUNE_LAUNCH_ERROR, why[0] ? why : "worker failed to start", err))
                        return -1;
                break;
            }
        }
        if (budget_stop) break;
    }
    /* 3. whatever is still pending ran out of budget: stored so a rerun picks it up */
    if (count_status(s, MG_TUNE_PENDING) > 0) {
        if (mg_tune_db_open(s->db_path, &db, err)) return -1;
        mg_tune_db_exec(db, "BEGIN", err);
        for (int i = 0; i < s->n; i++) {
            if (s->c[i].status != MG_TUNE_PENDING) continue;
            s->c[i].status = MG_TUNE_BUDGET;
            snprintf(s->c[i].reason, sizeof s->c[i].reason, "budget: not reached before the --budget deadline");
            if (mg_tune_db_put(db, s->key, &s->c[i], err)) { mg_tune_db_close(db); return -1; }
        }
        if (mg_tune_db_exec(db, "COMMIT", err)) { mg_tune_db_close(db); return -1; }
        mg_tune_db_close(db);
        if (s->progress && done < total) mg_tune_progress(stderr, total, total, "budget reached");
    }
    return evaluated;
}
