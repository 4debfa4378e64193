/* mg_cmd_train: the `moegen train` and `moegen eval` verbs (CPU trainer; GPU not built yet). */
#ifndef MG_CMD_TRAIN_H
#define MG_CMD_TRAIN_H

#ifdef __cplusplus
extern "C" {
#endif

/* Run `moegen train ARGS...` / `moegen eval ARGS...` (argv excludes "moegen <verb>"); print
 * their own messages and return the exit code (0, MG_EUSER, MG_EINTERNAL). */
int mg_cmd_train(int argc, char **argv);
int mg_cmd_eval(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
