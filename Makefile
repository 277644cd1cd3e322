# nginx-channels: build, run, test, bench.
#   make            build build/ngx_http_channels_module.so against Debian's nginx-dev
#   make run        install what is missing, build, run the demo on 127.0.0.1:8080/8081
#   make test       install what is missing, build, run unit tests and t/*.t
#   make bench      compare with nchan (see bench/README.md)
#   make NGINX_SRC=/path/to/nginx-x.y.z   build against another nginx source tree

NGINX_SRC   ?= /usr/share/nginx/src
NGINX_BIN   ?= /usr/sbin/nginx
BUILD       := $(CURDIR)/build
NGX_TREE    := $(BUILD)/nginx
MODULE      := $(BUILD)/ngx_http_channels_module.so
UNIT_BIN    := $(BUILD)/unit_tests
PROVE_JOBS  ?= 2
CXX         ?= g++
UNIT_CXXFLAGS := -std=c++17 -O1 -g -Wall -Wextra -Werror -Isrc

# Debian's nginx-dev records the flags its nginx was configured with.
DEBIAN_CC_OPT := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2
DEBIAN_LD_OPT := -Wl,-z,relro -Wl,-z,now -fPIC

MODULE_SRCS := $(wildcard src/*.cpp src/*.h src/channels/*.cpp src/channels/*.h)
PURE_SRCS   := $(wildcard src/channels/*.cpp)
UNIT_SRCS   := $(wildcard t/unit/*.cpp)

.PHONY: all deps run test unit unit-asan prove bench clean fuzz sanitize valgrind

all: $(MODULE)

# Installs only what is missing; a no-op on a prepared machine.
deps:
	@sh tools/install-deps.sh

$(BUILD)/.deps-ok: tools/install-deps.sh
	@sh tools/install-deps.sh
	@mkdir -p $(BUILD) && touch $@

$(NGX_TREE)/objs/Makefile: config $(BUILD)/.deps-ok
	@rm -rf $(NGX_TREE) && mkdir -p $(NGX_TREE)
	cp -a $(NGINX_SRC)/. $(NGX_TREE)/
	cd $(NGX_TREE) && sh $(CURDIR)/tools/configure-nginx.sh $(CURDIR) '$(DEBIAN_CC_OPT)' '$(DEBIAN_LD_OPT)'

$(MODULE): $(NGX_TREE)/objs/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	cp $(NGX_TREE)/objs/ngx_http_channels_module.so $@.tmp && mv -f $@.tmp $@   # running nginx keeps the old inode

$(UNIT_BIN): $(PURE_SRCS) $(UNIT_SRCS) $(wildcard src/channels/*.h t/unit/*.h) $(BUILD)/.deps-ok
	$(CXX) $(UNIT_CXXFLAGS) -o $@ $(PURE_SRCS) $(UNIT_SRCS) -lgtest -lgtest_main -lcrypto -pthread

unit: $(UNIT_BIN)
	$(UNIT_BIN)

# The pure logic under ASan+UBSan: catches reads past the end that plain tests miss.
unit-asan: $(BUILD)/.deps-ok
	$(CXX) $(UNIT_CXXFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all \
	    -o $(BUILD)/unit_asan $(PURE_SRCS) $(UNIT_SRCS) -lgtest -lgtest_main -lcrypto -pthread
	$(BUILD)/unit_asan

# libFuzzer targets of the pure parsers and formatters (SECONDS=N per target, default 300).
fuzz:
	$(MAKE) -C fuzz run

# The browser and EventSource tests' npm packages are installed once, before the parallel run.
prove: $(MODULE)
	sh t/js/ensure-deps.sh
	CHANNELS_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) prove -j$(PROVE_JOBS) -r t/

test: $(MODULE) unit prove

run: $(MODULE)
	@sh tools/run-demo.sh $(MODULE) $(NGINX_BIN)

bench: $(MODULE)
	@$(MAKE) -C bench MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN)

# The module built with ASan+UBSan, loaded into the unchanged nginx binary, and every test.
sanitize: $(BUILD)/.deps-ok
	NGINX_SRC=$(NGINX_SRC) NGINX_BIN=$(NGINX_BIN) PROVE_JOBS=$(PROVE_JOBS) \
	DEBIAN_CC_OPT='$(DEBIAN_CC_OPT)' DEBIAN_LD_OPT='$(DEBIAN_LD_OPT)' sh tools/sanitize.sh

# valgrind memcheck of a single-process nginx over publish, SSE, long-poll, delete and stats.
valgrind: $(MODULE)
	CHANNELS_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) sh tools/valgrind.sh

clean:
	rm -rf $(BUILD)
