# Kitsune's two entry points for a newcomer are `make run` and `make test`.
# Everything they need is built here from the Go module proxy and npm.

GO        ?= go
CACHE     := $(CURDIR)/.cache
# Kubo: KUBO_VER is what `make run` and the tests use; KUBO_COMPAT_VER is an
# older release a compatibility subset of the tests runs fleet and client on.
# Each is built from its own module, tools/kubo-<version>, to a versioned path.
KUBO_VER  := v0.43.1
KUBO      := $(CACHE)/bin/ipfs-$(KUBO_VER)
KUBO_COMPAT_VER := v0.41.0
KUBO_COMPAT     := $(CACHE)/bin/ipfs-$(KUBO_COMPAT_VER)
KITSUNE   := $(CURDIR)/bin/kitsune
HELIA_DIR := testdata/helia
HELIA_STAMP := $(HELIA_DIR)/node_modules/.package-lock.json
JSIPFS_DIR := testdata/jsipfs
HELIA_BROWSER_DIR := testdata/helia-browser
HELIA_BROWSER_STAMP := $(HELIA_BROWSER_DIR)/node_modules/.package-lock.json
JSIPFS_STAMP := $(JSIPFS_DIR)/node_modules/.package-lock.json
VFETCH_DIR := testdata/verified-fetch
VFETCH_STAMP := $(VFETCH_DIR)/node_modules/.package-lock.json
TEST_FLAGS ?= -timeout 40m

.PHONY: all build kubo helia jsipfs helia-browser verified-fetch run test vet fmt-check clean bench fuzz fuzz-short race soak docs

all: build

build: $(KITSUNE)

$(KITSUNE): $(shell find . -name '*.go' -not -path './tools/*' -not -path './testdata/*') go.mod go.sum
	$(GO) build -o $@ ./cmd/kitsune

# Kubo is built from the module proxy through tools/kubo-<version>, which
# pins the version: `go install ...@version` does not work against this
# proxy. The binary only takes its final name once it reports that version.
kubo: $(KUBO) $(KUBO_COMPAT)

$(CACHE)/bin/ipfs-%: tools/kubo-%/go.mod tools/kubo-%/go.sum
	cd tools/kubo-$* && $(GO) build -o $@.tmp github.com/ipfs/kubo/cmd/ipfs
	$@.tmp version | grep -q "ipfs version $(patsubst v%,%,$*)$$"
	mv $@.tmp $@

# The Helia test client and the Node 22 it runs on, from npm.
helia: $(HELIA_STAMP)

$(HELIA_STAMP): $(HELIA_DIR)/package.json $(HELIA_DIR)/package-lock.json
	npm ci --prefix $(HELIA_DIR) --no-audit --no-fund
	touch $@

# Stock js-ipfs (ipfs-core 0.18.1) as deployed apps ship it, from npm; it
# runs on the Node 22 that `make helia` installs. No install scripts:
# classic-level's would rebuild its native module with node-gyp (which
# fetches Node headers); the prebuilt one it ships is what runs.
jsipfs: $(JSIPFS_STAMP)

$(JSIPFS_STAMP): $(JSIPFS_DIR)/package.json $(JSIPFS_DIR)/package-lock.json
	npm ci --prefix $(JSIPFS_DIR) --no-audit --no-fund --ignore-scripts
	touch $@

# Helia for the browser test: pinned packages and esbuild, from npm. The
# test bundles the page itself (testdata/helia-browser/build.mjs) and loads
# it in Debian's chromium. No install scripts: nothing the bundle uses needs
# one (esbuild's binary is its @esbuild/linux-x64 package), and
# node-datachannel's would download a native module from GitHub.
helia-browser: $(HELIA_BROWSER_STAMP)

$(HELIA_BROWSER_STAMP): $(HELIA_BROWSER_DIR)/package.json $(HELIA_BROWSER_DIR)/package-lock.json
	npm ci --prefix $(HELIA_BROWSER_DIR) --no-audit --no-fund --ignore-scripts
	touch $@

# @helia/verified-fetch for the gateway test, pinned by its lock file; it
# runs on the Node 22 that `make helia` installs. No install scripts: none
# of what it uses in Node needs one.
verified-fetch: $(VFETCH_STAMP)

$(VFETCH_STAMP): $(VFETCH_DIR)/package.json $(VFETCH_DIR)/package-lock.json
	npm ci --prefix $(VFETCH_DIR) --no-audit --no-fund --ignore-scripts
	touch $@

run: build $(KUBO)
	./scripts/devfleet.sh $(KITSUNE) $(KUBO)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: kubo helia jsipfs helia-browser verified-fetch fmt-check vet
	@echo "Kubo for the tests: $$($(KUBO) version) ($(KUBO)); compatibility subset: $$($(KUBO_COMPAT) version) ($(KUBO_COMPAT))"
	KITSUNE_KUBO_BIN=$(KUBO) KITSUNE_KUBO_COMPAT_BIN=$(KUBO_COMPAT) $(GO) test $(TEST_FLAGS) ./...
	$(MAKE) --no-print-directory race
	$(MAKE) --no-print-directory fuzz-short

# The race detector over the packages that wrap libp2p's streams and
# muxers (a read racing a drain in proxy/mplex.go lived on main unseen):
# fast enough for every run, unlike the relay's timing-heavy tests.
RACE_PKGS ?= ./proxy/
race:
	$(GO) test -race -count=1 $(RACE_PKGS)

# Fuzz targets (package:name); seed corpora in <package>/testdata/fuzz/.
# `make test` runs each for FUZZTIME_SHORT; `make fuzz` for FUZZTIME
# (FUZZTIME=1h make fuzz). A failing input is written to the package's
# testdata/fuzz/<name>/ and then runs with every `go test`. The first run
# builds the instrumented dependencies (minutes); later runs reuse them.
FUZZ_TARGETS   := ./bitswap:FuzzRelayMessages ./bitswap:FuzzReplyWire ./bitswap:FuzzWantWire ./bitswap:FuzzParseNodeMessage ./preload:FuzzParseRefs ./proxy:FuzzLoadKeyFile ./cmd/kitsune:FuzzReadPrivateKey
FUZZTIME       ?= 10m
# Counted, not timed: a timed run that ends while a slow input (an RSA key)
# is running fails with "context deadline exceeded" on a loaded machine.
FUZZTIME_SHORT ?= 4000x
FUZZ_MINIMIZE  ?= 60s

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz: $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZ_MINIMIZE) $$pkg; \
	done

# Short fixed runs for CI: minimising new inputs would eat the time.
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT) FUZZ_MINIMIZE=10x

# Soak (not part of `make test`): the churn and flood tests at scale,
# repeated; SOAK_PEERS peers come and go in each churn run. Goroutines,
# relay tables, connections and heap must return to baseline every time.
# About 3 minutes per run with the defaults.
SOAK_PEERS ?= 20000
SOAK_COUNT ?= 3

soak: kubo
	KITSUNE_KUBO_BIN=$(KUBO) KITSUNE_SOAK_PEERS=$(SOAK_PEERS) $(GO) test -timeout 2h -count $(SOAK_COUNT) -v \
		-run 'TestUpstreamChurnReturnsToBaseline|TestFloodingPeerIsBounded|TestStreamFloodDoesNotPinMemory' ./cmd/kitsune ./bitswap

# Benchmarks (not part of `make test`, whose smoke test runs every scenario
# at tiny sizes): Kitsune against direct Kubo, a Kubo front node and a
# minimal forwarder, and (scenario 5, root: network namespaces) a client
# 40 ms RTT and 50 Mbit/s away fetching 64 MiB directly vs through Kitsune.
# Writes bench/results/ (JSON, Markdown, ratios.png); about 7 minutes on 2
# cores plus scenario 5's. Extra flags: make bench BENCH_FLAGS="-runs12 3".
BENCH       := $(CURDIR)/bin/kitsune-bench
BENCH_FLAGS ?=

bench: build kubo
	$(GO) build -o $(BENCH) ./bench/cmd/kitsune-bench
	KITSUNE_KUBO_BIN=$(KUBO) $(BENCH) -kitsune $(KITSUNE) -out bench/results -command "make bench" $(BENCH_FLAGS)

clean:
	rm -rf $(CACHE) bin $(HELIA_DIR)/node_modules $(JSIPFS_DIR)/node_modules $(HELIA_BROWSER_DIR)/node_modules

# Reference documents generated from the code; a test fails when they are
# stale, naming this target.
docs:
	$(GO) run ./cmd/kitsune docs config -o docs/configuration.md
