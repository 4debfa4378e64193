/* mg_report: looking at runs: `moegen report` (one self-contained HTML file, inline SVG),
 * `moegen watch` (a live ANSI terminal view of metrics.jsonl) and `moegen analyze` (expert
 * specialization of a checkpoint over a data file, JSON + an HTML section). */
#ifndef MG_REPORT_H
#define MG_REPORT_H

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mg_sb;

/* The verbs (argv excludes "moegen <verb>"); they print their own messages and return the
 * exit code (0, MG_EUSER, MG_EINTERNAL). */
int mg_cmd_report(int argc, char **argv);
int mg_cmd_watch(int argc, char **argv);
int mg_cmd_analyze(int argc, char **argv);

/* The HTML section for an analysis (what `moegen analyze` writes as JSON). */
void mg_report_analysis_html(const json_t *a, struct mg_sb *out);
/* The page around body: styles and the self-check script (no network resources). */
void mg_report_page(const char *title, const char *body, struct mg_sb *out);

#ifdef __cplusplus
}
#endif
#endif
