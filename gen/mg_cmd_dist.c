/* mg_cmd_dist: `moegen train --gpus N | --procs N` (the local launcher) and what each worker does
 * before it trains: find its rank, rendezvous, open the communicator and check it with one
 * all-reduce against direct computation; then `moegen train` runs data parallel over it
 * (runtime/DISTRIBUTED.md). */
#include "mg_cmd_dist.h"
#include "mg_comm.h"
#include "mg_cuda.h"
#include "mg_dist.h"
#include "mg_err.h"
#include "mg_gpu_model.h"   /* mg_gpu_count */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- launcher */

typedef struct { char **argv; } exec_args;

static int exec_worker(int rank, void *arg)
{
    (void)rank;
    execv("/proc/self/exe", ((exec_args *)arg)->argv);
    perror("moegen: train: cannot start the worker (/proc/self/exe)");
    return 127;
}

static int launch(int argc, char **argv, const mg_dist_flags *f)
{
    int n = f->gpus ? f->gpus : f->procs;
    if (f->gpus) {
        char why[256] = "";
        int have = mg_gpu_count(why, sizeof why);
        if (have < n) {
            fprintf(stderr, "moegen: train: --gpus %d: %d CUDA device(s) here%s%s; use --procs %d --device cpu\n", n,
                    have, *why ? ": " : "", why, n);
            return MG_EUSER;
        }
    }
    /* the workers re-run `moegen train` with the same arguments less --gpus/--procs */
    exec_args a = {calloc((size_t)argc + 3, sizeof(char *))};
    if (!a.argv) return MG_EINTERNAL;
    int k = 0;
    a.argv[k++] = "moegen";
    a.argv[k++] = "train";
    for (int i = 0; i < argc; i++) {
        if ((!strcmp(argv[i], "--gpus") || !strcmp(argv[i], "--procs")) && i + 1 < argc) i++;
        else a.argv[k++] = argv[i];
    }
    mg_launch_opts o = {.n = n, .gpus = f->gpus > 0, .timeout_s = f->timeout_s, .grace_s = 5,
                        .shm_bytes = f->gpus ? 0 : (size_t)16 << 20};
    mg_err err;
    mg_err_clear(&err);
    int rc = mg_dist_launch(&o, exec_worker, &a, &err);
    free(a.argv);
    if (rc) fprintf(stderr, "moegen: train: %s\n", err.msg);
    return rc;
}

/* ---------------------------------------------------------------- worker */

/* NCCL: rank 0 makes the id, the rendezvous shares it, one all-reduce of rank+1 on the device.
 * The communicator stays open for the trainer (*out). */
static int check_nccl(const mg_dist_env *e, const char *how, double timeout, double *sum, mg_comm **out, mg_err *err)
{
    unsigned char id[MG_DIST_ID_BYTES] = {0};
    if (e->rank == 0 && mg_comm_nccl_unique_id(id, err)) return MG_EINTERNAL;
    if (mg_dist_rendezvous(how, e->rank, e->world, id, timeout, err)) return MG_EUSER;
    /* our launcher narrows CUDA_VISIBLE_DEVICES to one GPU; Slurm/MPI ranks pick theirs by local rank */
    int dev = getenv("MOEGEN_LAUNCH_FD") ? 0 : e->local_rank;
    if (dev < 0) return mg_err_set(err, MG_EUSER, "dist: %s gives no local rank: cannot pick a GPU", e->source);
    MG_CUDA_TRY(cudaSetDevice(dev), err);
    double *d, x = e->rank + 1;
    MG_CUDA_TRY(cudaMalloc((void **)&d, sizeof x), err);
    MG_CUDA_TRY(cudaMemcpy(d, &x, sizeof x, cudaMemcpyHostToDevice), err);
    mg_comm *c = mg_comm_nccl_open(id, e->rank, e->world, NULL, timeout, err);
    int rc = c ? mg_comm_all_reduce(c, d, d, 1, MG_COMM_F64, err) : MG_EINTERNAL;
    if (!rc && cudaMemcpy(sum, d, sizeof x, cudaMemcpyDeviceToHost) != cudaSuccess)
        rc = mg_err_set(err, MG_EINTERNAL, "dist: cannot read back the all-reduce");
    cudaFree(d);
    if (rc) mg_comm_close(c);
    else *out = c;
    return rc;
}

static int check_cpu(const mg_dist_env *e, double timeout, double *sum, mg_comm **out, mg_err *err)
{
    mg_comm *c = mg_comm_cpu_open(-1, e->rank, e->world, timeout, err);
    if (!c) return MG_EUSER;
    *sum = e->rank + 1;
    int rc = mg_comm_all_reduce(c, sum, sum, 1, MG_COMM_F64, err);
    if (rc) mg_comm_close(c);
    else *out = c;
    return rc;
}

static int worker(const mg_dist_env *e, const mg_dist_flags *f, int gpu, mg_comm **comm)
{
    mg_err err;
    mg_err_clear(&err);
    double timeout = f->timeout_s > 0 ? f->timeout_s : 300.0, sum = 0;
    const char *how = f->rendezvous ? f->rendezvous : getenv("MOEGEN_LAUNCH_FD") ? "launcher" : NULL;
    if (gpu && !how) {
        fprintf(stderr, "moegen: train: rank %d of %d (%s): --rendezvous file:PATH or tcp:HOST:PORT is needed\n",
                e->rank, e->world, e->source);
        return MG_EUSER;
    }
    int rc = mg_dist_heartbeat_start(&err);
    if (!rc) rc = gpu ? check_nccl(e, how, timeout, &sum, comm, &err) : check_cpu(e, timeout, &sum, comm, &err);
    mg_dist_alive();
    if (!rc && sum != 0.5 * e->world * (e->world + 1))
        rc = mg_err_set(&err, MG_EINTERNAL, "dist: all-reduce of rank+1 gave %g, expected %g", sum,
                        0.5 * e->world * (e->world + 1));
    if (rc) {
        fprintf(stderr, "moegen: train: rank %d: %s\n", e->rank, err.msg);
        if (*comm) mg_comm_abort(*comm), mg_comm_close(*comm), *comm = NULL;
        fflush(NULL);
        mg_dist_heartbeat_stop();
        return rc;
    }
    printf("dist: rank %d of %d (%s, local rank %d): %s all-reduce ok\n", e->rank, e->world, e->source, e->local_rank,
           gpu ? "nccl" : "cpu");
    fflush(NULL);
    return MG_CMD_DIST_WORKER;   /* the heartbeat runs on: mg_cmd_train_dist_end stops it */
}

int mg_cmd_train_dist(int argc, char **argv, const mg_dist_flags *f, int gpu, mg_comm **comm)
{
    mg_dist_env e;
    mg_err err;
    *comm = NULL;
    if (mg_dist_env_detect(&e, &err)) {
        fprintf(stderr, "moegen: train: %s\n", err.msg);
        return MG_EUSER;
    }
    if (e.world > 1) return worker(&e, f, gpu, comm);
    if (f->gpus || f->procs) return launch(argc, argv, f);
    return -1;
}

void mg_cmd_train_dist_end(mg_comm *comm, int failed)
{
    if (!comm) return;
    if (failed) mg_comm_abort(comm);   /* the peers fail at once instead of waiting for their timeout */
    mg_comm_close(comm);
    fflush(NULL);
    mg_dist_heartbeat_stop();
}
