/* mg_bench_metrics: the cost of routing metrics + TensorBoard logging in the CPU trainer, two
 * ways: (1) the trainer's own timer around mg_metrics/mg_tb calls vs the whole step time, and
 * (2) end to end: the same run with metrics off (no_metrics) and on, alternated `reps` times.
 * usage: mg_bench_metrics [SPEC=specs/ci-cpu.lua] [STEPS=100] [REPS=3] [cpu|gpu]   (default cpu)
 * On the GPU the internal timer sees only the host side (mg_metrics/mg_tb); the device side (the
 * co-activation kernel, the statistics copies) shows in the end-to-end comparison. Both ways skip
 * checkpoints (no_save), so the comparison is the steps alone. For wt2-moe8 run it where
 * `moegen data --corpus wikitext-2 --tokenizer word -o wikitext-2` wrote the token files:
 *   cd WORKDIR && REPO/build/bench/mg_bench_metrics REPO/specs/wt2-moe8.lua 300 3 gpu */
#include "mg_spec.h"
#include "mg_train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "specs/ci-cpu.lua";
    long steps = argc > 2 ? atol(argv[2]) : 100;
    int reps = argc > 3 ? atoi(argv[3]) : 3, gpu = argc > 4 && !strcmp(argv[4], "gpu");
    if (argc > 4 && !gpu && strcmp(argv[4], "cpu"))
        return fprintf(stderr, "mg_bench_metrics: device '%s': must be cpu or gpu\n", argv[4]), 1;
    mg_spec s;
    mg_err err;
    if (mg_spec_load(path, &s, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double best[2] = {1e30, 1e30}, in_ratio = 0;
    for (int r = 0; r < reps; r++)
        for (int on = 0; on < 2; on++) {
            char dir[128];
            snprintf(dir, sizeof dir, "/tmp/mg_bench_metrics_%d_%d", r, on);
            char cmd[256];
            snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
            if (system(cmd)) return 1;
            mg_train_opts o = {.run_dir = dir, .quiet = 1, .stop_after = steps, .no_metrics = !on, .gpu = gpu,
                               .no_save = 1};
            mg_train_result res;
            if (mg_train(&s, &o, &res, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
            printf("rep %d metrics %-3s: %ld steps in %.3f s (%.2f ms/step), in metrics+tb %.2f ms (%.3f%%)\n", r,
                   on ? "on" : "off", res.steps_done, res.train_s, 1e3 * res.train_s / steps, 1e3 * res.metrics_s,
                   100 * res.metrics_s / res.train_s);
            if (res.train_s < best[on]) best[on] = res.train_s;
            if (on) in_ratio += res.metrics_s / res.train_s / reps;
            if (system(cmd)) return 1;
        }
    printf("%s on the %s, %ld steps: timer inside the trainer %.3f%% of step time; end to end best-of-%d off %.3f s, on %.3f s "
           "(%+.2f%%)\n", s.name, gpu ? "GPU" : "CPU", steps, 100 * in_ratio, reps, best[0], best[1], 100 * (best[1] / best[0] - 1));
    return 0;
}
