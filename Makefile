# moegen — build, test and run. `make help` lists the targets.

CUDA_HOME ?= /usr/local/cuda
BUILD     ?= build
PREFIX    ?= /usr/local
SPEC      ?= specs/wt2-moe8.lua
VERSION   := 0.1.0

CC        ?= gcc
CFLAGS_W  := -Wall -Wextra -Werror
CFLAGS    ?= -O2 -g
SAN       ?=
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC $(CFLAGS_W) $(CFLAGS) $(SAN) \
             -Igen -Iruntime -Itemplates -I$(BUILD) -I/usr/include/lua5.4 -I$(CUDA_HOME)/include \
             -DMG_VERSION=\"$(VERSION)\"

# Lua, jansson, libcrypto, SQLite (the tuning db) and zlib (TensorBoard PNGs) are linked statically so the binary
# runs on GPU hosts that lack them; the CUDA libraries dynamically. libcuda is never linked (see README).
LUA_A     := $(firstword $(wildcard /usr/lib/*/liblua5.4.a /usr/lib/liblua5.4.a))
STATIC_LIBS = $(LUA_A) -Wl,-Bstatic -ljansson -lcrypto -lsqlite3 -lz -Wl,-Bdynamic
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lnccl -lnvrtc -lcudart
LDLIBS    = $(STATIC_LIBS) $(CUDA_LIBS) -lpthread -ldl -lm
# The shared library links its dependencies dynamically: Debian's static archives are not PIC.
SO_LIBS   = -llua5.4 -ljansson -lcrypto -lsqlite3 -lz $(CUDA_LIBS) -lpthread -ldl -lm

LIB_SRC   := $(sort $(wildcard gen/mg_*.c runtime/mg_*.c))
LIB_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC)) $(BUILD)/mg_templates.o
TMPL      := $(sort $(wildcard templates/*.cu templates/*.cuh templates/*.h))
TMPL      += templates/moe_bundle.c runtime/mg_launch.h runtime/mg_launch.c   # shipped in bundles
TEST_SRC  := $(sort $(wildcard tests/test_*.c))
TEST_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_SRC := $(sort $(wildcard bench/mg_bench_*.c))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all help deps run train test test-asan test-gpu golden bench install clean
all: $(BUILD)/moegen $(BUILD)/libmoegen.a $(BUILD)/libmoegen.so

help:
	@echo "make deps       install missing Debian packages, check the CUDA 13 toolkit"
	@echo "make            build moegen, libmoegen.a and libmoegen.so into $(BUILD)/"
	@echo "make run        deps + build + check/gen/compile $(SPEC) (+ GPU selftest when a GPU is present)"
	@echo "make test       the CPU test suite (cmocka); GPU parts print 'skipped: no CUDA device'"
	@echo "make test-asan  the same suite under ASan/UBSan"
	@echo "make test-gpu   moegen selftest on every shipped spec (needs a GPU)"
	@echo "make golden     refresh tests/golden/ on purpose"
	@echo "make bench      build the benchmarks in bench/"
	@echo "make install    install into PREFIX=$(PREFIX)"

deps:
	@sh tests/deps.sh

$(BUILD)/%.o: %.c $(wildcard gen/*.h runtime/*.h) | $(BUILD)/mg_templates.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# Templates are embedded into the library so an installed moegen needs no source tree.
$(BUILD)/embed: gen/embed.c
	@mkdir -p $(BUILD)
	$(CC) -std=c11 -O1 $(CFLAGS_W) $< -o $@
$(BUILD)/mg_templates.c $(BUILD)/mg_templates.h &: $(BUILD)/embed $(TMPL)
	$(BUILD)/embed $(BUILD)/mg_templates $(TMPL)
$(BUILD)/mg_templates.o: $(BUILD)/mg_templates.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libmoegen.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/libmoegen.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libmoegen.so.0 $(SAN) -o $@ $^ $(SO_LIBS)
$(BUILD)/moegen: gen/moegen.c $(BUILD)/libmoegen.a
	$(CC) $(ALL_CFLAGS) $< -o $@ $(BUILD)/libmoegen.a $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/mg_test.h $(BUILD)/libmoegen.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests $< -o $@ $(BUILD)/libmoegen.a $(LDLIBS) -lcmocka
# The bundle bench links a bundle of BUNDLE_SPEC next to libmoegen (bench/mg_bench_bundle.c).
BUNDLE_SPEC ?= specs/wt2-moe8.lua
BUNDLE_ID   := $(subst -,_,$(subst .,_,$(basename $(notdir $(BUNDLE_SPEC)))))
BUNDLE_DIR  := $(BUILD)/bench/moe_$(BUNDLE_ID)
$(BUNDLE_DIR)/moe_$(BUNDLE_ID).c: $(BUILD)/moegen $(BUNDLE_SPEC)
	$(BUILD)/moegen gen $(BUNDLE_SPEC) --bundle -o $(BUNDLE_DIR)
$(BUILD)/bench/mg_bench_bundle: bench/mg_bench_bundle.c $(BUNDLE_DIR)/moe_$(BUNDLE_ID).c $(BUILD)/libmoegen.a
	$(CC) $(ALL_CFLAGS) -I$(BUNDLE_DIR) -DMOE_ID=$(BUNDLE_ID) -DMOE_UID=$(shell echo $(BUNDLE_ID) | tr a-z A-Z) \
	    -DMOE_SPEC=\"$(BUNDLE_SPEC)\" $< $(BUNDLE_DIR)/moe_$(BUNDLE_ID).c -o $@ $(BUILD)/libmoegen.a $(LDLIBS)
$(BUILD)/bench/%: bench/%.c $(BUILD)/libmoegen.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(BUILD)/libmoegen.a $(LDLIBS)

test: all $(TEST_BIN)
	@MOEGEN=$(BUILD)/moegen sh tests/run.sh $(TEST_BIN)

test-asan:
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" CFLAGS="-O1 -g" test

test-gpu: all
	@for s in specs/*.lua; do $(BUILD)/moegen selftest $$s || exit 1; done

golden: all
	@sh tests/golden.sh $(BUILD)/moegen refresh

bench: all $(BENCH_BIN)

run: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/moegen $(SPEC)
	@if $(BUILD)/moegen devices >/dev/null 2>&1; then $(BUILD)/moegen selftest $(SPEC) && $(MAKE) --no-print-directory train; \
	 else echo "run: no CUDA device here: generated and compiled; selftest and training skipped"; fi

# Trains $(SPEC) on the GPU: WikiText-2 (from $$MOEGEN_DATA_DIR, else ../shared/data) tokenized
# into runs/data/wikitext-2 once, then `moegen train` from there (train.data = "wikitext-2"
# resolves to that directory first); metrics, checkpoints and the best model in runs/$(SPEC_NAME).
SPEC_NAME = $(basename $(notdir $(SPEC)))
train: all
	@mkdir -p runs/data
	@[ -f runs/data/wikitext-2/valid.tok ] || $(BUILD)/moegen data --corpus wikitext-2 --tokenizer word -o runs/data/wikitext-2
	cd runs/data && ../../$(BUILD)/moegen train ../../$(SPEC) --run-dir ../$(SPEC_NAME)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/moegen $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/moegen $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libmoegen.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libmoegen.so $(DESTDIR)$(PREFIX)/lib/libmoegen.so.0
	ln -sf libmoegen.so.0 $(DESTDIR)$(PREFIX)/lib/libmoegen.so
	install -m 644 gen/*.h runtime/*.h templates/moe_params.h $(DESTDIR)$(PREFIX)/include/moegen/
	install -m 644 gen/moegen_api.h $(DESTDIR)$(PREFIX)/include/moegen/moegen.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@CUDA@|$(CUDA_HOME)|' \
	    -e 's|@LIBS_PRIVATE@|$(filter-out $(CUDA_LIBS),$(SO_LIBS))|' moegen.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/moegen.pc

clean:
	rm -rf build build-asan
