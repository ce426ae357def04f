# tidb-localpv — two commands do all the set-up on a fresh machine:
#   make demo   the playground: a local control plane, simulated nodes with
#               real disks, the whole disk lifecycle narrated
#   make test   the full suite: unit, root-only (real mounts, loop devices,
#               mkfs), fuzzing, and the e2e scenarios on a real control plane
#
# The Kubernetes binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kwok), containerd and the image's
# Debian base are built once per version into $(CACHE) — outside the work
# tree — and reused afterwards. As root, the Debian packages the real nodes
# need (runc, CNI plugins, nftables, xfsprogs, debootstrap) are installed
# when missing.

GO        ?= go
BIN       ?= bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CACHE     ?= $(or $(TIDB_LOCALPV_CACHE),$(HOME)/.cache/tidb-localpv)
FUZZTIME  ?= 20s
# A new input is minimized for at most this long (the default, 60 s, spends
# the whole budget minimizing and none fuzzing).
FUZZMINIMIZE ?= 2s
E2E_TIMEOUT ?= 60m
# Scenarios on simulated nodes run this many at a time, each on a control
# plane of its own: they mostly wait (on poll intervals, graces, kubelet), so
# even two cores keep several busy. The real-node scenarios run beside them
# from the start, taking turns on a machine-wide lock (e2e/env_test.go).
E2E_PARALLEL ?= 4
IMAGE     ?= tidb-localpv.local/tidb-localpv:$(VERSION)
MODELTIME ?= 60s
SOAK      ?= 30m
export TIDB_LOCALPV_CACHE := $(CACHE)

.PHONY: all build image test unit model soak manifests-test fuzz e2e e2e-prepare bench demo demo-real demo-smoke lint clean help generate

all: build

help:
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/tidb-localpv (and bin/kubectl-tidb_localpv, the kubectl plugin: put it on your PATH)
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN)/tidb-localpv ./cmd/tidb-localpv
	ln -sf tidb-localpv $(BIN)/kubectl-tidb_localpv

image: ## build the image without Docker: $(BIN)/tidb-localpv-image.tar (docker load / ctr import / crane push), named $(IMAGE)
	$(GO) run ./e2e/image/cmd/build-image -out $(BIN)/tidb-localpv-image.tar -version $(VERSION) -tag $(IMAGE) -cache-dir $(CACHE)

test: lint unit model manifests-test fuzz e2e ## the full suite (the playground's story, as make demo-smoke tells it, runs among the e2e scenarios) (run as root to include the real-disk tests; CI=1 makes skipped root tests fail)
	@echo "make test: all passed"

unit: ## unit and root-only tests, with the race detector
	@echo "== unit and root tests"
	$(GO) test -race -count=1 ./...

manifests-test: ## the install's tests, a module of their own (manifests/go.mod): overlays render with every reference intact, alert rules load in Prometheus's parser
	@echo "== manifests: kustomize overlays, alert rules, dashboard"
	cd manifests && $(GO) vet ./... && $(GO) test -count=1 ./...

model: ## the model check of the safety invariants: fixed seeds, then random histories for $(MODELTIME); prints seeds and figures
	@echo "== model check"
	$(GO) test -count=1 -run '^TestModel$$' -timeout 15m -v ./e2e/model/ -args -model.duration=$(MODELTIME)

soak: ## the model check for as long as asked (make soak SOAK=30m); prints histories × steps and what they exercised
	$(GO) test -count=1 -run '^TestModel$$' -timeout 0 -v ./e2e/model/ -args -model.duration=$(SOAK)

fuzz: ## bounded fuzzing of the parsers ($(FUZZTIME) each)
	@echo "== fuzz: inventory parser"
	$(GO) test -run='^$$' -fuzz='^FuzzParseInventory$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) ./discovery/
	@echo "== fuzz: PD store decoder"
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeStores$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) ./volumecontroller/pd/

e2e-prepare: ## install missing host packages (root) and build (or reuse) every binary and the image base in $(CACHE), printing progress
	$(GO) run ./e2e/cluster/cmd/prepare -cache-dir $(CACHE)

# The image's static binary (CGO_ENABLED=0, -trimpath) shares no compiled
# package with the other builds: on a cold Go build cache the real-node
# scenarios compiled it beside four control planes and were Ready after 11
# minutes instead of one. So it is compiled first, alone.
e2e: e2e-prepare ## the scenarios on real control planes, $(E2E_PARALLEL) at a time, and the playground's story
	@echo "== e2e: the harness's own checks"
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -run '^TestCluster' -parallel $(E2E_PARALLEL) -v ./e2e/cluster/
	@echo "== e2e: compiling the image's static binary and the test pod once, before the scenarios start side by side"
	CGO_ENABLED=0 $(GO) build -trimpath -o /dev/null ./cmd/tidb-localpv ./e2e/image/testpod
	@echo "== e2e scenarios ($(E2E_PARALLEL) on simulated nodes at a time, the real-node ones beside them)"
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -parallel 64 -v ./e2e/ -args -e2e.scenarios=$(E2E_PARALLEL)

bench: e2e-prepare ## benchmarks that print figures (wipe time, mount→PV, Tombstone→Available, controller resync, real nodes)
	$(GO) test -run='^$$' -bench=. -benchtime=3x -benchmem ./provisioner/ ./daemon/ ./volumecontroller/...
	$(GO) test -tags e2e -run='^$$' -bench=. -skip=RealNode -benchtime=5x -timeout $(E2E_TIMEOUT) ./e2e/
	@echo "== real-node benchmarks (each takes its own samples; a node death waits the manifest's 60 s grace)"
	$(GO) test -tags e2e -run='^$$' -bench=RealNode -benchtime=1x -timeout $(E2E_TIMEOUT) -v ./e2e/

demo-smoke: e2e-prepare ## the playground's whole story, then exit (keeps make demo working)
	$(GO) run ./e2e/playground -exit

demo: e2e-prepare ## the playground: ready in under a minute on a warm cache; Ctrl-C tears it down
	$(GO) run ./e2e/playground

demo-real: e2e-prepare ## the playground on two real nodes (kubelet + containerd, the image built here, a pod writing files); root
	$(GO) run ./e2e/playground -real-nodes

lint: ## gofmt and go vet (including e2e-tagged files)
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...

clean:
	rm -rf $(BIN)

generate: ## regenerate the LocalDisk API's deepcopy code and CRD (controller-gen, pinned)
	$(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0 object paths=./provisioner/apis/... crd:crdVersions=v1 output:crd:dir=./manifests/crd
