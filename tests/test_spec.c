/* test_spec: loading, sandboxing, validating and deriving model specs (one test per rule). */
#include "mg_test.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

#include "mg_sb.h"
#include "mg_spec.h"

/* A spec chunk: the built-in tiny base with some fields overridden. */
#define TINY(over) "return moegen.extend(moegen.base('tiny'), " over ")"

static mg_spec spec;
static mg_err err;

static int load(const char *path, const char *lua)
{
    mg_err_clear(&err);
    return mg_spec_load_string(path, lua, strlen(lua), &spec, &err);
}

/* Loads `lua` as specs/x.lua, expects a user error and returns its message. */
static const char *fails(const char *lua)
{
    int rc = load("specs/x.lua", lua);
    if (rc != MG_EUSER) print_error("expected MG_EUSER, got %d (%s)\n", rc, err.msg);
    assert_int_equal(rc, MG_EUSER);
    return err.msg;
}

static void loads(const char *lua)
{
    int rc = load("specs/x.lua", lua);
    if (rc != MG_OK) print_error("unexpected error: %s\n", err.msg);
    assert_int_equal(rc, MG_OK);
}

/* ---------------------------------------------------------------- shipped specs */

static void test_wt2_moe8_fields(void **state)
{
    (void)state;
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    assert_string_equal(spec.name, "wt2-moe8");
    assert_string_equal(spec.path, "specs/wt2-moe8.lua");
    assert_int_equal(spec.model.vocab, 33278);
    assert_int_equal(spec.model.n_kv_head, 8);
    assert_int_equal(spec.model.tie_embeddings, 1);
    assert_int_equal(spec.moe.experts, 8);
    assert_int_equal(spec.moe.top_k, 2);
    assert_int_equal(spec.moe.activation, MG_ACT_SWIGLU);
    assert_int_equal(spec.moe.router, MG_ROUTER_SOFTMAX_TOPK);
    assert_true(spec.moe.aux_loss == 0.01 && spec.moe.z_loss == 0.001);
    assert_int_equal(spec.dtype, MG_DTYPE_BF16);
    assert_string_equal(spec.train.data, "wikitext-2");
    assert_int_equal(spec.train.steps, 4000);
    assert_true(spec.train.dropout == 0.2);
    /* defaults */
    assert_true(spec.model.rope_theta == 10000 && spec.model.norm_eps == 1e-5);
    assert_int_equal(spec.model.d_ff_dense, 2048);
    assert_true(spec.train.min_lr == 1e-4 && spec.train.weight_decay == 0.1);
    assert_true(spec.train.beta1 == 0.9 && spec.train.beta2 == 0.95 && spec.train.grad_clip == 1.0);
    assert_int_equal(spec.train.grad_accum, 1);
    assert_int_equal(spec.train.eval_every, 200);
    assert_int_equal(spec.train.eval_batches, 20);
    assert_int_equal(spec.parallel.zero, 0);
}

static void test_every_shipped_spec_loads(void **state)
{
    (void)state;
    DIR *dir = opendir("specs");
    assert_non_null(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".lua")) continue;
        char path[512];
        snprintf(path, sizeof path, "specs/%s", e->d_name);
        int rc = mg_spec_load(path, &spec, &err);
        if (rc != MG_OK) print_error("%s\n", err.msg);
        assert_int_equal(rc, MG_OK);
        n++;
    }
    closedir(dir);
    assert_true(n >= 8);
}

static void test_tiny_file_matches_builtin_base(void **state)
{
    (void)state;
    char file[65], base[65];
    assert_int_equal(mg_spec_load("specs/tiny.lua", &spec, &err), MG_OK);
    mg_spec_hash(&spec, file);
    loads("return moegen.base('tiny')");
    mg_spec_hash(&spec, base);
    assert_string_equal(file, base);
}

static void test_sweep_computes_values(void **state)
{
    (void)state;
    assert_int_equal(mg_spec_load("specs/sweep-experts.lua", &spec, &err), MG_OK);
    assert_string_equal(spec.name, "sweep-experts-16");
    assert_int_equal(spec.moe.experts, 16);
    assert_int_equal(spec.moe.d_ff, 16);
    assert_int_equal(spec.moe.top_k, 8);
    assert_int_equal(spec.model.d_model, 64); /* from the tiny base */
    assert_int_equal(spec.train.steps, 400);
}

static void test_load_missing_file(void **state)
{
    (void)state;
    assert_int_equal(mg_spec_load("specs/nope.lua", &spec, &err), MG_EUSER);
    assert_string_equal(err.msg, "specs/nope.lua: cannot open spec: No such file or directory "
                        "(HINT: shipped specs are in specs/, e.g. specs/tiny.lua)");
}

/* ---------------------------------------------------------------- the moegen module */

static void test_extend_deep_merges(void **state)
{
    (void)state;
    loads("local a = { model = { vocab = 1, d_model = 2 }, list = { 1, 2 }, s = 'a' }\n"
          "local b = moegen.extend(a, { model = { vocab = 3 }, s = 'b' }, { list = { [2] = 9 } })\n"
          "assert(b.model.vocab == 3 and b.model.d_model == 2, 'merge')\n"
          "assert(b.list[1] == 1 and b.list[2] == 9, 'second override')\n"
          "assert(b.s == 'b' and a.s == 'a' and a.model.vocab == 1, 'inputs untouched')\n"
          "assert(b.model ~= a.model, 'fresh tables')\n"
          "return moegen.base('tiny')");
}

static void test_extend_rejects_non_tables(void **state)
{
    (void)state;
    assert_string_equal(fails("local t = moegen.extend(moegen.base('tiny'), 5)\nreturn t"),
                        "specs/x.lua:1: moegen.extend: argument 2 must be a table (got number)");
    /* A tail call leaves no caller line to point at. */
    assert_string_equal(fails("return moegen.extend(nil)"),
                        "specs/x.lua: moegen.extend: argument 1 must be a table (got nil)");
}

static void test_base_is_a_fresh_copy(void **state)
{
    (void)state;
    loads("local a = moegen.base('tiny'); a.moe.experts = 99\n"
          "assert(moegen.base('tiny').moe.experts == 4, 'base shared')\n"
          "assert(type(moegen.version) == 'string', 'version')\n"
          "return moegen.base('tiny')");
    assert_int_equal(spec.moe.experts, 4);
}

static void test_base_unknown(void **state)
{
    (void)state;
    assert_string_equal(fails("local t = moegen.base('huge')\nreturn t"),
                        "specs/x.lua:1: moegen.base: unknown base 'huge' (known: tiny)");
}

/* ---------------------------------------------------------------- chunk and result */

static void test_must_return_table(void **state)
{
    (void)state;
    assert_string_equal(fails("local x = 1"), "specs/x.lua: spec must return a table (got nil)");
    assert_string_equal(fails("return 'tiny'"), "specs/x.lua: spec must return a table (got string)");
}

static void test_syntax_error_names_line(void **state)
{
    (void)state;
    assert_string_equal(fails("return {\n  name = 'a'\n  model = {}\n}"),
                        "specs/x.lua:3: '}' expected (to close '{' at line 1) near 'model'");
}

static void test_runtime_error_names_line(void **state)
{
    (void)state;
    assert_string_equal(fails("local m\n\nreturn { model = m.x }"),
                        "specs/x.lua:3: attempt to index a nil value (local 'm')");
    assert_string_equal(fails("error('no good')"), "specs/x.lua:1: no good");
    assert_string_equal(fails("error('plain', 0)"), "specs/x.lua: plain");
    assert_string_equal(fails("error({})"), "specs/x.lua: spec raised an error with a table value");
}

/* ---------------------------------------------------------------- sandbox */

static void test_sandbox_no_os(void **state)
{
    (void)state;
    assert_string_equal(fails("os.execute('true')"),
                        "specs/x.lua:1: attempt to index a nil value (global 'os')");
}

static void test_sandbox_no_io(void **state)
{
    (void)state;
    assert_string_equal(fails("io.open('/etc/passwd')"),
                        "specs/x.lua:1: attempt to index a nil value (global 'io')");
}

static void test_sandbox_no_require(void **state)
{
    (void)state;
    assert_string_equal(fails("require('os')"),
                        "specs/x.lua:1: attempt to call a nil value (global 'require')");
}

static void test_sandbox_no_load(void **state)
{
    (void)state;
    assert_string_equal(fails("load('return 1')"),
                        "specs/x.lua:1: attempt to call a nil value (global 'load')");
    assert_string_equal(fails("dofile('/etc/passwd')"),
                        "specs/x.lua:1: attempt to call a nil value (global 'dofile')");
    assert_string_equal(fails("loadfile('/etc/passwd')"),
                        "specs/x.lua:1: attempt to call a nil value (global 'loadfile')");
}

static void test_sandbox_no_string_dump(void **state)
{
    (void)state;
    assert_string_equal(fails("string.dump(print)"),
                        "specs/x.lua:1: attempt to call a nil value (field 'dump')");
    assert_string_equal(fails("return ('x').dump(function() end)"),
                        "specs/x.lua:1: attempt to call a nil value (field 'dump')");
}

static void test_sandbox_no_metatables(void **state)
{
    (void)state;
    assert_string_equal(fails("return getmetatable('').__index.dump"),
                        "specs/x.lua:1: attempt to call a nil value (global 'getmetatable')");
    /* Nothing that reaches around the sandbox is in the environment. */
    loads("for _, n in ipairs({'setmetatable', 'rawget', 'rawset', 'rawequal', 'debug',\n"
          "    'collectgarbage', 'print', '_G', 'utf8', 'coroutine', 'package'}) do\n"
          "  assert(_ENV[n] == nil, n)\n"
          "end\n"
          "assert(string.find == nil and string.gsub == nil and math.randomseed == nil, 'lib')\n"
          "assert(('%d'):format(3) == '3' and ('ab'):rep(2) == 'abab', 'string methods')\n"
          "return moegen.base('tiny')");
}

static void test_sandbox_refuses_binary_chunk(void **state)
{
    (void)state;
    static const char chunk[] = "\x1bLua\x54\x00\x19\x93\r\n\x1a\n";
    assert_int_equal(mg_spec_load_string("specs/x.lua", chunk, sizeof chunk - 1, &spec, &err),
                     MG_EUSER);
    assert_string_equal(err.msg, "specs/x.lua: binary (precompiled) chunks are refused: a spec "
                        "must be Lua source text");
}

static void test_sandbox_memory_limit(void **state)
{
    (void)state;
    const char *want = "specs/x.lua: spec used too much memory (limit 128 MiB)";
    assert_string_equal(fails("return ('x'):rep(1e9)"), want);
    assert_string_equal(fails("return string.rep('x', 2^30)"), want);
    assert_string_equal(fails("local t = {}\nfor i = 1, 1e8 do t[i] = i end"), want);
}

static void test_sandbox_instruction_limit(void **state)
{
    (void)state;
    const char *want = "specs/x.lua: spec ran too long (instruction limit 10000000)";
    assert_string_equal(fails("while true do end"), want);
    /* The sandbox's pcall must not swallow the limit. */
    assert_string_equal(fails("while true do pcall(function() while true do end end) end"), want);
}

static void test_sandbox_time_limit(void **state)
{
    (void)state;
    /* Few instructions, each a 60 MB string compare: only the clock can stop this. */
    assert_string_equal(fails("local a = ('x'):rep(6e7)\nlocal b = a .. 'y'\n"
                              "while true do local _ = a < b end"),
                        "specs/x.lua: spec ran too long (time limit 3 s)");
}

static void test_sandbox_deep_recursion(void **state)
{
    (void)state;
    const char *msg = fails("local function f() return 1 + f() end return f()");
    assert_true(!strncmp(msg, "specs/x.lua:", 12));
    mg_assert_contains(msg, "stack overflow");
}

static void test_sandbox_random_is_deterministic(void **state)
{
    (void)state;
    const char *lua = TINY("{ train = { seed = math.random(1, 1000000) } }");
    loads(lua);
    int first = spec.train.seed;
    loads(lua);
    assert_int_equal(spec.train.seed, first);
}

/* ---------------------------------------------------------------- field names and types */

static void test_unknown_field_suggests(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { expertz = 8 } }")),
                        "specs/x.lua: moe.expertz: unknown field (did you mean 'experts'?)");
    assert_string_equal(fails(TINY("{ modle = {} }")),
                        "specs/x.lua: modle: unknown field (did you mean 'model'?)");
    assert_string_equal(fails(TINY("{ train = { LR = 1 } }")),
                        "specs/x.lua: train.LR: unknown field (did you mean 'lr'?)");
}

static void test_unknown_field_before_values(void **state)
{
    (void)state;
    /* The typo, not the required field it leaves empty, and not the model table missing. */
    assert_string_equal(fails("return { moe = { expertz = 8, top_k = 2, d_ff = 64 } }"),
                        "specs/x.lua: moe.expertz: unknown field (did you mean 'experts'?)");
}

static void test_unknown_field_lists_known(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ optimizer = 'adamw' }")),
                        "specs/x.lua: optimizer: unknown field (known fields: name, model, moe, "
                        "dtype, train, parallel, log)");
    assert_string_equal(fails(TINY("{ parallel = { tp = 2 } }")),
                        "specs/x.lua: parallel.tp: unknown field (did you mean 'dp'?)");
}

static void test_unknown_field_positional(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { 512 } }")),
                        "specs/x.lua: model[1] = 512: unknown field (spec fields are named: "
                        "write name = value)");
    assert_string_equal(fails(TINY("{ [2.5] = true }")),
                        "specs/x.lua: [2.5] = true: unknown field (spec fields are named: "
                        "write name = value)");
}

static void test_required_field_missing(void **state)
{
    (void)state;
    assert_string_equal(fails("return { model = { vocab = 512, n_layer = 2, n_head = 4, seq_len = 64 },\n"
                              "  moe = { experts = 4, top_k = 2, d_ff = 64 } }"),
                        "specs/x.lua: model.d_model: required field is missing");
    assert_string_equal(fails("return { model = { vocab = 512 } }"),
                        "specs/x.lua: model.d_model: required field is missing");
    assert_string_equal(fails("local t = moegen.base('tiny'); t.moe = nil; return t"),
                        "specs/x.lua: moe: required field is missing");
}

static void test_type_integer(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { d_model = '512' } }")),
                        "specs/x.lua: model.d_model = \"512\": must be an integer");
    assert_string_equal(fails(TINY("{ model = { d_model = 512.5 } }")),
                        "specs/x.lua: model.d_model = 512.5: must be an integer");
    assert_string_equal(fails(TINY("{ model = { vocab = 1e30 } }")),
                        "specs/x.lua: model.vocab = 1e+30: must be an integer in "
                        "[-2147483648, 2147483647]");
    /* Integral floats are integers: computed dims are often floats. */
    loads(TINY("{ model = { d_model = 2^7 } }"));
    assert_int_equal(spec.model.d_model, 128);
}

static void test_type_number(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ train = { lr = '1e-3' } }")),
                        "specs/x.lua: train.lr = \"1e-3\": must be a number");
    assert_string_equal(fails(TINY("{ moe = { aux_loss = math.huge } }")),
                        "specs/x.lua: moe.aux_loss = inf: must be a finite number");
}

static void test_type_boolean(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { tie_embeddings = 1 } }")),
                        "specs/x.lua: model.tie_embeddings = 1: must be a boolean (true or false)");
}

static void test_type_table(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ train = 5 }")), "specs/x.lua: train = 5: must be a table");
}

static void test_type_string(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ train = { data = {} } }")),
                        "specs/x.lua: train.data = {...}: must be a string");
}

static void test_enum_activation(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { activation = 'silu' } }")),
                        "specs/x.lua: moe.activation = \"silu\": must be one of swiglu, geglu, gelu, relu");
}

static void test_enum_router_dtype_schedule(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { router = 'topk' } }")),
                        "specs/x.lua: moe.router = \"topk\": must be one of softmax_topk, "
                        "sigmoid_topk, switch");
    assert_string_equal(fails(TINY("{ dtype = 16 }")),
                        "specs/x.lua: dtype = 16: must be one of bf16, fp16, fp32");
    assert_string_equal(fails(TINY("{ train = { schedule = 'step' } }")),
                        "specs/x.lua: train.schedule = \"step\": must be one of cosine, linear, constant");
}

/* ---------------------------------------------------------------- name */

static void test_name_rule(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ name = 'my model' }")),
                        "specs/x.lua: name = \"my model\": must match [A-Za-z0-9_-]+ (1 to 63 characters)");
    assert_string_equal(fails(TINY("{ name = string.rep('a', 64) }")),
                        "specs/x.lua: name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\": must "
                        "match [A-Za-z0-9_-]+ (1 to 63 characters)");
}

static void test_name_defaults_to_file_stem(void **state)
{
    (void)state;
    assert_int_equal(load("specs/my-sweep_3.lua", "local t = moegen.base('tiny'); t.name = nil; return t"),
                     MG_OK);
    assert_string_equal(spec.name, "my-sweep_3");
}

/* ---------------------------------------------------------------- model rules */

static void test_vocab_range(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { vocab = 1 } }")),
                        "specs/x.lua: model.vocab = 1: must be in [2, 16777216]");
}

static void test_dims_multiple_of_16(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { d_model = 520 } }")),
                        "specs/x.lua: model.d_model = 520: must be a multiple of 16 (kernel vector width)");
    assert_string_equal(fails(TINY("{ moe = { d_ff = 1000 } }")),
                        "specs/x.lua: moe.d_ff = 1000: must be a multiple of 16 (kernel vector width)");
    assert_string_equal(fails(TINY("{ model = { d_ff_dense = 100 } }")),
                        "specs/x.lua: model.d_ff_dense = 100: must be a multiple of 16 (kernel vector width)");
}

static void test_layers_and_seq_len(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { n_layer = 0 } }")),
                        "specs/x.lua: model.n_layer = 0: must be in [1, 1024]");
    assert_string_equal(fails(TINY("{ model = { seq_len = 0 } }")),
                        "specs/x.lua: model.seq_len = 0: must be in [1, 1048576]");
}

static void test_heads_divide_d_model(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { d_model = 512, n_head = 7 } }")),
                        "specs/x.lua: model.n_head = 7: must divide model.d_model = 512");
}

static void test_head_dim_multiple_of_8(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { n_head = 16 } }")),
                        "specs/x.lua: model.n_head = 16: head_dim = model.d_model / model.n_head = 4: "
                        "must be a multiple of 8");
}

static void test_head_dim_at_most_256(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { d_model = 512, n_head = 1 } }")),
                        "specs/x.lua: model.n_head = 1: head_dim = model.d_model / model.n_head = 512: "
                        "must be at most 256");
}

static void test_kv_heads_divide_heads(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { n_kv_head = 3 } }")),
                        "specs/x.lua: model.n_kv_head = 3: must divide model.n_head = 4");
}

static void test_rope_and_norm_eps(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ model = { rope_theta = 0 } }")),
                        "specs/x.lua: model.rope_theta = 0: must be > 0");
    assert_string_equal(fails(TINY("{ model = { norm_eps = 0 } }")),
                        "specs/x.lua: model.norm_eps = 0: must be in (0, 1)");
}

/* ---------------------------------------------------------------- moe rules */

static void test_experts_range(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { experts = 257 } }")),
                        "specs/x.lua: moe.experts = 257: must be in [1, 256]");
}

static void test_top_k_at_most_experts(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { experts = 8, top_k = 9 } }")),
                        "specs/x.lua: moe.top_k = 9: must be in [1, moe.experts = 8]");
}

static void test_switch_needs_top_1(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { router = 'switch' } }")),
                        "specs/x.lua: moe.top_k = 2: must be 1 with moe.router = \"switch\"");
}

static void test_capacity_and_losses(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { capacity_factor = -1 } }")),
                        "specs/x.lua: moe.capacity_factor = -1: must be >= 0");
    assert_string_equal(fails(TINY("{ moe = { z_loss = -0.5 } }")),
                        "specs/x.lua: moe.z_loss = -0.5: must be >= 0");
}

/* moe.drop_policy: an enum with the old behaviour ("position") as its default. */
static void test_drop_policy(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { drop_policy = 'prob' } }")),
                        "specs/x.lua: moe.drop_policy = \"prob\": must be one of position, probability");
    assert_string_equal(fails(TINY("{ moe = { drop_policy = 1 } }")),
                        "specs/x.lua: moe.drop_policy = 1: must be one of position, probability");
    loads(TINY("{}"));
    assert_int_equal(spec.moe.drop_policy, MG_DROP_POSITION);
    loads(TINY("{ moe = { capacity_factor = 1.25, drop_policy = 'probability' } }"));
    assert_int_equal(spec.moe.drop_policy, MG_DROP_PROBABILITY);
    spec.moe.drop_policy = (mg_drop_policy)2;
    mg_err_clear(&err);
    assert_int_equal(mg_spec_validate(&spec, &err), MG_EUSER);
    assert_string_equal(err.msg, "specs/x.lua: moe.drop_policy = 2: must be one of position, probability");
}

/* log = { every = N }: optional table, default 1, at least 1, part of the dump. */
static void test_log_every(void **state)
{
    (void)state;
    loads(TINY("{}"));
    assert_int_equal(spec.log.every, 1);
    loads(TINY("{ log = { every = 25 } }"));
    assert_int_equal(spec.log.every, 25);
    mg_sb text;
    mg_sb_init(&text);
    mg_spec_dump(&spec, &text);
    mg_assert_contains(text.buf, "  log = {\n    every = 25,\n  },\n");
    mg_sb_free(&text);
    assert_string_equal(fails(TINY("{ log = { every = 0 } }")), "specs/x.lua: log.every = 0: must be >= 1");
    assert_string_equal(fails(TINY("{ log = { every = 2.5 } }")),
                        "specs/x.lua: log.every = 2.5: must be an integer");
    assert_string_equal(fails(TINY("{ log = 5 }")), "specs/x.lua: log = 5: must be a table");
}

static void test_every_range(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { every = 3 } }")),
                        "specs/x.lua: moe.every = 3: must be in [0, model.n_layer = 2] (0 = no MoE layer)");
}

static void test_shared_experts_range(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ moe = { shared_experts = -1 } }")),
                        "specs/x.lua: moe.shared_experts = -1: must be in [0, 64]");
}

/* ---------------------------------------------------------------- train rules */

static void test_train_ranges(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ train = { batch = 0 } }")),
                        "specs/x.lua: train.batch = 0: must be >= 1");
    assert_string_equal(fails(TINY("{ train = { lr = 0 } }")),
                        "specs/x.lua: train.lr = 0: must be > 0");
    assert_string_equal(fails(TINY("{ train = { min_lr = 0.01 } }")),
                        "specs/x.lua: train.min_lr = 0.01: must be in [0, train.lr = 0.001]");
    assert_string_equal(fails(TINY("{ train = { warmup = 300 } }")),
                        "specs/x.lua: train.warmup = 300: must be in [0, train.steps = 200]");
    assert_string_equal(fails(TINY("{ train = { dropout = 1 } }")),
                        "specs/x.lua: train.dropout = 1: must be in [0, 1)");
    assert_string_equal(fails(TINY("{ train = { beta2 = 1.5 } }")),
                        "specs/x.lua: train.beta2 = 1.5: must be in [0, 1)");
    assert_string_equal(fails(TINY("{ train = { grad_accum = 0 } }")),
                        "specs/x.lua: train.grad_accum = 0: must be >= 1");
    assert_string_equal(fails(TINY("{ train = { weight_decay = -0.1 } }")),
                        "specs/x.lua: train.weight_decay = -0.1: must be >= 0");
    assert_string_equal(fails(TINY("{ train = { data = '' } }")),
                        "specs/x.lua: train.data = \"\": must be a data set name or a path");
}

/* ---------------------------------------------------------------- parallel rules */

static void test_ep_divides_experts(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ parallel = { ep = 3 } }")),
                        "specs/x.lua: parallel.ep = 3: must divide moe.experts = 4");
}

static void test_dp_and_zero(void **state)
{
    (void)state;
    assert_string_equal(fails(TINY("{ parallel = { dp = 0 } }")),
                        "specs/x.lua: parallel.dp = 0: must be >= 1");
    assert_string_equal(fails(TINY("{ parallel = { zero = 2 } }")),
                        "specs/x.lua: parallel.zero = 2: must be 0 or 1");
}

static void test_validate_filled_struct(void **state)
{
    (void)state;
    assert_int_equal(mg_spec_load("specs/tiny.lua", &spec, &err), MG_OK);
    spec.dtype = (mg_dtype)7;
    assert_int_equal(mg_spec_validate(&spec, &err), MG_EUSER);
    assert_string_equal(err.msg, "specs/tiny.lua: dtype = 7: must be one of bf16, fp16, fp32");
}

/* ---------------------------------------------------------------- derived values */

static void test_derive_wt2_moe8(void **state)
{
    (void)state;
    mg_derived d;
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_spec_derive(&spec, &d);
    /* By hand: d 512, V 33278, L 8, 8 heads of 64, E 8, k 2, ff 1024, SwiGLU (up width 2048).
     * embedding 33278*512 = 17038336 (tied); attention 4*512^2 = 1048576; norms 1024/layer;
     * router 8*512 = 4096; expert 2048*512 + 512*1024 = 1572864. */
    assert_int_equal(d.head_dim, 64);
    assert_int_equal(d.n_moe_layers, 8);
    assert_int_equal(d.n_dense_layers, 0);
    assert_int_equal(d.d_ff_dense, 2048);
    assert_true(d.params_embedding == 17038336.0);
    /* 17038336 + 8*(1048576 + 1024) + 512 + 8*(4096 + 8*1572864) */
    assert_true(d.params_total == 126131712.0);
    /* 17038336 + 8*(1048576 + 1024) + 512 + 8*(4096 + 2*1572864) */
    assert_true(d.params_active == 50634240.0);
    /* 6*(active - embedding + 33278*512) + 6*8*256*512 */
    assert_true(d.flops_per_token == 310096896.0);
    assert_true(d.flops_per_token_fwd == 103365632.0);
    /* bf16 + fp32 master = 6 B/param; grads 4; AdamW 8 */
    assert_true(d.mem_weights == 126131712.0 * 6);
    assert_true(d.mem_grads == 126131712.0 * 4);
    assert_true(d.mem_optimizer == 126131712.0 * 8);
    /* 64*256 tokens * (2 B * (8*4104 + 8*7176 + 512) + 4 B * 33278 logits) */
    assert_true(d.mem_activations == 16384.0 * (2 * 90752 + 4 * 33278));
    assert_true(d.mem_total == d.mem_weights + d.mem_grads + d.mem_optimizer + d.mem_activations);
}

static void test_derive_dense_twin_is_flop_matched(void **state)
{
    (void)state;
    mg_derived moe, dense;
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_spec_derive(&spec, &moe);
    assert_int_equal(mg_spec_load("specs/wt2-dense.lua", &spec, &err), MG_OK);
    mg_spec_derive(&spec, &dense);
    assert_int_equal(dense.n_moe_layers, 0);
    assert_int_equal(dense.n_dense_layers, 8);
    assert_true(dense.params_total == dense.params_active);
    /* The only difference in active weights is the routers: 8 layers * 8 experts * 512. */
    assert_true(moe.params_active - dense.params_active == 8.0 * 8 * 512);
}

static void test_derive_non_gated_experts(void **state)
{
    (void)state;
    mg_derived d;
    assert_int_equal(mg_spec_load("specs/switch-cf125.lua", &spec, &err), MG_OK);
    mg_spec_derive(&spec, &d);
    /* ReLU: up is d_ff wide, expert = 2048*512 + 512*2048 = 2097152; router 16*512 = 8192.
     * 17038336 + 8*(1048576 + 1024) + 512 = 25435648 outside the MoE FFNs. */
    assert_true(d.params_total == 25435648.0 + 8 * (8192 + 16 * 2097152.0));
    assert_true(d.params_active == 25435648.0 + 8 * (8192 + 1 * 2097152.0));
}

static void test_derive_mixtral_matches_published(void **state)
{
    (void)state;
    mg_derived d;
    assert_int_equal(mg_spec_load("specs/mixtral-8x7b.lua", &spec, &err), MG_OK);
    mg_spec_derive(&spec, &d);
    assert_int_equal(d.head_dim, 128);
    assert_true(d.params_total == 46702792704.0); /* "46.7B" */
    assert_true(d.params_active > 12.8e9 && d.params_active < 13.0e9); /* "12.9B" */
}

static void test_derive_every_other_layer(void **state)
{
    (void)state;
    mg_derived d;
    loads(TINY("{ model = { n_layer = 5 }, moe = { every = 2 } }"));
    mg_spec_derive(&spec, &d);
    assert_int_equal(d.n_moe_layers, 2); /* layers 1 and 3 */
    assert_int_equal(d.n_dense_layers, 3);
}

/* ---------------------------------------------------------------- hash and dump */

static void test_hash_stable(void **state)
{
    (void)state;
    char a[65], b[65];
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_spec_hash(&spec, a);
    assert_int_equal(strlen(a), 64);
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_spec_hash(&spec, b);
    assert_string_equal(a, b);
    /* Pinned: manifests and caches key on it. When the canonical dump changes on purpose
     * (a field added), update this and say so in the commit: every spec hash moves. */
    assert_string_equal(a, "23de5a0311b207de1bad115b3ebcaafe48fe5dbf93b6fdf8b4b7048e04f93228");
    /* The path is not part of the spec. */
    snprintf(spec.path, sizeof spec.path, "elsewhere.lua");
    mg_spec_hash(&spec, b);
    assert_string_equal(a, b);
}

static void test_hash_changes_with_any_field(void **state)
{
    (void)state;
    char a[65], b[65];
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_spec_hash(&spec, a);
    spec.train.lr = 1.0000001e-3;
    mg_spec_hash(&spec, b);
    assert_string_not_equal(a, b);
    spec.train.lr = 1e-3;
    spec.parallel.zero = 1;
    mg_spec_hash(&spec, b);
    assert_string_not_equal(a, b);
}

static void test_dump_round_trips(void **state)
{
    (void)state;
    char a[65], b[65];
    mg_sb text;
    mg_sb_init(&text);
    assert_int_equal(mg_spec_load("specs/mixtral-8x7b.lua", &spec, &err), MG_OK);
    mg_spec_hash(&spec, a);
    mg_spec_dump(&spec, &text);
    mg_assert_contains(text.buf, "  model = {\n    vocab = 32000,\n");
    mg_assert_contains(text.buf, "    rope_theta = 1000000,\n");
    mg_assert_contains(text.buf, "    norm_eps = 1e-05,\n");
    loads(text.buf);
    mg_spec_hash(&spec, b);
    assert_string_equal(a, b);
    mg_sb_free(&text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wt2_moe8_fields),
        cmocka_unit_test(test_drop_policy),
        cmocka_unit_test(test_log_every),
        cmocka_unit_test(test_every_shipped_spec_loads),
        cmocka_unit_test(test_tiny_file_matches_builtin_base),
        cmocka_unit_test(test_sweep_computes_values),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_extend_deep_merges),
        cmocka_unit_test(test_extend_rejects_non_tables),
        cmocka_unit_test(test_base_is_a_fresh_copy),
        cmocka_unit_test(test_base_unknown),
        cmocka_unit_test(test_must_return_table),
        cmocka_unit_test(test_syntax_error_names_line),
        cmocka_unit_test(test_runtime_error_names_line),
        cmocka_unit_test(test_sandbox_no_os),
        cmocka_unit_test(test_sandbox_no_io),
        cmocka_unit_test(test_sandbox_no_require),
        cmocka_unit_test(test_sandbox_no_load),
        cmocka_unit_test(test_sandbox_no_string_dump),
        cmocka_unit_test(test_sandbox_no_metatables),
        cmocka_unit_test(test_sandbox_refuses_binary_chunk),
        cmocka_unit_test(test_sandbox_memory_limit),
        cmocka_unit_test(test_sandbox_instruction_limit),
        cmocka_unit_test(test_sandbox_time_limit),
        cmocka_unit_test(test_sandbox_deep_recursion),
        cmocka_unit_test(test_sandbox_random_is_deterministic),
        cmocka_unit_test(test_unknown_field_suggests),
        cmocka_unit_test(test_unknown_field_before_values),
        cmocka_unit_test(test_unknown_field_lists_known),
        cmocka_unit_test(test_unknown_field_positional),
        cmocka_unit_test(test_required_field_missing),
        cmocka_unit_test(test_type_integer),
        cmocka_unit_test(test_type_number),
        cmocka_unit_test(test_type_boolean),
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_type_string),
        cmocka_unit_test(test_enum_activation),
        cmocka_unit_test(test_enum_router_dtype_schedule),
        cmocka_unit_test(test_name_rule),
        cmocka_unit_test(test_name_defaults_to_file_stem),
        cmocka_unit_test(test_vocab_range),
        cmocka_unit_test(test_dims_multiple_of_16),
        cmocka_unit_test(test_layers_and_seq_len),
        cmocka_unit_test(test_heads_divide_d_model),
        cmocka_unit_test(test_head_dim_multiple_of_8),
        cmocka_unit_test(test_head_dim_at_most_256),
        cmocka_unit_test(test_kv_heads_divide_heads),
        cmocka_unit_test(test_rope_and_norm_eps),
        cmocka_unit_test(test_experts_range),
        cmocka_unit_test(test_top_k_at_most_experts),
        cmocka_unit_test(test_switch_needs_top_1),
        cmocka_unit_test(test_capacity_and_losses),
        cmocka_unit_test(test_every_range),
        cmocka_unit_test(test_shared_experts_range),
        cmocka_unit_test(test_train_ranges),
        cmocka_unit_test(test_ep_divides_experts),
        cmocka_unit_test(test_dp_and_zero),
        cmocka_unit_test(test_validate_filled_struct),
        cmocka_unit_test(test_derive_wt2_moe8),
        cmocka_unit_test(test_derive_dense_twin_is_flop_matched),
        cmocka_unit_test(test_derive_non_gated_experts),
        cmocka_unit_test(test_derive_mixtral_matches_published),
        cmocka_unit_test(test_derive_every_other_layer),
        cmocka_unit_test(test_hash_stable),
        cmocka_unit_test(test_hash_changes_with_any_field),
        cmocka_unit_test(test_dump_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
