/* mg_cmd_dist: the multi-process side of `moegen train`: --gpus/--procs launch, the worker's checks. */
#ifndef MG_CMD_DIST_H
#define MG_CMD_DIST_H

typedef struct mg_dist_flags {
    int gpus, procs;          /* --gpus N / --procs N: launch N local workers */
    double timeout_s;         /* --timeout S: watchdog and collective timeout (default 300) */
    const char *rendezvous;   /* --rendezvous file:PATH | tcp:HOST:PORT (default: the launcher) */
} mg_dist_flags;

/* Called by `moegen train` with its arguments. Returns -1 when this is a plain single-process run
 * (no flags, world 1); otherwise runs the launcher (this process starts the workers, each re-executes
 * `moegen train` with the same arguments) or the worker and returns the exit status. */
int mg_cmd_train_dist(int argc, char **argv, const mg_dist_flags *f, int gpu);

#endif
