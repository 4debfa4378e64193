/* mg_cmd_dist: the multi-process side of `moegen train`: --gpus/--procs launch, the worker's checks. */
#ifndef MG_CMD_DIST_H
#define MG_CMD_DIST_H

typedef struct mg_dist_flags {
    int gpus, procs;          /* --gpus N / --procs N: launch N local workers */
    double timeout_s;         /* --timeout S: watchdog and collective timeout (default 300) */
    const char *rendezvous;   /* --rendezvous file:PATH | tcp:HOST:PORT (default: the launcher) */
} mg_dist_flags;

struct mg_comm;

#define MG_CMD_DIST_WORKER (-2)

/* Called by `moegen train` with its arguments. Returns -1 when this is a plain single-process run
 * (no flags, world 1); MG_CMD_DIST_WORKER in a worker whose communicator is open and checked
 * (*comm; its heartbeat runs): train over it, then call mg_cmd_train_dist_end; otherwise (the
 * launcher, which starts the workers that each re-execute `moegen train` with the same arguments,
 * or a worker that failed to connect) the exit status. */
int mg_cmd_train_dist(int argc, char **argv, const mg_dist_flags *f, int gpu, struct mg_comm **comm);
/* After training in a worker: abort the communicator when this rank failed, close it, stop the heartbeat. */
void mg_cmd_train_dist_end(struct mg_comm *comm, int failed);

#endif
