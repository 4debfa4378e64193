/* test_data: token files, the word-level and GPT-2 tokenizers, the loader and `moegen data`.
 * The corpora are read from ../shared/data (or $MOEGEN_DATA_DIR), never copied into the repo. */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_loader.h"
#include "mg_rng.h"
#include "mg_tok.h"
#include "mg_tokfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    return mg_test_tmpdir(tmp, sizeof tmp, "data");
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

/* The shared data directory, or NULL (the test is then skipped). */
static const char *data_dir(void)
{
    const char *env = getenv("MOEGEN_DATA_DIR");
    const char *d = env && *env ? env : "../shared/data";
    struct stat st;
    return stat(d, &st) == 0 && S_ISDIR(st.st_mode) ? d : NULL;
}

#define NEED_DATA(d) do { if (!(d)) { print_message("skipped: no ../shared/data\n"); skip(); } } while (0)

static char *read_all(const char *path, size_t *n)
{
    char *buf;
    mg_err err;
    mg_err_clear(&err);
    if (mg_read_file(path, NULL, &buf, n, &err)) {
        print_error("%s\n", err.msg);
        fail();
    }
    return buf;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void tmp_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmp, name); }

/* ---- token files --------------------------------------------------------------------- */

static void write_tok(const char *path, uint32_t vocab, const uint32_t *ids, size_t n)
{
    mg_tokfile_info info;
    memset(&info, 0, sizeof info);
    info.vocab = vocab;
    info.n_words = 1234;
    info.n_unk = 5;
    strcpy(info.tokenizer, "word");
    strcpy(info.corpus, "wikitext-2");
    mg_err err;
    mg_err_clear(&err);
    int rc = mg_tokfile_write(path, &info, ids, n, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
}

static void test_tokfile_round_trip(void **state)
{
    (void)state;
    static const uint32_t vocabs[] = {300, 65536, 70000};
    uint32_t ids[1000];
    mg_rng r;
    mg_rng_seed(&r, 7);
    for (int v = 0; v < 3; v++) {
        for (size_t i = 0; i < 1000; i++) ids[i] = (uint32_t)(mg_rng_u64(&r) % vocabs[v]);
        ids[0] = vocabs[v] - 1;
        char path[300];
        tmp_path(path, sizeof path, "rt.tok");
        write_tok(path, vocabs[v], ids, 1000);
        mg_tokfile tf;
        mg_err err;
        mg_err_clear(&err);
        assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
        assert_int_equal(tf.info.vocab, vocabs[v]);
        assert_int_equal(tf.info.width, vocabs[v] <= 65536 ? 2 : 4);
        assert_int_equal(tf.info.n_tokens, 1000);
        assert_int_equal(tf.info.n_words, 1234);
        assert_int_equal(tf.info.n_unk, 5);
        assert_string_equal(tf.info.tokenizer, "word");
        assert_string_equal(tf.info.corpus, "wikitext-2");
        for (size_t i = 0; i < 1000; i++) assert_int_equal(mg_tokfile_at(&tf, i), ids[i]);
        size_t width = tf.info.width;
        mg_tokfile_close(&tf);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((size_t)st.st_size, MG_TOKFILE_HDR + 1000 * width);
    }
    /* An empty file is valid; a token outside the vocabulary is refused. */
    char path[300];
    tmp_path(path, sizeof path, "empty.tok");
    write_tok(path, 10, NULL, 0);
    mg_tokfile tf;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
    assert_int_equal(tf.info.n_tokens, 0);
    mg_tokfile_close(&tf);
    mg_tokfile_info info = {.vocab = 10};
    uint32_t bad = 10;
    assert_int_equal(mg_tokfile_write(path, &info, &bad, 1, &err), MG_EINTERNAL);
    mg_assert_contains(err.msg, "token 10 at 0 is outside the vocabulary (10)");
}

/* Opens path, expecting failure with exactly msg. */
static void expect_open_error(const char *path, const char *msg)
{
    mg_tokfile tf;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), MG_EUSER);
    assert_string_equal(err.msg, msg);
}

static void test_tokfile_errors(void **state)
{
    (void)state;
    char path[300], msg[1024];
    uint32_t ids[100];
    for (int i = 0; i < 100; i++) ids[i] = (uint32_t)i;
    tmp_path(path, sizeof path, "nope.tok");
    snprintf(msg, sizeof msg, "%s: cannot open: No such file or directory (make it with: moegen data --corpus NAME)", path);
    expect_open_error(path, msg);

    tmp_path(path, sizeof path, "t.tok");
    write_tok(path, 100, ids, 100);
    size_t n;
    char *good = read_all(path, &n);
    char *bad = malloc(n);
    assert_non_null(bad);
    const char *rerun = "rerun: moegen data --corpus wikitext-2 --tokenizer word -o";

    memcpy(bad, good, n);  /* one flipped token */
    bad[n - 7] ^= 1;
    write_bytes(path, bad, n);
    snprintf(msg, sizeof msg, "%s: checksum mismatch (file corrupt or truncated; %s %s)", path, rerun, tmp);
    expect_open_error(path, msg);

    memcpy(bad, good, n);  /* a header field the size check cannot see (the word count) */
    bad[33] ^= 0x40;
    write_bytes(path, bad, n);
    expect_open_error(path, msg);

    write_bytes(path, good, n - 2);  /* truncated payload */
    snprintf(msg, sizeof msg, "%s: %zu bytes, the header says 128 + 100 tokens x 2 bytes (file corrupt or truncated; "
             "%s %s)", path, n - 2, rerun, tmp);
    expect_open_error(path, msg);

    write_bytes(path, good, 50);  /* truncated header */
    snprintf(msg, sizeof msg, "%s: truncated: 50 bytes, less than the 128-byte header (make it with: moegen data "
             "--corpus NAME)", path);
    expect_open_error(path, msg);

    memcpy(bad, good, n);
    memcpy(bad, "GPT2TOK!", 8);
    write_bytes(path, bad, n);
    snprintf(msg, sizeof msg, "%s: not a moegen token file (bad magic; make it with: moegen data --corpus NAME)", path);
    expect_open_error(path, msg);

    memcpy(bad, good, n);
    bad[8] = 2;
    write_bytes(path, bad, n);
    snprintf(msg, sizeof msg, "%s: token file version 2, this moegen reads version 1 (%s %s)", path, rerun, tmp);
    expect_open_error(path, msg);

    memcpy(bad, good, n);
    bad[20] = 3;
    write_bytes(path, bad, n);
    snprintf(msg, sizeof msg, "%s: corrupt header (header 128 bytes, token width 3, vocab 100; %s %s)", path, rerun, tmp);
    expect_open_error(path, msg);

    /* The caller's hint replaces the default for a missing file. */
    tmp_path(path, sizeof path, "missing.tok");
    mg_tokfile tf;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tokfile_open(path, "run: moegen data --corpus ptb", &tf, &err), MG_EUSER);
    mg_assert_contains(err.msg, "missing.tok: cannot open: No such file or directory (run: moegen data --corpus ptb)");
    free(bad);
    free(good);
}

/* ---- word level ---------------------------------------------------------------------- */

static void test_word_wikitext2(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    char path[512];
    size_t n;
    snprintf(path, sizeof path, "%s/wikitext-2/wiki.train.tokens", d);
    char *train = read_all(path, &n);
    mg_tok_word w;
    mg_tok_word_init(&w);
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tok_word_build(&w, train, n, &err), 0);
    assert_int_equal(mg_tok_word_vocab(&w), 33278);  /* data/README.md */
    assert_int_equal(w.eos, 0);                       /* the first line is empty */
    mg_u32v ids = {0};
    mg_tok_stats st;
    assert_int_equal(mg_tok_word_encode(&w, train, n, &ids, &st, &err), 0);
    assert_int_equal(ids.n, 2088628);
    assert_int_equal(st.lines, 36718);
    assert_int_equal(st.unk, 0);
    assert_int_equal(st.words, 2088628);
    assert_int_equal(mg_tok_word_count(train, n), 2088628);
    /* PyTorch's Dictionary order: " = Valkyria Chronicles III = " is line 2. */
    assert_int_equal(ids.v[0], 0);
    assert_int_equal(ids.v[1], 1);
    assert_int_equal(ids.v[2], 2);
    assert_int_equal(ids.v[5], 1);
    free(train);

    snprintf(path, sizeof path, "%s/wikitext-2/wiki.valid.tokens", d);
    char *valid = read_all(path, &n);
    ids.n = 0;
    assert_int_equal(mg_tok_word_encode(&w, valid, n, &ids, &st, &err), 0);
    assert_int_equal(ids.n, 217646);
    assert_int_equal(st.unk, 0);
    /* Round trip up to whitespace: each line's words joined by one space. */
    mg_sb sb, norm;
    mg_sb_init(&sb);
    mg_sb_init(&norm);
    assert_int_equal(mg_tok_word_decode(&w, ids.v, ids.n, &sb, &err), 0);
    for (size_t i = 0, line_start = 1, in_word = 0; i < n; i++) {
        char c = valid[i];
        if (c == '\n') { mg_sb_putn(&norm, "\n", 1); line_start = 1; in_word = 0; continue; }
        if (c == ' ') { in_word = 0; continue; }
        if (!in_word && !line_start) mg_sb_putn(&norm, " ", 1);
        mg_sb_putn(&norm, &c, 1);
        in_word = 1;
        line_start = 0;
    }
    assert_int_equal(sb.len, norm.len);
    assert_memory_equal(sb.buf, norm.buf, sb.len);
    mg_sb_free(&sb);
    mg_sb_free(&norm);
    free(valid);

    /* The vocabulary file reloads to the same ids. */
    snprintf(path, sizeof path, "%s/vocab.txt", tmp);
    assert_int_equal(mg_tok_word_save(&w, path, &err), 0);
    mg_tok_word w2;
    mg_tok_word_init(&w2);
    assert_int_equal(mg_tok_word_load(&w2, path, &err), 0);
    assert_int_equal(mg_tok_word_vocab(&w2), 33278);
    assert_int_equal(w2.eos, w.eos);
    assert_int_equal(w2.unk, w.unk);
    for (size_t i = 0; i < 33278; i += 97) {
        size_t l1, l2;
        const char *a = mg_hmap_key(&w.map, i, &l1), *b = mg_hmap_key(&w2.map, i, &l2);
        assert_int_equal(l1, l2);
        assert_memory_equal(a, b, l1);
    }
    mg_tok_word_free(&w2);
    mg_tok_word_free(&w);
    mg_u32v_free(&ids);
}

static void test_word_rules(void **state)
{
    (void)state;
    /* \r\n, a lone \r, an empty line, Python whitespace (NBSP, U+001C, U+3000) between
     * words, and a last line without a newline, which still gets its <eos>. */
    const char train[] = " the cat\r\nsat\ron\n\nthe\xc2\xa0mat\x1c" "cat\xe3\x80\x80sat";
    mg_tok_word w;
    mg_tok_word_init(&w);
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tok_word_build(&w, train, sizeof train - 1, &err), 0);
    /* the cat <eos> sat <eos> on <eos> <eos> the mat cat sat <eos>; <unk> appended */
    assert_int_equal(mg_tok_word_vocab(&w), 7);
    assert_int_equal(w.eos, 2);
    assert_int_equal(w.unk, 6);
    mg_u32v ids = {0};
    mg_tok_stats st;
    assert_int_equal(mg_tok_word_encode(&w, train, sizeof train - 1, &ids, &st, &err), 0);
    static const uint32_t want[] = {0, 1, 2, 3, 2, 4, 2, 2, 0, 5, 1, 3, 2};
    assert_int_equal(ids.n, sizeof want / sizeof *want);
    assert_memory_equal(ids.v, want, sizeof want);
    assert_int_equal(st.lines, 5);
    /* Unseen words become <unk>, counted; the text round-trips up to whitespace. */
    const char valid[] = "the dog sat\n  on   a mat  \n";
    ids.n = 0;
    assert_int_equal(mg_tok_word_encode(&w, valid, sizeof valid - 1, &ids, &st, &err), 0);
    assert_int_equal(st.unk, 2);
    assert_int_equal(st.tokens, 8);
    mg_sb sb;
    mg_sb_init(&sb);
    assert_int_equal(mg_tok_word_decode(&w, ids.v, ids.n, &sb, &err), 0);
    assert_string_equal(sb.buf, "the <unk> sat\non <unk> mat\n");
    mg_sb_free(&sb);
    /* Decoding then encoding gives the ids back. */
    mg_sb_init(&sb);
    assert_int_equal(mg_tok_word_decode(&w, want, sizeof want / sizeof *want, &sb, &err), 0);
    ids.n = 0;
    assert_int_equal(mg_tok_word_encode(&w, sb.buf, sb.len, &ids, &st, &err), 0);
    assert_int_equal(ids.n, sizeof want / sizeof *want);
    assert_memory_equal(ids.v, want, sizeof want);
    mg_sb_free(&sb);
    uint32_t bad = 7;
    mg_sb_init(&sb);
    assert_int_equal(mg_tok_word_decode(&w, &bad, 1, &sb, &err), MG_EUSER);
    assert_string_equal(err.msg, "word tokenizer: id 7 at position 0 is outside the vocabulary (7 words)");
    mg_sb_free(&sb);
    mg_u32v_free(&ids);
    mg_tok_word_free(&w);
}

/* ---- GPT-2 BPE ----------------------------------------------------------------------- */

static int load_gpt2(mg_tok_bpe *b, const char *d)
{
    char enc[512], merges[512];
    snprintf(enc, sizeof enc, "%s/gpt2/encoder.json", d);
    snprintf(merges, sizeof merges, "%s/gpt2/vocab.bpe", d);
    mg_err err;
    mg_err_clear(&err);
    int rc = mg_tok_bpe_load(b, enc, merges, &err);
    if (rc) print_error("%s\n", err.msg);
    return rc;
}

static void test_bpe_expected_ids(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    mg_tok_bpe b;
    assert_int_equal(load_gpt2(&b, d), 0);
    assert_int_equal(b.vocab, 50257);
    assert_int_equal(b.eot, 50256);
    assert_int_equal(b.n_merges, 50000);
    size_t n, m;
    char *text = read_all("tests/data/bpe_sample.txt", &n);
    char *want_txt = read_all("tests/data/bpe_sample.ids", &m);
    mg_u32v want = {0}, got = {0};
    for (char *p = want_txt, *end; *p; p = end) {
        unsigned long v = strtoul(p, &end, 10);
        if (end == p) break;
        assert_int_equal(mg_u32v_push(&want, (uint32_t)v), 0);
    }
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tok_bpe_encode(&b, text, n, &got, &err), 0);
    size_t first = 0;
    while (first < got.n && first < want.n && got.v[first] == want.v[first]) first++;
    if (first < got.n || first < want.n)
        print_error("first difference at id %zu of %zu (expected %zu): got %u, expected %u\n", first, got.n, want.n,
                    first < got.n ? got.v[first] : 0, first < want.n ? want.v[first] : 0);
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.v, want.v, got.n * sizeof *got.v);
    mg_sb sb;
    mg_sb_init(&sb);
    assert_int_equal(mg_tok_bpe_decode(&b, got.v, got.n, &sb, &err), 0);
    assert_int_equal(sb.len, n);
    assert_memory_equal(sb.buf, text, n);
    /* The cache gives the same ids the second time. */
    got.n = 0;
    assert_int_equal(mg_tok_bpe_encode(&b, text, n, &got, &err), 0);
    assert_memory_equal(got.v, want.v, want.n * sizeof *got.v);
    mg_sb_free(&sb);
    mg_u32v_free(&got);
    mg_u32v_free(&want);
    free(text);
    free(want_txt);
    mg_tok_bpe_free(&b);
}

static void test_bpe_round_trip_random_bytes(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    mg_tok_bpe b;
    assert_int_equal(load_gpt2(&b, d), 0);
    mg_rng r;
    mg_rng_seed(&r, 42);
    /* Random bytes (mostly invalid UTF-8), then random valid UTF-8 mixed with spaces. */
    static const char *const pieces[] = {" ", "  ", "\n", "\t", "'s", "'ll", "a", "Z", "7", "\xc3\xa9", "\xe6\x97\xa5",
                                         "\xf0\x9f\x98\x80", "\xc2\xa0", "!", "\xcc\x81", "\xe3\x80\x80", "\r\n"};
    unsigned char buf[512];
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 0, len = 1 + mg_rng_u64(&r) % 300;
        if (iter % 2 == 0) {
            for (; n < len; n++) buf[n] = (unsigned char)mg_rng_u64(&r);
        } else {
            while (n < len) {
                const char *p = pieces[mg_rng_u64(&r) % (sizeof pieces / sizeof *pieces)];
                memcpy(buf + n, p, strlen(p));
                n += strlen(p);
            }
        }
        mg_u32v ids = {0};
        mg_err err;
        mg_err_clear(&err);
        assert_int_equal(mg_tok_bpe_encode(&b, (const char *)buf, n, &ids, &err), 0);
        assert_true(ids.n >= 1 && ids.n <= n);
        mg_sb sb;
        mg_sb_init(&sb);
        assert_int_equal(mg_tok_bpe_decode(&b, ids.v, ids.n, &sb, &err), 0);
        assert_int_equal(sb.len, n);
        assert_memory_equal(sb.buf, buf, n);
        mg_sb_free(&sb);
        mg_u32v_free(&ids);
    }
    mg_tok_bpe_free(&b);
}

static void test_bpe_pretokenizer(void **state)
{
    (void)state;
    /* GPT-2's regex on the cases that need care; '|' marks the piece ends. */
    static const struct { const char *in, *want; } cases[] = {
        {"Hello world", "Hello| world"},
        {"it's they'll I'M", "it|'s| they|'ll| I|'|M"},
        {"a  b", "a| | b"},                      /* a space run gives its last space to the word */
        {"a \n\nb", "a| \n|\n|b"},            /* only a ' ' can lead a word */
        {"x   ", "x|   "},                       /* a trailing run stays whole */
        {"1,234.5", "1|,|234|.|5"},
        {" 42abc", " 42|abc"},
        {"caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", "caf\xc3\xa9| \xe6\x97\xa5\xe6\x9c\xac"},
        {"!!! ??", "!!!| ??"},
        {"\xc2\xa0x", "\xc2\xa0|x"},              /* NBSP is \s but not the optional ' ' */
        {"\xff\xfe a", "\xff\xfe| a"},           /* invalid bytes are punctuation */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const unsigned char *s = (const unsigned char *)cases[c].in;
        size_t n = strlen(cases[c].in);
        char got[128];
        size_t g = 0;
        for (size_t i = 0; i < n;) {
            size_t e = mg_gpt2_piece_end(s, n, i);
            assert_true(e > i && e <= n);
            if (i) got[g++] = '|';
            memcpy(got + g, s + i, e - i);
            g += e - i;
            i = e;
        }
        got[g] = 0;
        assert_string_equal(got, cases[c].want);
    }
}

static void test_bpe_load_errors(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    char enc[512], merges[300], bad[300];
    snprintf(enc, sizeof enc, "%s/gpt2/encoder.json", d);
    tmp_path(bad, sizeof bad, "bad.json");
    write_bytes(bad, "{\"a\": 0,\n \"b\": }", 16);
    tmp_path(merges, sizeof merges, "merges.bpe");
    write_bytes(merges, "#version: 0.2\nĠ t\nĠt\n", 22);
    mg_tok_bpe b;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tok_bpe_load(&b, bad, merges, &err), MG_EUSER);
    mg_assert_contains(err.msg, "bad.json:2: JSON error: ");
    mg_assert_contains(err.msg, "(compare it with SHA256SUMS in the data directory)");
    assert_int_equal(mg_tok_bpe_load(&b, enc, merges, &err), MG_EUSER);
    char msg[600];
    snprintf(msg, sizeof msg, "%s:3: expected two tokens separated by one space (compare it with SHA256SUMS in the "
             "data directory)", merges);
    assert_string_equal(err.msg, msg);
}

/* ---- loader -------------------------------------------------------------------------- */

enum { LN = 10007, LB = 4, LT = 16 };

/* A token file whose token i is i, so a window's tokens say where it starts. */
static void open_positions(mg_tokfile *tf)
{
    static uint32_t ids[LN];
    for (uint32_t i = 0; i < LN; i++) ids[i] = i;
    char path[300];
    tmp_path(path, sizeof path, "pos.tok");
    write_tok(path, 65536, ids, LN);
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tokfile_open(path, NULL, tf, &err), 0);
}

static mg_loader *open_loader(const mg_tokfile *tf, uint64_t seed, mg_loader_order order, int sync)
{
    mg_loader_opts o = {.batch = LB, .seq_len = LT, .seed = seed, .order = order, .sync = sync, .name = "pos.tok"};
    mg_loader *L;
    mg_err err;
    mg_err_clear(&err);
    int rc = mg_loader_open(&L, tf, &o, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return L;
}

/* The next n batches, concatenated. */
static void take(mg_loader *L, int n, int32_t *out)
{
    for (int i = 0; i < n; i++) {
        mg_batch b;
        mg_err err;
        mg_err_clear(&err);
        assert_int_equal(mg_loader_next(L, &b, &err), 0);
        assert_int_equal(b.B, LB);
        assert_int_equal(b.T, LT);
        memcpy(out + (size_t)i * LB * (LT + 1), b.tok, sizeof(int32_t) * LB * (LT + 1));
    }
}

static void test_loader_random_windows(void **state)
{
    (void)state;
    mg_tokfile tf;
    open_positions(&tf);
    enum { K = 200, LEN = K * LB * (LT + 1) };
    static int32_t a[LEN], b[LEN], c[LEN];
    mg_loader *L1 = open_loader(&tf, 1, MG_LOADER_RANDOM, 0), *L2 = open_loader(&tf, 1, MG_LOADER_RANDOM, 1),
              *L3 = open_loader(&tf, 2, MG_LOADER_RANDOM, 0);
    take(L1, K, a);
    take(L2, K, b);
    take(L3, K, c);
    /* Same seed: the same batches, with or without the prefetch thread; another seed differs. */
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    for (int r = 0; r < K * LB; r++) {
        const int32_t *row = a + r * (LT + 1);
        assert_true(row[0] >= 0 && row[0] + LT < LN);
        for (int t = 1; t <= LT; t++) assert_int_equal(row[t], row[0] + t);
    }
    uint64_t tokens;
    double epochs;
    mg_loader_seen(L1, &tokens, &epochs);
    assert_int_equal(tokens, (uint64_t)K * LB * LT);
    assert_true(epochs > (double)K * LB * LT / LN - 1e-9 && epochs < (double)K * LB * LT / LN + 1e-9);
    assert_int_equal(mg_loader_pinned(L1), 0);  /* no CUDA device here */
    /* batch_at agrees with what next() handed out. */
    int32_t one[LB * (LT + 1)];
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_loader_batch_at(L1, 37, one, &err), 0);
    assert_memory_equal(one, a + 37 * LB * (LT + 1), sizeof one);
    mg_loader_close(L1);
    mg_loader_close(L2);
    mg_loader_close(L3);
    mg_tokfile_close(&tf);
}

static void test_loader_epochs(void **state)
{
    (void)state;
    mg_tokfile tf;
    open_positions(&tf);
    const int W = (LN - 1) / LT;             /* 625 windows */
    const int K = (2 * W + LB - 1) / LB + 1; /* a bit over two epochs */
    int32_t *a = malloc(sizeof(int32_t) * (size_t)K * LB * (LT + 1));
    assert_non_null(a);
    mg_loader *L = open_loader(&tf, 9, MG_LOADER_EPOCH, 0);
    take(L, K, a);
    /* Each epoch visits every window (starting at a multiple of T) exactly once. */
    char *seen = calloc((size_t)W, 1);
    int same_order = 1;
    for (int e = 0; e < 2; e++) {
        memset(seen, 0, (size_t)W);
        for (int w = 0; w < W; w++) {
            const int32_t *row = a + (size_t)(e * W + w) * (LT + 1);
            assert_int_equal(row[0] % LT, 0);
            assert_int_equal(row[LT], row[0] + LT);
            int idx = row[0] / LT;
            assert_true(idx < W);
            assert_int_equal(seen[idx], 0);
            seen[idx] = 1;
            if (e == 1 && row[0] != a[(size_t)w * (LT + 1)]) same_order = 0;
        }
    }
    assert_false(same_order);                /* each epoch is shuffled anew */
    uint64_t tokens;
    double epochs;
    mg_loader_seen(L, &tokens, &epochs);
    assert_true(epochs > 2.0 && epochs < 2.0 + 2.0 * LB / W);
    /* Another loader with the same seed gives the same epochs. */
    int32_t *b = malloc(sizeof(int32_t) * (size_t)K * LB * (LT + 1));
    mg_loader *L2 = open_loader(&tf, 9, MG_LOADER_EPOCH, 1);
    take(L2, K, b);
    assert_memory_equal(a, b, sizeof(int32_t) * (size_t)K * LB * (LT + 1));
    mg_loader_close(L2);
    mg_loader_close(L);
    free(a);
    free(b);
    free(seen);
    mg_tokfile_close(&tf);
}

static void test_loader_resume(void **state)
{
    (void)state;
    mg_tokfile tf;
    open_positions(&tf);
    enum { LEN = 5 * LB * (LT + 1) };
    static int32_t skip_[LB * (LT + 1)], want[LEN], got[LEN];
    for (int order = 0; order < 2; order++) {
        mg_loader *L = open_loader(&tf, 5, (mg_loader_order)order, 0);
        for (int i = 0; i < 170; i++) take(L, 1, skip_);  /* past the end of epoch 1 in epoch order */
        mg_loader_pos pos;
        mg_loader_tell(L, &pos);
        assert_int_equal(pos.batch, 170);
        take(L, 5, want);
        /* A fresh loader (say, after a restart) seeks to the saved position. */
        mg_loader *R = open_loader(&tf, 5, (mg_loader_order)order, 0);
        mg_err err;
        mg_err_clear(&err);
        assert_int_equal(mg_loader_seek(R, &pos, &err), 0);
        take(R, 5, got);
        assert_memory_equal(want, got, sizeof want);
        uint64_t t1, t2;
        mg_loader_seen(L, &t1, NULL);
        mg_loader_seen(R, &t2, NULL);
        assert_int_equal(t1, t2);
        /* Seeking back in the same loader replays. */
        assert_int_equal(mg_loader_seek(L, &pos, &err), 0);
        take(L, 5, got);
        assert_memory_equal(want, got, sizeof want);
        /* A position from another configuration is refused. */
        mg_loader *O = open_loader(&tf, 6, (mg_loader_order)order, 0);
        assert_int_equal(mg_loader_seek(O, &pos, &err), MG_EUSER);
        char msg[400];
        snprintf(msg, sizeof msg, "loader: the saved position is for seed 5, batch 4, seq_len 16, %s order over 10007 "
                 "tokens; this run has seed 6, batch 4, seq_len 16, %s order over 10007 tokens",
                 order ? "epoch" : "random", order ? "epoch" : "random");
        assert_string_equal(err.msg, msg);
        mg_loader_close(O);
        mg_loader_close(R);
        mg_loader_close(L);
    }
    /* A file shorter than one window. */
    mg_loader_opts o = {.batch = 2, .seq_len = LN, .name = "pos.tok"};
    mg_loader *L;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_loader_open(&L, &tf, &o, &err), MG_EUSER);
    assert_string_equal(err.msg, "pos.tok: 10007 tokens, fewer than one window of seq_len + 1 = 10008");
    mg_tokfile_close(&tf);
}

/* ---- moegen data --------------------------------------------------------------------- */

static void test_cli_data_errors(void **state)
{
    (void)state;
    static const struct { const char *args, *msg; } cases[] = {
        {"", "moegen: data: missing --corpus (usage: moegen data --corpus NAME|PATH [--tokenizer word|gpt2])"},
        {"--corpus ptb --tokenizer bpe", "moegen: data: --tokenizer = 'bpe': must be one of word, gpt2"},
        {"--corpus ptb --frob", "moegen: data: unknown option '--frob' (see moegen data --help)"},
        {"ptb", "moegen: data: unexpected argument 'ptb' (the corpus goes after --corpus)"},
        {"--corpus", "moegen: data: --corpus needs a value"},
        {"--corpus /nonexistent/x", "moegen: --corpus /nonexistent/x: not a named corpus (wikitext-2, wikitext-103, "
                                    "ptb, tinyshakespeare) nor an existing file or directory"},
        {"--corpus ptb --data-dir /nonexistent", "moegen: /nonexistent: no such directory (the data directory, from "
                                                 "--data-dir)"},
    };
    mg_proc p;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mg_run(&p, "%s data %s", mg_bin(), cases[i].args);
        assert_int_equal(p.code, 1);
        char want[600];
        snprintf(want, sizeof want, "%s\n", cases[i].msg);
        assert_string_equal(p.out, want);
    }
    /* A named corpus missing from the data directory. */
    mg_run(&p, "%s data --corpus ptb --data-dir %s", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    char msg[1200];
    snprintf(msg, sizeof msg, "moegen: %s/ptb/ptb.train.txt: cannot open: No such file or directory (data directory "
             "%s, from --data-dir; see moegen data --help)\n", tmp, tmp);
    assert_string_equal(p.out, msg);
    mg_run(&p, "%s data --help", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "usage: moegen data --corpus wikitext-2|wikitext-103|ptb|tinyshakespeare|PATH");
}

static void test_cli_data_corrupt_corpus(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    /* A data directory whose PTB train differs from SHA256SUMS. */
    mg_proc p;
    mg_run(&p, "mkdir -p %s/dd/ptb && cp %s/SHA256SUMS %s/dd/ && printf 'x\\n' > %s/dd/ptb/ptb.train.txt && "
           "cp %s/ptb/ptb.valid.txt %s/dd/ptb/", tmp, d, tmp, tmp, d, tmp);
    assert_int_equal(p.code, 0);
    mg_run(&p, "%s data --corpus ptb --data-dir %s/dd -o %s/out", mg_bin(), tmp, tmp);
    assert_int_equal(p.code, 1);
    char msg[1200];
    snprintf(msg, sizeof msg, "moegen: %s/dd/ptb/ptb.train.txt: sha256 73cb3858a687... does not match "
             "%s/dd/SHA256SUMS (file corrupt or changed; restore it from the source named in %s/dd/README.md)\n",
             tmp, tmp, tmp);
    assert_string_equal(p.out, msg);
    /* Nothing was written: inputs are checked before the output directory is made. */
    char out[300];
    tmp_path(out, sizeof out, "out");
    assert_int_not_equal(access(out, F_OK), 0);
}

static void test_cli_data_path_corpus(void **state)
{
    (void)state;
    /* A directory with train.txt + valid.txt, word level; then one file split 90/10. */
    char path[300];
    mg_proc p;
    mg_run(&p, "mkdir -p %s/c && printf 'a b a\\nc b\\n' > %s/c/train.txt && printf 'a z\\n' > %s/c/valid.txt", tmp, tmp,
           tmp);
    mg_run(&p, "%s data --corpus %s/c -o %s/o1", mg_bin(), tmp, tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "data: wrote ");
    tmp_path(path, sizeof path, "o1/valid.tok");
    mg_tokfile tf;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
    /* vocab: a b <eos> c <unk>; valid "a z" -> a <unk> <eos> */
    assert_int_equal(tf.info.vocab, 5);
    assert_int_equal(tf.info.n_tokens, 3);
    assert_int_equal(tf.info.n_unk, 1);
    assert_int_equal(mg_tokfile_at(&tf, 0), 0);
    assert_int_equal(mg_tokfile_at(&tf, 1), 4);
    assert_int_equal(mg_tokfile_at(&tf, 2), 2);
    assert_string_equal(tf.info.tokenizer, "word");
    mg_tokfile_close(&tf);
    size_t n;
    tmp_path(path, sizeof path, "o1/vocab.txt");
    char *vocab = read_all(path, &n);
    assert_string_equal(vocab, "a\nb\n<eos>\nc\n<unk>\n");
    free(vocab);

    /* 10 lines of "wN\n": 90% of 30 bytes = 27 -> train is the first 9 lines. */
    mg_run(&p, "for i in 0 1 2 3 4 5 6 7 8 9; do echo w$i; done > %s/one.txt && %s data --corpus %s/one.txt -o %s/o2",
           tmp, mg_bin(), tmp, tmp);
    assert_int_equal(p.code, 0);
    tmp_path(path, sizeof path, "o2/train.tok");
    assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
    assert_int_equal(tf.info.n_tokens, 18);
    mg_tokfile_close(&tf);
    tmp_path(path, sizeof path, "o2/valid.tok");
    assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
    assert_int_equal(tf.info.n_tokens, 2);
    assert_int_equal(tf.info.n_unk, 1);
    mg_tokfile_close(&tf);
}

static void test_cli_data_gpt2(void **state)
{
    (void)state;
    const char *d = data_dir();
    NEED_DATA(d);
    /* The committed sample as a one-file corpus: train + valid ids concatenate to the
     * expected ids only if the 90% cut falls on a piece boundary, so check via decode. */
    mg_proc p;
    mg_run(&p, "%s data --corpus tests/data/bpe_sample.txt --tokenizer gpt2 --data-dir %s -o %s/g", mg_bin(), d, tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "data: tests/data/bpe_sample.txt, tokenizer gpt2, vocabulary 50257");
    mg_tok_bpe b;
    assert_int_equal(load_gpt2(&b, d), 0);
    size_t n;
    char *text = read_all("tests/data/bpe_sample.txt", &n);
    mg_sb sb;
    mg_sb_init(&sb);
    uint64_t words = 0;
    for (int s = 0; s < 2; s++) {
        char path[300];
        tmp_path(path, sizeof path, s ? "g/valid.tok" : "g/train.tok");
        mg_tokfile tf;
        mg_err err;
        mg_err_clear(&err);
        assert_int_equal(mg_tokfile_open(path, NULL, &tf, &err), 0);
        assert_int_equal(tf.info.vocab, 50257);
        words += tf.info.n_words;
        mg_u32v ids = {0};
        for (uint64_t i = 0; i < tf.info.n_tokens; i++) mg_u32v_push(&ids, mg_tokfile_at(&tf, i));
        assert_int_equal(mg_tok_bpe_decode(&b, ids.v, ids.n, &sb, &err), 0);
        mg_u32v_free(&ids);
        mg_tokfile_close(&tf);
    }
    assert_int_equal(sb.len, n);
    assert_memory_equal(sb.buf, text, n);
    assert_true(words >= mg_tok_word_count(text, n));
    mg_sb_free(&sb);
    free(text);
    mg_tok_bpe_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tokfile_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokfile_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_word_wikitext2, setup, teardown),
        cmocka_unit_test(test_word_rules),
        cmocka_unit_test(test_bpe_expected_ids),
        cmocka_unit_test(test_bpe_round_trip_random_bytes),
        cmocka_unit_test(test_bpe_pretokenizer),
        cmocka_unit_test_setup_teardown(test_bpe_load_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loader_random_windows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loader_epochs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loader_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_data_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_data_corrupt_corpus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_data_path_corpus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_data_gpt2, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
