# nginx-channels: build, run, test, bench, package.
#   make            build build/ngx_http_channels_module.so against Debian's nginx-dev
#                   (installs the missing build dependencies, nothing else)
#   make run        install what is missing, build, run the demo on 127.0.0.1:8080/8081
#   make test       install what is missing, build, run unit tests and t/*.t
#   make unit-store the shared-memory store's unit tests (nginx's headers, a stub of nginx)
#   make deb        build/libnginx-mod-http-channels_<version>_amd64.deb for Debian's nginx
#   make check-build  the build's own checks (exports, C++ standard, a build without hiredis)
#   make bench      compare with nchan (see bench/README.md)
#   make stress     the model-checked random test at scale: SCHEDULES=N (5000), STRESS_JOBS=J (3),
#                   STRESS_FIRST=SEED (the first seed; default 100000)
#   make NGINX_SRC=/path/to/nginx-x.y.z   build the module only, against another nginx tree
#   make test NGINX_TARBALL=path/nginx-x.y.z.tar.gz
#                   build that nginx (binary and module, in build/nginx-x.y.z/) and run the
#                   unit tests and the whole suite with it

NGINX_SRC   ?= /usr/share/nginx/src
NGINX_BIN   ?= /usr/sbin/nginx
NGINX_TARBALL ?=
BUILD       := $(CURDIR)/build
PROVE_JOBS  ?= 2
CXX         ?= g++
UNIT_CXXFLAGS := -std=c++17 -O1 -g -Wall -Wextra -Werror -Isrc

# Debian's nginx-dev records the flags its nginx was configured with.
DEBIAN_CC_OPT := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2
DEBIAN_LD_OPT := -Wl,-z,relro -Wl,-z,now -fPIC

ifeq ($(NGINX_TARBALL),)
NGX_TREE    := $(BUILD)/nginx
MODULE      := $(BUILD)/ngx_http_channels_module.so
else
# nginx-1.31.4.tar.gz -> build/nginx-1.31.4/{src/,nginx,ngx_http_channels_module.so}
NGX_VERSION := $(patsubst nginx-%.tar.gz,%,$(notdir $(NGINX_TARBALL)))
ifeq ($(NGX_VERSION),$(notdir $(NGINX_TARBALL)))
$(error NGINX_TARBALL must be named nginx-VERSION.tar.gz, got $(NGINX_TARBALL))
endif
NGX_OUT     := $(BUILD)/nginx-$(NGX_VERSION)
NGX_TREE    := $(NGX_OUT)/src
MODULE      := $(NGX_OUT)/ngx_http_channels_module.so
override NGINX_BIN := $(NGX_OUT)/nginx
endif
UNIT_BIN    := $(BUILD)/unit_tests

MODULE_SRCS := $(wildcard src/*.cpp src/*.h src/channels/*.cpp src/channels/*.h)
PURE_SRCS   := $(wildcard src/channels/*.cpp)
UNIT_SRCS   := $(wildcard t/unit/*.cpp)
DEB_INPUTS  := $(MODULE_SRCS) config config.make $(wildcard debian/* debian/source/*) \
               $(wildcard conf-examples/*) README.md www/channels.js tools/build-deb.sh tools/conf-compat

.PHONY: all deps run test unit unit-asan unit-store prove bench clean fuzz sanitize valgrind deb check-build stress

all: $(MODULE)

# Installs only what is missing (tools/install-deps.sh GROUP); a no-op on a prepared machine.
deps:
	@sh tools/install-deps.sh build test run

$(BUILD)/.deps-%: tools/install-deps.sh
	@sh tools/install-deps.sh $*
	@mkdir -p $(BUILD) && touch $@

ifeq ($(NGINX_TARBALL),)
$(NGX_TREE)/objs/Makefile: config config.make tools/configure-nginx.sh $(BUILD)/.deps-build
	@rm -rf $(NGX_TREE) && mkdir -p $(NGX_TREE)
	cp -a $(NGINX_SRC)/. $(NGX_TREE)/
	cd $(NGX_TREE) && sh $(CURDIR)/tools/configure-nginx.sh $(CURDIR) '$(DEBIAN_CC_OPT)' '$(DEBIAN_LD_OPT)'

$(MODULE): $(NGX_TREE)/objs/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	cp $(NGX_TREE)/objs/ngx_http_channels_module.so $@.tmp && mv -f $@.tmp $@   # running nginx keeps the old inode
else
# A SHA256SUMS beside the tarball (as in the vendored sources) is checked first.
$(NGX_TREE)/objs/Makefile: $(NGINX_TARBALL) config config.make tools/configure-nginx.sh $(BUILD)/.deps-build
	@sums=$(dir $(NGINX_TARBALL))SHA256SUMS; if [ -f $$sums ]; then \
	    grep '  $(notdir $(NGINX_TARBALL))$$' $$sums | (cd $(dir $(NGINX_TARBALL)) && sha256sum -c -) || exit 1; fi
	@rm -rf $(NGX_TREE) && mkdir -p $(NGX_TREE)
	tar -xzf $(NGINX_TARBALL) -C $(NGX_TREE) --strip-components=1
	cd $(NGX_TREE) && sh $(CURDIR)/tools/configure-nginx.sh --binary $(CURDIR) '$(DEBIAN_CC_OPT)' '$(DEBIAN_LD_OPT)'

# The binary and the module come from one tree, so they always match.
$(MODULE): $(NGX_TREE)/objs/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile binary modules
	cp $(NGX_TREE)/objs/nginx $(NGINX_BIN).tmp && mv -f $(NGINX_BIN).tmp $(NGINX_BIN)
	cp $(NGX_TREE)/objs/ngx_http_channels_module.so $@.tmp && mv -f $@.tmp $@
endif

$(UNIT_BIN): $(PURE_SRCS) $(UNIT_SRCS) $(wildcard src/channels/*.h t/unit/*.h) $(BUILD)/.deps-test
	$(CXX) $(UNIT_CXXFLAGS) -o $@ $(PURE_SRCS) $(UNIT_SRCS) -lgtest -lgtest_main -lcrypto -pthread

unit: $(UNIT_BIN)
	$(UNIT_BIN)

# The pure logic under ASan+UBSan: catches reads past the end that plain tests miss.
unit-asan: $(BUILD)/.deps-test
	$(CXX) $(UNIT_CXXFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all \
	    -o $(BUILD)/unit_asan $(PURE_SRCS) $(UNIT_SRCS) -lgtest -lgtest_main -lcrypto -pthread
	$(BUILD)/unit_asan

# The shared-memory store compiled against nginx's headers (the configured tree's objs/ for
# ngx_auto_*.h) and linked with a stub of the nginx symbols it uses, under ASan+UBSan.
STORE_UNIT_BIN  := $(BUILD)/unit_store
STORE_UNIT_SRCS := $(addprefix src/ngx_http_channels_,session.cpp zone_ops.cpp shm_store.cpp shm_zone.cpp fault.cpp) \
                   src/channels/ids.cpp src/channels/channel_list.cpp $(wildcard t/unit/store/*.cpp)
NGX_INCS        := $(addprefix -I$(NGX_TREE)/,src/core src/event src/event/modules src/os/unix objs)

$(STORE_UNIT_BIN): $(NGX_TREE)/objs/Makefile $(STORE_UNIT_SRCS) $(MODULE_SRCS) $(wildcard t/unit/store/*.h) $(BUILD)/.deps-test
	$(CXX) $(UNIT_CXXFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all $(NGX_INCS) -It/unit/store \
	    -o $@ $(STORE_UNIT_SRCS) -lgtest -lgtest_main -pthread

unit-store: $(STORE_UNIT_BIN)
	$(STORE_UNIT_BIN)

# libFuzzer targets of the pure parsers and formatters (SECONDS=N per target, default 300).
fuzz: $(BUILD)/.deps-fuzz
	$(MAKE) -C fuzz run

# The browser and EventSource tests' npm packages are installed once, before the parallel run.
prove: $(MODULE) $(BUILD)/.deps-test
	sh t/js/ensure-deps.sh
	CHANNELS_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) prove -j$(PROVE_JOBS) -r t/

test: $(MODULE) unit prove unit-store

# Issue 12's random schedules checked against the model of SPEC §2/§4/§5 (t/model.t), many of
# them, in parallel nginx instances; the diverging seeds replay with MODEL_SEEDS=<seed>.
SCHEDULES   ?= 5000
STRESS_JOBS ?= 3
stress: $(MODULE) $(BUILD)/.deps-test
	CHANNELS_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) perl tools/model-stress.pl --schedules $(SCHEDULES) --jobs $(STRESS_JOBS) $(if $(STRESS_FIRST),--first $(STRESS_FIRST))

run: $(MODULE) $(BUILD)/.deps-run
	@sh tools/run-demo.sh $(MODULE) $(NGINX_BIN)

bench: $(MODULE)
	@$(MAKE) -C bench MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN)

# The module built with ASan+UBSan, loaded into the unchanged nginx binary, and every test.
sanitize: $(BUILD)/.deps-test
	@[ -z '$(NGINX_TARBALL)' ] || { echo 'make sanitize runs on Debian'"'"'s nginx (no NGINX_TARBALL)' >&2; exit 2; }
	NGINX_SRC=$(NGINX_SRC) NGINX_BIN=$(NGINX_BIN) PROVE_JOBS=$(PROVE_JOBS) \
	DEBIAN_CC_OPT='$(DEBIAN_CC_OPT)' DEBIAN_LD_OPT='$(DEBIAN_LD_OPT)' sh tools/sanitize.sh

# valgrind memcheck of a single-process nginx over publish, SSE, long-poll, delete and stats.
valgrind: $(MODULE) $(BUILD)/.deps-valgrind
	CHANNELS_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) sh tools/valgrind.sh

# The Debian package, built by dpkg-buildpackage from a copy of the tree (debian/), then
# checked with lintian. Its version is debian/changelog's.
DEB_VERSION := $(shell dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null || \
                 sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_FILE    := $(BUILD)/libnginx-mod-http-channels_$(DEB_VERSION)_$(DEB_ARCH).deb

deb: $(DEB_FILE)

$(DEB_FILE): $(DEB_INPUTS) $(BUILD)/.deps-deb
	sh tools/build-deb.sh $(BUILD)/deb $(BUILD)

# A module built without hiredis (as on a machine without libhiredis-dev), then t/build.t
# on both builds: exported symbols, -std=c++17 on every C++ unit, channel_redis refused.
NOREDIS_TREE := $(BUILD)/noredis/nginx
NOREDIS      := $(BUILD)/noredis/ngx_http_channels_module.so

$(NOREDIS_TREE)/objs/Makefile: config config.make tools/configure-nginx.sh $(BUILD)/.deps-build
	@rm -rf $(NOREDIS_TREE) && mkdir -p $(NOREDIS_TREE)
	cp -a $(NGINX_SRC)/. $(NOREDIS_TREE)/
	cd $(NOREDIS_TREE) && CHANNELS_REDIS=no sh $(CURDIR)/tools/configure-nginx.sh $(CURDIR) \
	    '$(DEBIAN_CC_OPT)' '$(DEBIAN_LD_OPT)'

$(NOREDIS): $(NOREDIS_TREE)/objs/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(NOREDIS_TREE) -f objs/Makefile modules
	cp $(NOREDIS_TREE)/objs/ngx_http_channels_module.so $@.tmp && mv -f $@.tmp $@

check-build: $(MODULE) $(NOREDIS) $(BUILD)/.deps-test
	@[ -z '$(NGINX_TARBALL)' ] || { echo 'make check-build runs on Debian'"'"'s nginx (no NGINX_TARBALL)' >&2; exit 2; }
	CHANNELS_MODULE=$(MODULE) CHANNELS_MODULE_NOREDIS=$(NOREDIS) NGINX_BIN=$(NGINX_BIN) prove t/build.t

clean:
	rm -rf $(BUILD)
