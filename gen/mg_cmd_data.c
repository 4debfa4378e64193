/* mg_cmd_data: `moegen data`: reads a corpus, tokenizes its train and valid splits and writes
 * OUTDIR/train.tok, OUTDIR/valid.tok (mg_tokfile) and OUTDIR/vocab.txt. */
#include "mg_cmd_data.h"
#include "mg_cache.h"
#include "mg_sha.h"
#include "mg_tok.h"
#include "mg_tokfile.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const usage =
    "usage: moegen data --corpus wikitext-2|wikitext-103|ptb|tinyshakespeare|PATH [--tokenizer word|gpt2]\n"
    "                   [--data-dir DIR] [-o OUTDIR]\n"
    "  Tokenizes the corpus's train and valid splits into OUTDIR/train.tok and OUTDIR/valid.tok\n"
    "  (token files: header + uint16/uint32 ids, checksummed) and OUTDIR/vocab.txt (line i = token i).\n"
    "  Default tokenizer: word; default OUTDIR: data/<corpus>-<tokenizer>.\n"
    "\n"
    "  Named corpora and the GPT-2 files (gpt2/encoder.json, gpt2/vocab.bpe) are read from the data\n"
    "  directory: --data-dir, else $MOEGEN_DATA_DIR, else ../shared/data (from the current directory),\n"
    "  else /work/shared/data; files listed in its SHA256SUMS are checked. Any other --corpus is a PATH:\n"
    "  a directory with train.txt + valid.txt (or wiki.{train,valid}.tokens, ptb.{train,valid}.txt), or\n"
    "  one text file split like tinyshakespeare: the first 90%% of its bytes train, the rest valid.\n"
    "\n"
    "  word: whitespace-separated words, <eos> at the end of every line, vocabulary from train in\n"
    "        first-occurrence order; valid words missing from it become <unk> (counted).\n"
    "  gpt2: GPT-2 byte-level BPE (50,257 tokens); the header also records the word count, for\n"
    "        per-word perplexity.\n"
    "example: moegen data --corpus wikitext-2 --tokenizer gpt2\n";

typedef struct corpus_def {
    const char *name;
    const char *train, *valid;  /* relative to the data directory */
    const char *single;         /* one file split 90/10 instead */
    const char *missing;        /* extra hint when a file is missing */
} corpus_def;

static const corpus_def corpora[] = {
    {"wikitext-2", "wikitext-2/wiki.train.tokens", "wikitext-2/wiki.valid.tokens", NULL, NULL},
    {"wikitext-103", "wikitext-103/wiki.train.tokens", "wikitext-103/wiki.valid.tokens", NULL,
     "WikiText-103 train (~540 MB) is not in the shared data; put wiki.train.tokens beside wiki.valid.tokens"},
    {"ptb", "ptb/ptb.train.txt", "ptb/ptb.valid.txt", NULL, NULL},
    {"tinyshakespeare", NULL, NULL, "tinyshakespeare/input.txt", NULL},
};

typedef struct data_opts {
    const char *corpus, *tokenizer, *data_dir, *outdir;
} data_opts;

typedef struct split {
    const char *name;           /* "train", "valid" */
    char path[PATH_MAX];
    const char *text;
    size_t n;
} split;

/* ---- locations ----------------------------------------------------------------------- */

/* dir/name into buf; nonzero when it does not fit (callers report the error). */
static int join(char *buf, size_t n, const char *dir, const char *name)
{
    int w = snprintf(buf, n, "%s/%s", dir, name);
    return w < 0 || (size_t)w >= n;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int mg_data_dir(const char *dir_flag, char *buf, size_t n, const char **from, mg_err *err)
{
    const char *env = getenv("MOEGEN_DATA_DIR"), *dir, *src;
    if (dir_flag) { dir = dir_flag; src = "--data-dir"; }
    else if (env && *env) { dir = env; src = "$MOEGEN_DATA_DIR"; }
    else if (is_dir("../shared/data")) { dir = "../shared/data"; src = "../shared/data"; }
    else { dir = "/work/shared/data"; src = "the default"; }
    if (from) *from = src;
    if (snprintf(buf, n, "%s", dir) >= (int)n) return mg_err_set(err, MG_EUSER, "%s: data directory path too long", dir);
    if ((dir_flag || src[0] == '$') && !is_dir(buf))
        return mg_err_set(err, MG_EUSER, "%s: no such directory (the data directory, from %s)", buf, src);
    return MG_OK;
}

void mg_data_default_outdir(const char *corpus, const char *tokenizer, char *buf, size_t n)
{
    /* A PATH corpus is named after its last component, without an extension. */
    size_t len = strlen(corpus);
    while (len > 1 && corpus[len - 1] == '/') len--;
    const char *base = corpus;
    for (size_t i = 0; i < len; i++)
        if (corpus[i] == '/' && i + 1 < len) base = corpus + i + 1;
    size_t bl = (size_t)(corpus + len - base);
    const char *dot = memchr(base, '.', bl);
    if (dot && dot > base) bl = (size_t)(dot - base);
    snprintf(buf, n, "data/%.*s-%s", (int)bl, base, tokenizer);
}

/* ---- inputs -------------------------------------------------------------------------- */

/* Checks text against its line in DIR/SHA256SUMS, when the file lists it. */
static int check_sum(const char *dir, const char *rel, const char *path, const char *text, size_t n, mg_err *err)
{
    char sums[PATH_MAX], *buf;
    size_t len;
    mg_err e;
    snprintf(sums, sizeof sums, "%s/SHA256SUMS", dir);
    if (mg_read_file(sums, NULL, &buf, &len, &e)) return MG_OK;
    const char *hit = NULL;
    size_t rl = strlen(rel);
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        if (ll == 64 + 2 + rl && !memcmp(line + 66, rel, rl)) hit = line;
        line = nl ? nl + 1 : NULL;
    }
    int rc = MG_OK;
    if (hit) {
        unsigned char d[MG_SHA_LEN];
        char hex[MG_SHA_HEX];
        if (mg_sha256(text, n, d)) rc = mg_err_set(err, MG_EINTERNAL, "%s: sha256 failed", path);
        mg_sha_hex(d, hex);
        if (!rc && memcmp(hex, hit, 64))
            rc = mg_err_set(err, MG_EUSER, "%s: sha256 %.12s... does not match %s (file corrupt or changed; "
                            "restore it from the source named in %s/README.md)", path, hex, sums, dir);
    }
    free(buf);
    return rc;
}

/* 90% of the bytes, moved back to a UTF-8 character boundary (nanoGPT's split for ASCII). */
static size_t split_point(const char *text, size_t n)
{
    size_t cut = (size_t)((double)n * 0.9);
    while (cut > 0 && cut < n && ((unsigned char)text[cut] & 0xC0) == 0x80) cut--;
    return cut;
}

static int read_split(split *s, const char *path, const char *hint, char **own, mg_err *err)
{
    snprintf(s->path, sizeof s->path, "%s", path);
    size_t n;
    int rc = mg_read_file(path, hint, own, &n, err);
    s->text = *own;
    s->n = n;
    return rc;
}

/* Fills train/valid from the corpus; bufs get the malloc'd texts. */
static int read_corpus(const data_opts *o, const char *dir, const char *dir_from, split *tr, split *va, char *bufs[2],
                       mg_err *err)
{
    const corpus_def *c = NULL;
    for (size_t i = 0; i < sizeof corpora / sizeof *corpora; i++)
        if (!strcmp(o->corpus, corpora[i].name)) c = &corpora[i];
    char p[2][PATH_MAX], hint[PATH_MAX + 256];
    const char *rel[2] = {NULL, NULL};
    int single = 0;
    if (c) {
        snprintf(hint, sizeof hint, "%s%s%s", c->missing ? c->missing : "", c->missing ? "; " : "", dir_from);
        single = c->single != NULL;
        rel[0] = single ? c->single : c->train;
        rel[1] = c->valid;
        for (int i = 0; i < 2 - single; i++)
            if (join(p[i], sizeof p[i], dir, rel[i])) return mg_err_set(err, MG_EUSER, "%s: path too long", dir);
    } else {
        struct stat st;
        snprintf(hint, sizeof hint, "see moegen data --help");
        if (stat(o->corpus, &st))
            return mg_err_set(err, MG_EUSER, "--corpus %s: not a named corpus (wikitext-2, wikitext-103, ptb, "
                              "tinyshakespeare) nor an existing file or directory", o->corpus);
        if (S_ISDIR(st.st_mode)) {
            static const char *const pairs[][2] = {
                {"train.txt", "valid.txt"}, {"wiki.train.tokens", "wiki.valid.tokens"}, {"ptb.train.txt", "ptb.valid.txt"}};
            int found = 0;
            for (size_t i = 0; i < 3 && !found; i++) {
                if (join(p[0], sizeof p[0], o->corpus, pairs[i][0]) || join(p[1], sizeof p[1], o->corpus, pairs[i][1]))
                    return mg_err_set(err, MG_EUSER, "%s: path too long", o->corpus);
                found = access(p[0], F_OK) == 0;
            }
            if (!found)
                return mg_err_set(err, MG_EUSER, "%s: no train.txt, wiki.train.tokens or ptb.train.txt in it "
                                  "(a PATH corpus is such a directory or one text file)", o->corpus);
        } else {
            single = 1;
            snprintf(p[0], sizeof p[0], "%s", o->corpus);
        }
    }
    tr->name = "train";
    va->name = "valid";
    int rc = read_split(tr, p[0], hint, &bufs[0], err);
    if (!rc && c) rc = check_sum(dir, rel[0], p[0], tr->text, tr->n, err);
    if (rc) return rc;
    if (single) {
        size_t cut = split_point(tr->text, tr->n);
        snprintf(va->path, sizeof va->path, "%s", tr->path);
        va->text = tr->text + cut;
        va->n = tr->n - cut;
        tr->n = cut;
        return MG_OK;
    }
    rc = read_split(va, p[1], hint, &bufs[1], err);
    if (!rc && c) rc = check_sum(dir, rel[1], p[1], va->text, va->n, err);
    return rc;
}

/* ---- tokenize and write -------------------------------------------------------------- */

typedef struct tokenizer {
    int bpe;
    mg_tok_word word;
    mg_tok_bpe gpt2;
} tokenizer;

static int load_tokenizer(tokenizer *t, const char *dir, const char *dir_from, const split *train, mg_err *err)
{
    if (!t->bpe) return mg_tok_word_build(&t->word, train->text, train->n, err);
    char enc[PATH_MAX], merges[PATH_MAX], hint[PATH_MAX + 128];
    if (join(enc, sizeof enc, dir, "gpt2/encoder.json") || join(merges, sizeof merges, dir, "gpt2/vocab.bpe"))
        return mg_err_set(err, MG_EUSER, "%s: path too long", dir);
    snprintf(hint, sizeof hint, "%s", dir_from);
    /* Name a missing file ourselves: jansson's message would not carry the hint. */
    for (int i = 0; i < 2; i++)
        if (access(i ? merges : enc, R_OK))
            return mg_err_set(err, MG_EUSER, "%s: cannot open: %s (%s)", i ? merges : enc, strerror(errno), hint);
    char *buf;
    size_t n;
    int rc = MG_OK;
    for (int i = 0; i < 2 && !rc; i++) {
        const char *path = i ? merges : enc;
        if (!(rc = mg_read_file(path, hint, &buf, &n, err))) {
            rc = check_sum(dir, i ? "gpt2/vocab.bpe" : "gpt2/encoder.json", path, buf, n, err);
            free(buf);
        }
    }
    return rc ? rc : mg_tok_bpe_load(&t->gpt2, enc, merges, err);
}

static int write_split(tokenizer *t, const data_opts *o, const split *s, const char *outdir, mg_err *err)
{
    mg_u32v ids = {0};
    mg_tok_stats st = {0};
    int rc = t->bpe ? mg_tok_bpe_encode(&t->gpt2, s->text, s->n, &ids, err)
                    : mg_tok_word_encode(&t->word, s->text, s->n, &ids, &st, err);
    mg_tokfile_info info;
    memset(&info, 0, sizeof info);
    info.vocab = t->bpe ? t->gpt2.vocab : mg_tok_word_vocab(&t->word);
    info.n_words = t->bpe ? mg_tok_word_count(s->text, s->n) : st.words;
    info.n_unk = st.unk;
    snprintf(info.tokenizer, sizeof info.tokenizer, "%s", o->tokenizer);
    if (strlen(o->corpus) < sizeof info.corpus) memcpy(info.corpus, o->corpus, strlen(o->corpus));
    char path[PATH_MAX], file[16];
    snprintf(file, sizeof file, "%s.tok", s->name);
    if (!rc && join(path, sizeof path, outdir, file)) rc = mg_err_set(err, MG_EUSER, "-o %s: path too long", outdir);
    if (!rc) rc = mg_tokfile_write(path, &info, ids.v, ids.n, err);
    if (!rc) {
        printf("  %-9s %10zu tokens  %10llu words", s->name, ids.n, (unsigned long long)info.n_words);
        if (!t->bpe) printf("  %llu <unk> for words not in train", (unsigned long long)info.n_unk);
        printf("  (%s, %zu bytes)\n", s->path, s->n);
    }
    mg_u32v_free(&ids);
    return rc;
}

static int run(const data_opts *o, mg_err *err)
{
    char dir[PATH_MAX], outdir[PATH_MAX], from[PATH_MAX + 128];
    const char *src;
    int rc = mg_data_dir(o->data_dir, dir, sizeof dir, &src, err);
    if (rc) return rc;
    /* The hint for a missing input: which data directory was used and why. */
    if (!strcmp(src, dir)) snprintf(from, sizeof from, "data directory %s; set --data-dir or $MOEGEN_DATA_DIR", dir);
    else snprintf(from, sizeof from, "data directory %s, from %s; see moegen data --help", dir, src);
    if (o->outdir) snprintf(outdir, sizeof outdir, "%s", o->outdir);
    else mg_data_default_outdir(o->corpus, o->tokenizer, outdir, sizeof outdir);
    split train, valid;
    memset(&train, 0, sizeof train);
    memset(&valid, 0, sizeof valid);
    char *bufs[2] = {NULL, NULL};
    tokenizer t;
    memset(&t, 0, sizeof t);
    t.bpe = !strcmp(o->tokenizer, "gpt2");
    mg_tok_word_init(&t.word);
    rc = read_corpus(o, dir, from, &train, &valid, bufs, err);
    if (!rc) rc = load_tokenizer(&t, dir, from, &train, err);
    if (!rc) {
        mg_err e;
        if (mg_mkdir_p(outdir, &e)) {
            /* mg_mkdir_p speaks for the cache; say which flag this directory came from. */
            const char *m = strncmp(e.msg, "cache: ", 7) ? e.msg : e.msg + 7;
            rc = mg_err_set(err, MG_EUSER, "-o %s: %s", outdir, m);
        }
    }
    if (!rc) {
        uint32_t vocab = t.bpe ? t.gpt2.vocab : mg_tok_word_vocab(&t.word);
        printf("data: %s, tokenizer %s, vocabulary %u\n", o->corpus, o->tokenizer, vocab);
        rc = write_split(&t, o, &train, outdir, err);
    }
    if (!rc) rc = write_split(&t, o, &valid, outdir, err);
    if (!rc) {
        char path[PATH_MAX];
        if (join(path, sizeof path, outdir, "vocab.txt")) rc = mg_err_set(err, MG_EUSER, "-o %s: path too long", outdir);
        else rc = t.bpe ? mg_tok_bpe_save_vocab(&t.gpt2, path, err) : mg_tok_word_save(&t.word, path, err);
    }
    if (!rc) printf("data: wrote %s/train.tok, valid.tok and vocab.txt\n", outdir);
    mg_tok_word_free(&t.word);
    if (t.bpe) mg_tok_bpe_free(&t.gpt2);
    free(bufs[0]);
    free(bufs[1]);
    return rc;
}

/* ---- the verb ------------------------------------------------------------------------ */

static int fail(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "moegen: data: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return MG_EUSER;
}

int mg_cmd_data(int argc, char **argv)
{
    data_opts o = {.tokenizer = "word"};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); return 0; }
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], **dst = NULL;
        if (!strcmp(a, "--corpus")) dst = &o.corpus;
        else if (!strcmp(a, "--tokenizer")) dst = &o.tokenizer;
        else if (!strcmp(a, "--data-dir")) dst = &o.data_dir;
        else if (!strcmp(a, "-o")) dst = &o.outdir;
        else if (a[0] == '-') return fail("unknown option '%s' (see moegen data --help)%s", a, "");
        else return fail("unexpected argument '%s' (the corpus goes after --corpus)%s", a, "");
        if (i + 1 >= argc || !argv[i + 1][0]) return fail("%s needs a value%s", a, "");
        *dst = argv[++i];
    }
    if (!o.corpus) return fail("missing --corpus (usage: moegen data --corpus NAME|PATH [--tokenizer word|gpt2]%s%s)", "", "");
    if (strcmp(o.tokenizer, "word") && strcmp(o.tokenizer, "gpt2"))
        return fail("--tokenizer = '%s': must be one of word, gpt2%s", o.tokenizer, "");
    mg_err err;
    mg_err_clear(&err);
    int rc = run(&o, &err);
    if (rc) fprintf(stderr, "moegen: %s\n", err.msg);
    return rc;
}
