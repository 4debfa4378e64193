/* mg_dist: one process per GPU — rank discovery, rendezvous of the communicator id, the local
 * launcher (`moegen train --gpus N` / `--procs N`) with its watchdog, and the worker heartbeat.
 * No NCCL here: the id is 128 opaque bytes (runtime/DISTRIBUTED.md). */
#ifndef MG_DIST_H
#define MG_DIST_H

#include <stddef.h>
#include "mg_err.h"

#define MG_DIST_ID_BYTES 128   /* sizeof(ncclUniqueId) */

/* ---------------------------------------------------------------- rank discovery */
typedef struct mg_dist_env {
    int rank, world;
    int local_rank;      /* -1 when the launcher does not say */
    const char *source;  /* "moegen", "openmpi", "pmi", "slurm" or "none" (world 1) */
} mg_dist_env;

/* Reads the launcher's variables, first family present wins: MOEGEN_RANK/WORLD/LOCAL_RANK (our
 * launcher), OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK, PMI_RANK/PMI_SIZE (+ MPI_LOCALRANKID),
 * SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (only inside an srun step: SLURM_STEP_ID set, so a batch
 * script running moegen directly stays one process). None: rank 0 of 1. Inconsistent values are a one-line
 * MG_EUSER error naming the variables. */
int mg_dist_env_detect(mg_dist_env *e, mg_err *err);

/* ---------------------------------------------------------------- rendezvous */
/* Shares id (MG_DIST_ID_BYTES) from rank 0 to every rank. how:
 *   file:PATH       rank 0 writes PATH atomically (temp + rename); the others poll for it
 *   tcp:HOST:PORT   rank 0 listens on HOST:PORT and serves world-1 clients
 *   launcher        over the local launcher's socketpair ($MOEGEN_LAUNCH_FD)
 * Rank 0 passes the id in; the others receive it. Gives up after timeout_s with an error that
 * names the path or address. */
int mg_dist_rendezvous(const char *how, int rank, int world, unsigned char *id, double timeout_s, mg_err *err);

/* ---------------------------------------------------------------- local launcher */
typedef struct mg_launch_opts {
    int n;               /* workers */
    int gpus;            /* 1: set CUDA_VISIBLE_DEVICES = local rank in each worker */
    double timeout_s;    /* watchdog: a worker silent this long is ended (0: 300 s) */
    double grace_s;      /* SIGTERM → SIGKILL grace period (0: 5 s) */
    size_t shm_bytes;    /* > 0: a shared-memory segment for the CPU comm ($MOEGEN_SHM_FD), per-rank slot */
} mg_launch_opts;

/* Runs worker(rank, arg) in n forked processes, each with MOEGEN_RANK/WORLD/LOCAL_RANK,
 * MOEGEN_LAUNCH_FD (control socket) and MOEGEN_TIMEOUT set; the worker's return value is its exit
 * status (it may also exec). Each worker's stdout/stderr lines come out prefixed "[rank R] ";
 * '\r' progress lines only from rank 0. Returns 0 when every worker exits 0; otherwise ends the
 * others (SIGTERM, then SIGKILL after grace_s), sets err to "rank R died (signal 9: Killed)",
 * "rank R exited with status S" or "rank R sent no heartbeat for T s", and returns MG_EUSER. */
int mg_dist_launch(const mg_launch_opts *o, int (*worker)(int rank, void *arg), void *arg, mg_err *err);

/* ---------------------------------------------------------------- worker heartbeat */
/* In a launched worker: a thread writes one byte to the launcher every second while the worker
 * is alive, i.e. has called mg_dist_alive() within $MOEGEN_TIMEOUT seconds (the trainer calls it
 * every step), so a hung collective stops the heartbeat and the watchdog ends the job.
 * No-op outside the launcher. */
int mg_dist_heartbeat_start(mg_err *err);
void mg_dist_alive(void);
void mg_dist_heartbeat_stop(void);

/* Seconds since an arbitrary epoch (CLOCK_MONOTONIC). */
double mg_dist_now(void);

#endif
