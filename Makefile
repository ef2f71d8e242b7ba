# booth — one Makefile, out-of-tree objects.
#
#   make            build build/booth, the test runner and the benchmarks
#   make test       build and run every test; ends with "N passed, N failed"
#   make asan       the same tests under AddressSanitizer + UBSan (in build-asan/)
#   make deps       install the Debian packages booth needs (as root), or print the apt-get line
#   make demo       the main job end to end on booth's world model (models/world), on a local cluster
#   make bench-ops  nn/ kernels vs PyTorch, side by side (needs python3-torch)
#   make bench-ps   the parameter server's round trip and step scaling on loopback (bench/ps_scaling.sh)
#   make fuzz       every libFuzzer harness of tests/fuzz/ for FUZZ_SECONDS each (clang-14, in build-fuzz/)
#   make fuzz-smoke the same, a few seconds each over the committed corpora (CI)
#   make bench-model  whole models (UNet, VAE, a DreamBooth step) vs PyTorch + diffusers
#                   (needs a venv with diffusers, see bench/model.py, and /tmp/sd15)
#
# Knobs: BUILD=dir, SANITIZER=address|undefined, OPT=-O2, CUDA=auto|0|1.

BUILD     ?= build
SANITIZER ?=
OPT       ?= -O2
CUDA      ?= auto

# ---- libraries --------------------------------------------------------------
# Debian 12 keeps openblas.pc outside the default search path; `pkg-config blas`
# would find the slow reference BLAS, so point at OpenBLAS explicitly.
export PKG_CONFIG_PATH := /usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig:$(PKG_CONFIG_PATH)

PKGS := libcjson libpng libjpeg libutf8proc hdf5 libzmq libprotobuf-c
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

DEB_PKGS := build-essential pkg-config libopenblas-dev libopenblas0-pthread libcjson-dev \
            libpng-dev libjpeg62-turbo-dev libutf8proc-dev libzmq3-dev libprotobuf-c-dev \
            protobuf-c-compiler libhdf5-dev hdf5-tools \
            python3-h5py python3-numpy xxhash \
            openssh-server openssh-client slurmctld slurmd slurm-client munge \
            clang-14 libclang-rt-14-dev

# ---- compiler ---------------------------------------------------------------
CC      ?= cc
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter \
           -fno-math-errno -MMD -MP -I. -I$(BUILD)/gen -Itests $(PKG_CFLAGS) $(BLAS_CFLAGS)
LDLIBS  := $(PKG_LIBS) $(BLAS_LIBS) -lpthread -lm

ifeq ($(SANITIZER),address)
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(SANITIZER),undefined)
  CFLAGS += -fsanitize=undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=undefined
else ifeq ($(SANITIZER),fuzzer)
  # coverage for libFuzzer in the library; the harnesses link -fsanitize=fuzzer
  CFLAGS += -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
            -Wno-unused-command-line-argument
  LDFLAGS += -fsanitize=address,undefined
else ifneq ($(SANITIZER),)
  $(error SANITIZER must be address, undefined or fuzzer, not '$(SANITIZER)')
endif

# ---- CUDA (optional) ---------------------------------------------------------
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(CUDA),0)
  NVCC :=
else ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc is neither on PATH nor in /usr/local/cuda/bin)
  endif
else ifneq ($(CUDA),auto)
  $(error CUDA must be auto, 0 or 1, not '$(CUDA)')
endif
CUDA_SRCS := $(wildcard nn/cuda/*.cu)
ifneq ($(and $(NVCC),$(CUDA_SRCS)),)
  CFLAGS += -DBOOTH_HAVE_CUDA=1 -I/usr/local/cuda/include
  LDLIBS += -L/usr/local/cuda/lib64 -lcudart -lcublas
  CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/obj/%.o)
else
  CUDA_OBJS :=
  ifeq ($(MAKECMDGOALS),)
    $(info booth: building the CPU backend only (nvcc: $(if $(NVCC),found, not found); CUDA sources: $(words $(CUDA_SRCS))))
  endif
endif

# ---- generated code ------------------------------------------------------------
# protoc-c writes the wire schema's C code into $(BUILD)/gen/proto/, never into the
# source tree; sources include it as "proto/booth.pb-c.h". protoc-c is looked up when
# the rule runs, not when the Makefile is read, so `make deps` and `make clean` work
# without it.
PROTOC_C = $(shell command -v protoc-c 2>/dev/null)
GEN_H := $(BUILD)/gen/proto/booth.pb-c.h
GEN_C := $(BUILD)/gen/proto/booth.pb-c.c
GEN_OBJS := $(BUILD)/obj/gen/proto/booth.pb-c.o

# ---- sources ----------------------------------------------------------------
LIB_SRCS := $(wildcard common/*.c nn/*.c nn/cpu/*.c storage/*.c diffusion/*.c \
                       proto/*.c coordinator/*.c ps/*.c worker/*.c)
ASM_SRCS := $(wildcard diffusion/*.S)
CLI_SRCS := $(wildcard cli/*.c)
TEST_SRCS := $(wildcard tests/*.c tests/unit/*.c tests/fuzz/*.c)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
BENCH_SRCS := $(wildcard bench/*.c)

LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(ASM_SRCS:%.S=$(BUILD)/obj/%.o) $(CUDA_OBJS) $(GEN_OBJS)
CLI_OBJS   := $(CLI_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_OBJS  := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)

LIB    := $(BUILD)/libbooth.a
BOOTH  := $(BUILD)/booth
RUNNER := $(BUILD)/tests/runner

.PHONY: all test asan deps demo bench-ops bench-ps bench-model clean format fuzz fuzz-smoke fuzz-bins
all: $(BOOTH) $(RUNNER) $(BENCH_BINS)

# Order-only on the generated header: any C file may include it, and -MMD records
# the real dependency after the first compile (so a changed booth.proto rebuilds them).
$(BUILD)/obj/%.o: %.c | $(GEN_H)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

# where a booth binary finds the world model when it is not beside it (cli_default_model)
$(BUILD)/obj/cli/args.o: CFLAGS += -DBOOTH_SOURCE_DIR='"$(CURDIR)"'

$(GEN_H) $(GEN_C) &: proto/booth.proto
	$(if $(PROTOC_C),,$(error protoc-c not found: install Debian's protobuf-c-compiler (make deps)))
	@mkdir -p $(BUILD)/gen
	$(PROTOC_C) --c_out=$(BUILD)/gen $<

$(GEN_OBJS): $(GEN_C) $(GEN_H)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

# embedded data (.incbin): rebuilt when the data files change
$(BUILD)/obj/diffusion/clip_tokenizer.o: diffusion/clip_tokenizer/vocab.json diffusion/clip_tokenizer/merges.txt
$(BUILD)/obj/%.o: %.S
	@mkdir -p $(@D)
	$(CC) -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) -O2 -std=c++17 -I. -Xcompiler -fPIC -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BOOTH): $(CLI_OBJS) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# tests/unit/test_oom.c fails chosen allocations of booth's own code: the runner's
# allocations go through its wrappers
OOM_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,--wrap=aligned_alloc
$(RUNNER): $(TEST_OBJS) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $(OOM_WRAP) $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The runner forks every test, prints one line each and a final "N passed, N failed".
test: $(RUNNER) $(BOOTH)
	BOOTH=$(abspath $(BOOTH)) $(RUNNER) $(TEST_ARGS)

# Under ASan every test but the world model's DreamBooth measurement, which runs code the others
# run too (train, eval) for minutes at -O1 to check numbers, not memory
asan:
	$(MAKE) BUILD=build-asan SANITIZER=address OPT=-O1 test TEST_ARGS="--exclude cli/world_dreambooth.sh"

# ---- fuzzing (tests/fuzz/README.md) ----------------------------------------------
# Each tests/fuzz/fuzz_NAME.c is one libFuzzer binary build-fuzz/fuzz/NAME, linked
# against the library built by clang with coverage and ASan+UBSan. The committed
# corpus is copied into build-fuzz/corpus/NAME, which the run grows; a crash lands
# in build-fuzz/crashes/NAME/ (copy it to tests/fuzz/regress/NAME/: make test
# replays it from then on).
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_ARGS    ?=
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz/%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.c tests/fuzz/fuzz.h $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -DBOOTH_LIBFUZZER -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_$*.c tests/fuzz/fuzz.c \
	    $(LIB) $(LDLIBS) -o $@

fuzz-bins: $(FUZZ_BINS)

fuzz:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) SANITIZER=fuzzer OPT=-O1 CUDA=0 fuzz-bins
	tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_ARGS)

fuzz-smoke:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) SANITIZER=fuzzer OPT=-O1 CUDA=0 fuzz-bins
	tests/fuzz/run.sh build-fuzz 5

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: missing$$missing; run as root:"; \
	  echo "  apt-get update && apt-get install -y$$missing"; exit 1; fi

# BENCH_OPS_ARGS: e.g. --markdown --iters 9 --row conv3x3_320_64
bench-ops: $(BUILD)/bench/bench_ops
	bench/ops.py --booth $(BUILD)/bench/bench_ops $(BENCH_OPS_ARGS)

# BENCH_PS_ARGS: e.g. --workers 4 --steps 40 --markdown; BENCH_PS_SCALING_ARGS: e.g. --markdown (~2.5 min)
bench-ps: $(BUILD)/bench/bench_ps $(BOOTH)
	$(BUILD)/bench/bench_ps --booth $(BOOTH) $(BENCH_PS_ARGS)
	BOOTH=$(abspath $(BOOTH)) bench/ps_scaling.sh $(BENCH_PS_SCALING_ARGS)

# BENCH_MODEL_ARGS: e.g. --row train_sd15_256 --rounds 2 --markdown
bench-model: $(BUILD)/bench/bench_model $(BOOTH)
	bench/model.py --booth $(BUILD)/bench/bench_model --cli $(BOOTH) $(BENCH_MODEL_ARGS)

demo: deps all
	scripts/demo.sh $(BOOTH)

format:
	clang-format -i $(LIB_SRCS) $(CLI_SRCS) $(TEST_SRCS) $(BENCH_SRCS) $(wildcard */*.h */*/*.h)

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
