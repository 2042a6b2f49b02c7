# nvidia-driverd: `make help` lists the targets.

GO          ?= go
BIN         := bin/nvidia-driverd
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
CACHE       ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nvidia-driverd
REAL_MODULES := $(CACHE)/real-module
DISTRIBUTION := $(CACHE)/distribution
FUZZTIME    ?= 15s
FUZZ_TARGETS := ./pkg/modinfo:FuzzParse ./pkg/modinfo:FuzzParseFields ./pkg/modinfo:FuzzParseVermagic ./pkg/hostinfo:FuzzParseOSRelease ./pkg/unpack:FuzzApply

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/nvidia-driverd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nvidia-driverd

IMAGE        ?= ghcr.io/nvidia-driverd/nvidia-driverd:latest
IMAGE_LAYOUT ?= bin/image
PUSH         ?=
LDCONFIG     ?= /sbin/ldconfig
CA_CERTS     ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: image
image: build ## Build the daemon's image into IMAGE_LAYOUT (bin/image) without Docker; PUSH=1 pushes it to IMAGE
	$(GO) run ./deploy/image --binary $(BIN) --version $(VERSION) \
		--revision "$$(git rev-parse HEAD 2>/dev/null)" --mtime "$$(git log -1 --format=%ct 2>/dev/null || echo 0)" \
		--ldconfig $(LDCONFIG) --ca-certificates $(CA_CERTS) \
		--name $(IMAGE) --oci-layout $(IMAGE_LAYOUT) $(if $(PUSH),--push $(IMAGE))

RELEASE_DIR ?= bin/release
CYCLONEDX   := github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0
# Every release artifact is a function of the commit: file times come from
# it, and the build leaves out paths, VCS stamps and build IDs.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_LDFLAGS := -X main.version=$(VERSION) -buildid=

.PHONY: release
release: ## Static binaries (linux/amd64, linux/arm64), the image index, an SBOM and SHA256SUMS in RELEASE_DIR (reproducible)
	rm -rf $(RELEASE_DIR) && mkdir -p $(RELEASE_DIR)
	for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -buildvcs=false -ldflags '$(RELEASE_LDFLAGS)' \
			-o $(RELEASE_DIR)/nvidia-driverd-linux-$$arch ./cmd/nvidia-driverd || exit 1; \
	done
	$(GO) run ./deploy/image --binary $(RELEASE_DIR)/nvidia-driverd-linux-amd64 --binary $(RELEASE_DIR)/nvidia-driverd-linux-arm64 \
		--version $(VERSION) --revision "$$(git rev-parse HEAD 2>/dev/null)" --mtime $(SOURCE_DATE_EPOCH) \
		--ldconfig $(LDCONFIG) --ca-certificates $(CA_CERTS) \
		--name $(IMAGE) --oci-layout $(RELEASE_DIR)/image > $(RELEASE_DIR)/image.digest
	# One SBOM per binary, under the build's own constraints. The generator
	# reads the checkout with go-git, which needs a plain clone (a git
	# worktree's .git file fails).
	GOBIN=$(CURDIR)/bin/tools $(GO) install $(CYCLONEDX)
	for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch bin/tools/cyclonedx-gomod app -json -noserial -notimestamp -main cmd/nvidia-driverd \
			-output $(RELEASE_DIR)/nvidia-driverd-linux-$$arch.cdx.json . >/dev/null || exit 1; \
	done
	cd $(RELEASE_DIR) && sha256sum nvidia-driverd-linux-amd64 nvidia-driverd-linux-arm64 \
		nvidia-driverd-linux-amd64.cdx.json nvidia-driverd-linux-arm64.cdx.json image/index.json > SHA256SUMS
	@cat $(RELEASE_DIR)/SHA256SUMS

.PHONY: deps
deps: ## Install the Debian packages the tests use (run as root)
	bash test/deps.sh

.PHONY: fixtures
fixtures: ## Fetch a real Debian kernel module and Debian's registry server for the tests (cached)
	bash test/fixtures/real-module.sh $(REAL_MODULES) >/dev/null
	bash test/registry/distribution.sh $(DISTRIBUTION) >/dev/null

.PHONY: test
test: deps fixtures ## Run every test with the race detector (the README's test command)
	NVIDIA_DRIVERD_REAL_MODULES=$(REAL_MODULES) NVIDIA_DRIVERD_DISTRIBUTION=$(DISTRIBUTION)/docker-registry \
		NVIDIA_DRIVERD_REQUIRE_FIXTURES=1 \
		$(GO) test -race -count=1 -timeout 20m ./...

# test-unit is the hermetic run: go test -short as any user, no network,
# no fixtures (their variables cleared, so those tests skip). A test that
# needs root or starts a program of the system's says so with test/needs
# and is skipped; make test runs everything.
.PHONY: test-unit
test-unit: ## Run the tests that need no root, network, fixtures, dbus-daemon or VM (quick)
	env -u NVIDIA_DRIVERD_REQUIRE_FIXTURES -u NVIDIA_DRIVERD_REAL_MODULES -u NVIDIA_DRIVERD_DISTRIBUTION -u NVIDIA_DRIVERD_BIN \
		$(GO) test -count=1 -short -timeout 5m ./...

# Every folder with Go files; they are all in the one module, so go vet
# ./... covers them too.
GO_DIRS := cmd pkg test deploy systemd

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $(GO_DIRS)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

.PHONY: check-tidy
check-tidy: ## Fail when go.mod or go.sum is not tidy
	$(GO) mod tidy -diff

BENCH_RUNS  ?= 5
BENCH_FLAGS ?=

.PHONY: bench
bench: build ## Run the Go benchmarks, then the install benchmark (BENCH_RUNS=5, BENCH_FLAGS=-check)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...
	$(GO) run ./test/bench/install -bin $(BIN) -runs $(BENCH_RUNS) $(BENCH_FLAGS)

.PHONY: fuzz
fuzz: ## Run each fuzzer for FUZZTIME (default 15s)
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -timeout 10m $$pkg || exit 1; \
	done

.PHONY: demo
demo: deps ## Boot a VM and narrate the main job: first boot, reboot, OS update (root; cached after the first run)
	bash test/e2e/demo.sh

.PHONY: demo-hosts
demo-hosts: build ## Show status and plan on sample host trees, then publish and install into one (no VM)
	bash test/demo.sh $(BIN)

.PHONY: e2e
e2e: e2e-cli e2e-hermetic e2e-vm ## All end-to-end tests: the binary against fixture hosts, the module build's isolation, then the VM scenarios

.PHONY: e2e-hermetic
e2e-hermetic: ## Build the VM's stub modules with the host's /usr/src and /lib/modules hidden (root)
	bash test/e2e/check-hermetic.sh

.PHONY: e2e-cli
e2e-cli: build ## Run the built binary end to end against fixture hosts
	NVIDIA_DRIVERD_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 10m ./test/...

.PHONY: e2e-vm
e2e-vm: ## Boot a Debian VM (qemu, no KVM needed) and run every scenario in it (root; SCENARIOS=... for some)
	bash test/e2e/run-e2e.sh $(SCENARIOS)

.PHONY: e2e-real
e2e-real: ## The real-driver tier: NVIDIA's 535 driver built from Debian's packages, in the VM (root; cached)
	bash test/e2e/run-e2e.sh real

.PHONY: ci
ci: check-tidy lint test e2e e2e-real ## Everything CI runs

.PHONY: install
install: build ## Install the binary to /opt/bin and the systemd units under /etc (as root)
	$(BIN) install-units

.PHONY: clean
clean: ## Remove build output
	rm -rf bin

.PHONY: clean-cache
clean-cache: ## Remove the cache of the VM, fixtures and benchmarks (CACHE, about 5 GB after make demo)
	rm -rf $(CACHE)
