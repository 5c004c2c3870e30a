# Shoal — top-level Makefile.
#
# Targets:
#   make            build build/shoald and build/shoalctl
#   make run        install missing packages, build, run shoald in the foreground
#                   on its embedded default configuration
#   make test       install missing packages, build, run every unit and integration test
#   make unit       unit tests only (CMocka, one binary per module)
#   make integration  integration tests only (real servers and clients, needs root)
#   make san        build under ASan+UBSan into build/san and run the tests there
#   make san-smoke  under ASan+UBSan too: unit tests and a smoke set of
#                   integration tests (run by .ci/run after make test)
#   make fuzz       libFuzzer targets (tests/fuzz), FUZZ_SECONDS each (default 60)
#   make bench      benchmarks (long; not part of make test)
#   make soak       1,000 TLS clients on the hijacked path, two 60 s rounds: no
#                   failure, no fd leak, RSS flat (bench/soak.sh; ~4 min, root)
#   make check      clang-format dry run
#   make deb        Debian package (dpkg-deb) into $(BUILD)/shoal_<version>_<arch>.deb
#   make demo       a local registry, shoald, two pulls of a SIF through it (< 1 min, root)
#   make install    binaries, /etc/shoal/shoald.yaml, systemd unit, logrotate file,
#                   Slurm prolog/epilog (PREFIX/lib/shoal/slurm)
# Knobs:
#   V=1             show full commands
#   DEBUG=1         -O0, no optimisation
#   SAN=address,undefined   build with these sanitizers
#   BUILD=dir       output directory (default build)
#   T=pattern       integration tests to run (shell glob on tests/integration/t_*.sh)
#   BENCH_HOSTILE=0 make bench skips bench/hostile.sh (10,000 hostile connections)

BUILD ?= build
PREFIX ?= /usr/local
DESTDIR ?=
CXX := g++
Q := $(if $(V),,@)

WARN := -Wall -Wextra -Wshadow -Wconversion -Wold-style-cast -Wnon-virtual-dtor -Werror
OPT := $(if $(DEBUG),-O0,-O2)
SANFLAGS := $(if $(SAN),-fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=undefined,)
VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
GIT_REV := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

CPPFLAGS := -Iinclude -isystem /usr/include/hs -DSHOAL_VERSION='"$(VERSION)"'
# The git revision lives in a generated header rewritten only when it
# changes, so `shoald --version` follows commits without rebuilding all.
REV_H := $(BUILD)/gen/shoal_rev.h
$(shell mkdir -p $(BUILD)/gen && printf '#define SHOAL_GIT_REV "%s"\n' '$(GIT_REV)' > $(REV_H).tmp && \
  (cmp -s $(REV_H).tmp $(REV_H) || mv $(REV_H).tmp $(REV_H)); rm -f $(REV_H).tmp)
$(BUILD)/obj/userspace/shoald.o: CPPFLAGS += -I$(BUILD)/gen
CXXFLAGS := -std=c++17 $(OPT) -g -pthread $(WARN) $(SANFLAGS) -MMD -MP
LDFLAGS := -pthread $(SANFLAGS)
LDLIBS := -luv -lmbedtls -lmbedx509 -lmbedcrypto -lhs -lcjson -lyaml -lhttp_parser -lcrypto -lbpf -lelf -lz

.DELETE_ON_ERROR:
.PHONY: all run test unit integration fuzz san san-smoke bench soak check install uninstall deb demo deps deps-test deps-bench clean format

all: $(BUILD)/shoald $(BUILD)/shoalctl

# Libraries: one archive per module, userspace/<module>/*.cpp -> $(BUILD)/lib/<module>.a.
MODULES := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard userspace/*/*.cpp)))))
MODULE_LIBS := $(MODULES:%=$(BUILD)/lib/%.a)
define module_rule
$(BUILD)/lib/$(1).a: $(patsubst %.cpp,$(BUILD)/obj/%.o,$(wildcard userspace/$(1)/*.cpp))
	@mkdir -p $$(dir $$@)
	$(Q)rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call module_rule,$(m))))
ALL_LIBS := -Wl,--start-group $(MODULE_LIBS) -Wl,--end-group

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(if $(V),,@echo "  CXX  $<")
	$(Q)$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

# BPF: bpf/<name>.bpf.c -> $(BUILD)/bpf/<name>.bpf.o (clang -target bpf, BTF
# from -g; DWARF stripped, .BTF kept) -> $(BUILD)/bpf/<name>.skel.h (bpftool gen
# skeleton, never committed). Only userspace/redirect/ebpf.cpp includes the
# skeleton, through -isystem (it is generated C: old-style casts). The multiarch
# include directory provides <asm/types.h> to <linux/bpf.h>.
# Deferred (=): $(CXX) may not be installed yet when the Makefile is read.
BPF_CFLAGS = -O2 -g -target bpf -Wall -Wextra -Werror -Iinclude -I/usr/include/$(shell $(CXX) -dumpmachine)
$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c include/shoal/bpf_abi.h
	@mkdir -p $(dir $@)
	$(if $(V),,@echo "  BPF  $<")
	$(Q)clang $(BPF_CFLAGS) -c $< -o $@.tmp && llvm-strip -g $@.tmp && mv $@.tmp $@
$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(if $(V),,@echo "  GEN  $@")
	$(Q)bpftool gen skeleton $< name $(subst -,_,$*)_bpf > $@
$(BUILD)/obj/userspace/redirect/ebpf.o: $(BUILD)/bpf/shoal_redirect.skel.h
$(BUILD)/obj/userspace/redirect/ebpf.o: CPPFLAGS += -isystem $(BUILD)/bpf
.SECONDARY: $(BUILD)/bpf/shoal_redirect.bpf.o

$(BUILD)/shoald: $(BUILD)/obj/userspace/shoald.o $(MODULE_LIBS)
	$(if $(V),,@echo "  LD   $@")
	$(Q)$(CXX) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)
$(BUILD)/shoalctl: $(BUILD)/obj/userspace/shoalctl.o $(MODULE_LIBS)
	$(if $(V),,@echo "  LD   $@")
	$(Q)$(CXX) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

# Unit tests: tests/unit/<module>/*.cpp -> $(BUILD)/tests/unit/test_<module>,
# linked with that module's archive and the modules named in
# tests/unit/<module>/deps (one line, space-separated), so a module's tests
# build before the rest of the tree does.
UNIT_MODULES := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard tests/unit/*/*.cpp)))))
UNIT_BINS := $(UNIT_MODULES:%=$(BUILD)/tests/unit/test_%)
unit_deps = $(1) $(shell cat tests/unit/$(1)/deps 2>/dev/null)
define unit_rule
$(BUILD)/tests/unit/test_$(1): $(patsubst %.cpp,$(BUILD)/obj/%.o,$(wildcard tests/unit/$(1)/*.cpp)) $(patsubst %,$(BUILD)/lib/%.a,$(call unit_deps,$(1)))
	@mkdir -p $$(dir $$@)
	$(if $(V),,@echo "  LD   $$@")
	$(Q)$(CXX) $(LDFLAGS) -o $$@ $$(filter %.o,$$^) -Wl,--start-group $$(filter %.a,$$^) -Wl,--end-group $(LDLIBS) -lcmocka
endef
$(foreach m,$(UNIT_MODULES),$(eval $(call unit_rule,$(m))))

# Test helper programs written in C++ (fault injectors, load clients).
FIXTURE_SRCS := $(wildcard tests/fixtures/*.cpp bench/*.cpp)
FIXTURE_BINS := $(patsubst %.cpp,$(BUILD)/%,$(FIXTURE_SRCS))
# Keep their objects: as pattern-rule intermediates make would delete them,
# and the next make's dependency files would have them rebuilt.
.SECONDARY: $(patsubst %.cpp,$(BUILD)/obj/%.o,$(FIXTURE_SRCS))
# Standalone helper programs: no Shoal libraries, only system ones.
$(BUILD)/tests/fixtures/%: $(BUILD)/obj/tests/fixtures/%.o
	@mkdir -p $(dir $@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o
	@mkdir -p $(dir $@)
	$(Q)$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS)
# The soak load generator speaks TLS through OpenSSL's libssl.
$(BUILD)/bench/soak_load: LDLIBS += -lssl

deps:
	$(Q)tools/install-deps.sh build
deps-test:
	$(Q)tools/install-deps.sh test
deps-bench:
	$(Q)tools/install-deps.sh bench

run: deps
	$(Q)$(MAKE) --no-print-directory all
	@mkdir -p $(BUILD)/run
	exec $(BUILD)/shoald --default-config --data-dir $(BUILD)/run/data --log-dir $(BUILD)/run/log

ORAS_CLIENT := $(BUILD)/tests/fixtures/oras/shoal-oras
$(ORAS_CLIENT): $(wildcard tests/fixtures/oras/*.go) tests/fixtures/oras/build.sh
	$(if $(V),,@echo "  GO   $@")
	$(Q)tests/fixtures/oras/build.sh $@

# Fuzz targets: tests/fuzz/fuzz_<name>.cpp, built by clang with libFuzzer and
# ASan+UBSan together with the Shoal sources FUZZ_SRCS_<name> lists (compiled
# with the same instrumentation, so coverage guides the fuzzer into them).
# `make fuzz` runs each for FUZZ_SECONDS (default 60) from its seed corpus
# tests/fuzz/corpus/<name>; `make test` runs each for 10 s.
FUZZ_SECONDS ?= 60
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.cpp,%,$(wildcard tests/fuzz/fuzz_*.cpp))
FUZZ_BINS := $(FUZZ_NAMES:%=$(BUILD)/fuzz/fuzz_%)
FUZZ_SRCS_record_layer := userspace/tls/record_layer.cpp
FUZZ_SRCS_p2p_messages := userspace/p2p/protocol.cpp userspace/task/store.cpp
FUZZ_SRCS_p2p_auth := userspace/p2p/auth.cpp userspace/http/message.cpp
FUZZ_SRCS_http_request := $(wildcard userspace/http/*.cpp)
FUZZ_SRCS_http_response := $(wildcard userspace/http/*.cpp)
FUZZ_SRCS_range := userspace/http/range.cpp userspace/http/message.cpp
FUZZ_SRCS_client_hello := userspace/tls/client_hello.cpp
# The loader with every module its unit test links (tests/unit/config/deps).
FUZZ_SRCS_config := $(foreach m,config $(shell cat tests/unit/config/deps),$(wildcard userspace/$(m)/*.cpp))
# Libraries beyond -lcrypto a target needs, if any (FUZZ_LIBS_<name>).
FUZZ_LIBS_p2p_messages := -lcjson
FUZZ_LIBS_http_request := -lhttp_parser
FUZZ_LIBS_http_response := -lhttp_parser
FUZZ_LIBS_config := -lyaml -lhs -lmbedtls -lmbedx509 -lmbedcrypto
FUZZ_FLAGS := -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iinclude -isystem /usr/include/hs
define fuzz_rule
$(BUILD)/fuzz/fuzz_$(1): tests/fuzz/fuzz_$(1).cpp $(FUZZ_SRCS_$(1)) $(wildcard include/shoal/*/*.h tests/fuzz/*.h)
	@mkdir -p $$(dir $$@)
	$(if $(V),,@echo "  FUZZ $$@")
	$(Q)clang++ $(FUZZ_FLAGS) -o $$@ $$(filter %.cpp,$$^) -lcrypto $(FUZZ_LIBS_$(1))
endef
$(foreach f,$(FUZZ_NAMES),$(eval $(call fuzz_rule,$(f))))

fuzz: $(FUZZ_BINS)
	$(Q)FUZZ_SECONDS=$(FUZZ_SECONDS) BUILD=$(abspath $(BUILD)) tests/fuzz/run.sh $(FUZZ_BINS)

test: deps-test
	$(Q)$(MAKE) --no-print-directory all $(UNIT_BINS) $(FIXTURE_BINS) $(ORAS_CLIENT) $(FUZZ_BINS)
	$(Q)$(MAKE) --no-print-directory unit integration
	$(Q)$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

unit: $(UNIT_BINS)
	$(Q)tests/run-unit.sh $(UNIT_BINS)

integration: all $(FIXTURE_BINS) $(ORAS_CLIENT)
	$(Q)BUILD=$(abspath $(BUILD)) tests/integration/run.sh $(if $(T),'$(T)')

# Sanitizer runs build into build/san unless BUILD is given on the command
# line (make san-smoke BUILD=build/x). san-smoke is what .ci/run adds after
# make test: the unit tests and SAN_SMOKE_TESTS (an extended glob for
# tests/integration/run.sh: explicit pull hijacked with and without fast
# records, the fast record path, task single-flight, P2P on one host,
# transparent eBPF) under ASan+UBSan.
SAN_BUILD := $(if $(filter command line,$(origin BUILD)),$(BUILD),build/san)
SAN_SMOKE_TESTS := @(t_explicit_pull|t_tls_fast|t_task_singleflight|t_p2p_local|t_transparent_ebpf)
san: deps-test
	$(Q)SHOAL_SAN=1 $(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=address,undefined DEBUG=1 test

# The benchmarks' programs (part of FIXTURE_BINS) are not built for it.
SAN_SMOKE_BINS := $(UNIT_BINS) $(patsubst %.cpp,$(BUILD)/%,$(wildcard tests/fixtures/*.cpp)) $(ORAS_CLIENT)
san-smoke: deps-test
	$(Q)$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=address,undefined DEBUG=1 \
	  all $(SAN_SMOKE_BINS:$(BUILD)/%=$(SAN_BUILD)/%)
	$(Q)SHOAL_SAN=1 $(MAKE) --no-print-directory BUILD=$(SAN_BUILD) SAN=address,undefined DEBUG=1 unit
	$(Q)SHOAL_SAN=1 BUILD=$(abspath $(SAN_BUILD)) tests/integration/run.sh '$(SAN_SMOKE_TESTS)'

bench: deps-bench
	$(Q)$(MAKE) --no-print-directory all $(FIXTURE_BINS)
	$(Q)BUILD=$(abspath $(BUILD)) bench/run.sh
	$(Q)BUILD=$(abspath $(BUILD)) bench/task.sh
	$(Q)BUILD=$(abspath $(BUILD)) bench/connect.sh
	$(Q)BUILD=$(abspath $(BUILD)) bench/p2p.sh
	$(Q)BUILD=$(abspath $(BUILD)) bench/sched.sh
	$(Q)[ "$(BENCH_HOSTILE)" = 0 ] || BUILD=$(abspath $(BUILD)) bench/hostile.sh

# In its own network namespace: the registry fixture binds 127.0.0.2-4:443.
soak: deps-test
	$(Q)$(MAKE) --no-print-directory all $(FIXTURE_BINS) $(ORAS_CLIENT)
	$(Q)BUILD=$(abspath $(BUILD)) tests/integration/isolated.sh -- bash bench/soak.sh

check:
	$(Q)clang-format --dry-run --Werror $(shell git ls-files '*.cpp' '*.h' | grep -v '^bpf/')

format:
	$(Q)clang-format -i $(shell git ls-files '*.cpp' '*.h' | grep -v '^bpf/')

# Binaries, unit, default configuration (conffile), logrotate file and man
# pages, packaged by tools/build-deb.sh (maintainer scripts in packaging/deb/).
deb: all
	$(Q)tools/build-deb.sh $(BUILD)

# tools/demo.sh: the registry fixture on loopback, shoald, two ORAS pulls of
# a SIF artifact through it; prints the "peer task done" lines and what the
# registry was spared, then cleans up. Runs in its own network and mount
# namespace (tests/integration/isolated.sh), so it binds no real address.
demo: all $(ORAS_CLIENT)
	$(Q)BUILD=$(abspath $(BUILD)) tests/integration/isolated.sh -- tools/demo.sh

install: all
	install -D -m 0755 $(BUILD)/shoald $(DESTDIR)$(PREFIX)/sbin/shoald
	install -D -m 0755 $(BUILD)/shoalctl $(DESTDIR)$(PREFIX)/bin/shoalctl
	install -d -m 0755 $(DESTDIR)/etc/shoal
	test -e $(DESTDIR)/etc/shoal/shoald.yaml || install -m 0644 systemd/shoald.yaml $(DESTDIR)/etc/shoal/shoald.yaml
	install -d -m 0755 $(DESTDIR)/lib/systemd/system
	sed 's|@SBINDIR@|$(PREFIX)/sbin|g; s|@BINDIR@|$(PREFIX)/bin|g' systemd/shoald.service.in > $(DESTDIR)/lib/systemd/system/shoald.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/shoald.service
	install -m 0644 systemd/shoal-jobs.slice $(DESTDIR)/lib/systemd/system/shoal.slice
	install -D -m 0644 systemd/shoald.logrotate $(DESTDIR)/etc/logrotate.d/shoald
	install -D -m 0755 tools/slurm/prolog.sh $(DESTDIR)$(PREFIX)/lib/shoal/slurm/prolog.sh
	install -m 0755 tools/slurm/epilog.sh $(DESTDIR)$(PREFIX)/lib/shoal/slurm/epilog.sh
	install -m 0644 tools/slurm/common.sh $(DESTDIR)$(PREFIX)/lib/shoal/slurm/common.sh
	@getent group shoal >/dev/null || [ -n "$(DESTDIR)" ] || groupadd --system shoal || true

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/shoald $(DESTDIR)$(PREFIX)/bin/shoalctl
	rm -f $(DESTDIR)/lib/systemd/system/shoald.service $(DESTDIR)/lib/systemd/system/shoal.slice
	rm -f $(DESTDIR)/etc/logrotate.d/shoald
	rm -rf $(DESTDIR)$(PREFIX)/lib/shoal/slurm
	@echo "kept /etc/shoal (configuration, CA) and /var/lib/shoal (data)"

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
