/* mg_cmd_train: `moegen train` and `moegen eval`: option parsing around mg_train. */
#include "mg_cmd_train.h"
#include "mg_cmd_dist.h"
#include "mg_comm.h"
#include "mg_err.h"
#include "mg_gpu_check.h"
#include "mg_gpu_model.h"
#include "mg_spec.h"
#include "mg_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const train_help =
    "usage: moegen train SPEC [--device cpu|gpu] [--steps N] [--run-dir DIR] [--keep N] [--no-save] [-q]\n"
    "       moegen train --resume DIR [SPEC] [--steps N] [--run-dir DIR]\n"
    "       moegen train SPEC --check-step [--dump DIR]\n"
    "       moegen train SPEC --gpus N | --procs N [--timeout S] [--rendezvous file:PATH|tcp:HOST:PORT]\n"
    "  Trains the spec's model on its train.data and writes RUN_DIR (default runs/<name>):\n"
    "  metrics.jsonl (one JSON object per step), spec.lua, ckpt-NNNNNN/ (model.safetensors,\n"
    "  optimizer.safetensors, state.json; the last --keep, default 3, plus the best) and best ->.\n"
    "  Validation loss every train.eval_every steps and at the end. --steps N stops after N steps\n"
    "  in all (the LR schedule still spans train.steps); --resume continues a run bitwise. --no-save\n"
    "  writes no checkpoints (timing runs of models too big to save quickly).\n"
    "  --device: gpu (the default when a CUDA device is present: generated kernels, bf16 compute on\n"
    "  fp32 master weights; prints tokens/s, MFU and GPU memory) or cpu (the default without one: the\n"
    "  fp32 oracle). Both follow runtime/TRAINING.md and write the same files; either resumes the other.\n"
    "  --check-step: one step on the CPU and the GPU from the same init and a random batch; compares the\n"
    "  loss and every gradient per tensor (exit 1 on a mismatch); --dump DIR also writes the init, the\n"
    "  batch and both gradients for bench/torch_lm_step.py.\n"
    "  --gpus N / --procs N: data parallel, one worker process per GPU (NCCL) / per CPU rank (shared\n"
    "  memory); the global batch (train.batch x grad_accum) is split over the ranks, gradients are\n"
    "  summed, rank 0 writes the run dir (same files as one process; either resumes the other). Output\n"
    "  lines prefixed [rank R]; a worker that dies, or sends no heartbeat / finishes no collective for\n"
    "  --timeout S (default 300) seconds, ends the job. Under Slurm/MPI each rank finds itself from the\n"
    "  launcher's variables and needs --rendezvous (runtime/DISTRIBUTED.md).\n"
    "  Data: train.data = a `moegen data` output directory (train.tok, valid.tok), or text through the\n"
    "  built-in byte tokenizer (vocab >= 256) from $MOEGEN_DATA_DIR (default ../shared/data).\n"
    "example: moegen train specs/ci-cpu.lua --device cpu --steps 100\n";

static const char *const eval_help =
    "usage: moegen eval CKPT [--data FILE]\n"
    "  Loss and perplexity of a checkpoint (a ckpt-NNNNNN directory, or a run dir: its newest)\n"
    "  over the non-overlapping seq_len windows of FILE (a .tok token file, else its bytes), or of\n"
    "  the spec's validation split.\n"
    "example: moegen eval runs/ci-cpu/best --data ../shared/data/tinyshakespeare/input.txt\n";

static int fail(const char *verb, const char *fmt, const char *a)
{
    fprintf(stderr, "moegen: %s: ", verb);
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    return MG_EUSER;
}

static int parse_long(const char *verb, const char *flag, const char *v, long lo, long *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo) {
        fprintf(stderr, "moegen: %s: %s = '%s': must be an integer >= %ld\n", verb, flag, v, lo);
        return MG_EUSER;
    }
    *out = x;
    return 0;
}

int mg_cmd_train(int argc, char **argv)
{
    const char *spec_path = NULL, *device = NULL, *dump = NULL;
    int check = 0;
    mg_dist_flags df = {0};
    mg_train_opts o;
    memset(&o, 0, sizeof o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        long v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(train_help, stdout);
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o.quiet = 1;
        else if (!strcmp(a, "--no-save")) o.no_save = 1;
        else if (!strcmp(a, "--check-step")) check = 1;
        else if (!strcmp(a, "--gpus") || !strcmp(a, "--procs") || !strcmp(a, "--timeout")) {
            if (!next) return fail("train", "%s needs a value", a);
            if (parse_long("train", a, argv[++i], 1, &v)) return MG_EUSER;
            if (!strcmp(a, "--gpus")) df.gpus = (int)v;
            else if (!strcmp(a, "--procs")) df.procs = (int)v;
            else df.timeout_s = (double)v;
        } else if (!strcmp(a, "--rendezvous")) {
            if (!next) return fail("train", "%s needs a value", a);
            df.rendezvous = argv[++i];
        } else if (!strcmp(a, "--dump")) {
            if (!next) return fail("train", "%s needs a value", a);
            dump = argv[++i];
        }
        else if (!strcmp(a, "--device") || !strcmp(a, "--steps") || !strcmp(a, "--run-dir") || !strcmp(a, "--resume") ||
                 !strcmp(a, "--keep")) {
            if (!next) return fail("train", "%s needs a value", a);
            i++;
            if (!strcmp(a, "--device")) device = next;
            else if (!strcmp(a, "--run-dir")) o.run_dir = next;
            else if (!strcmp(a, "--resume")) o.resume = next;
            else if (!strcmp(a, "--steps")) {
                if (parse_long("train", a, next, 1, &v)) return MG_EUSER;
                o.stop_after = v;
            } else {
                if (parse_long("train", a, next, 1, &v)) return MG_EUSER;
                o.keep = (int)v;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moegen: train: unknown option '%s' (see moegen train --help)\n", a);
            return MG_EUSER;
        } else if (!spec_path) spec_path = a;
        else return fail("train", "unexpected argument '%s'", a);
    }
    char why[256] = "";
    int have_gpu = mg_gpu_count(why, sizeof why) > 0;
    if (device && strcmp(device, "cpu") && strcmp(device, "gpu"))
        return fail("train", "--device = '%s': must be one of cpu, gpu", device);
    if (device && !strcmp(device, "gpu") && !have_gpu)
        return fail("train", "--device gpu: no CUDA device here (%s); use --device cpu", why);
    o.gpu = device ? !strcmp(device, "gpu") : have_gpu;
    if (dump && !check) return fail("train", "%s", "--dump needs --check-step");
    if (check && (!spec_path || o.resume)) return fail("train", "%s", "--check-step needs a spec file (and no --resume)");
    if (!spec_path && !o.resume) return fail("train", "%s", "missing spec file (usage: moegen train SPEC --device cpu)");
    if (df.gpus && df.procs) return fail("train", "%s", "--gpus and --procs exclude each other");
    if (check && (df.gpus || df.procs)) return fail("train", "%s", "--check-step runs in one process (no --gpus/--procs)");
    if (df.gpus || df.procs) o.gpu = df.gpus > 0;   /* --gpus: the GPU trainer, --procs: the CPU one */
    mg_err err;
    mg_err_clear(&err);
    mg_spec spec;
    if (spec_path && mg_spec_load(spec_path, &spec, &err)) {   /* before the launch: one message, not one per rank */
        fprintf(stderr, "moegen: %s\n", err.msg);
        return err.code;
    }
    mg_comm *comm = NULL;
    int drc = mg_cmd_train_dist(argc, argv, &df, o.gpu, &comm);
    if (drc >= 0) return drc;
    o.comm = comm;   /* a worker: data parallel over comm */

    if (check) {
        int n_fail = 0;
        if (mg_gpu_check_step(&spec, dump, stdout, &n_fail, &err)) {
            fprintf(stderr, "moegen: train: %s\n", err.msg);
            return err.code ? err.code : MG_EINTERNAL;
        }
        return n_fail ? MG_EUSER : 0;
    }
    mg_train_result res;
    if (mg_train(spec_path ? &spec : NULL, &o, &res, &err)) {
        if (comm) fprintf(stderr, "moegen: rank %d: %s\n", comm->rank, err.msg);
        else fprintf(stderr, "moegen: %s\n", err.msg);
        mg_cmd_train_dist_end(comm, 1);
        return err.code ? err.code : MG_EINTERNAL;
    }
    int rank = comm ? comm->rank : 0;
    mg_cmd_train_dist_end(comm, 0);
    if (!o.quiet && rank == 0)
        printf("train: %ld steps done, last loss %.4f, val loss %.4f (ppl %.2f); %s/metrics.jsonl\n", res.steps_done,
               res.last_loss, res.last_val, exp(res.last_val), res.run_dir);
    return 0;
}

int mg_cmd_eval(int argc, char **argv)
{
    const char *ckpt = NULL, *data = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(eval_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--data")) {
            if (i + 1 >= argc) return fail("eval", "%s needs a value", a);
            data = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moegen: eval: unknown option '%s' (see moegen eval --help)\n", a);
            return MG_EUSER;
        } else if (!ckpt) ckpt = a;
        else return fail("eval", "unexpected argument '%s'", a);
    }
    if (!ckpt) return fail("eval", "%s", "missing checkpoint (usage: moegen eval CKPT [--data FILE])");
    mg_err err;
    mg_err_clear(&err);
    double loss;
    long n;
    if (mg_train_eval(ckpt, data, &loss, &n, &err)) {
        fprintf(stderr, "moegen: %s\n", err.msg);
        return err.code ? err.code : MG_EINTERNAL;
    }
    printf("eval: %s on %s: loss %.4f  ppl %.3f  (%ld tokens)\n", ckpt, data ? data : "the validation split", loss,
           exp(loss), n);
    return 0;
}
