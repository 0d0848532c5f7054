# Thin wrappers. Every target that builds or runs Rust installs what it needs first (make setup).

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
# tch builds against the libtorch inside the virtualenv's torch wheel.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

.PHONY: setup build lint fmt test validate-deploy demo bench-ensemble bench-ensemble-cuda bench-attribution bench-quality bench-quality-explore bench-coordinator bench-report chaos compose-smoke clean

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --workspace

fmt:
	cargo fmt --all

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-boundaries.sh
	scripts/check-module-cycles.py crates/lethe-coordinator crates/lethe-cli

test: lint
	cargo test --workspace
	scripts/check-deploy.sh
	scripts/validate-compose.sh
	scripts/validate-k8s.sh
	scripts/check-go-example.sh

# The deployment files without a Docker engine or a cluster (deploy/README.md). check-deploy
# reads the binaries' --help: build them first (make test does).
validate-deploy: setup
	scripts/check-deploy.sh
	scripts/validate-compose.sh
	scripts/validate-k8s.sh

demo: build
	scripts/demo.sh

# The MLP (256 members), then the small CNN and a reduced ResNet-9, each against PyTorch one
# model at a time and torch.func/vmap: about 10 minutes on 2 cores.
bench-ensemble: setup
	cargo run --release -p lethe-ml --example bench_ensemble -- --out bench/results/ensemble.json

# On a machine with a CUDA GPU: the same bench there, plus how the ensemble's rate grows with M.
bench-ensemble-cuda: setup
	cargo run --release -p lethe-ml --example bench_ensemble -- --device cuda --out bench/results/ensemble-cuda.json

bench-attribution: setup
	cargo run --release -p lethe-ml --example bench_attribution -- --out bench/results/attribution.json

# Every method on the 21 instances of the forget-set suite and the two historical sets. The
# first run on 2 cores trains 2,000 subset models (~8 min), 100 originals and 150 oracles per
# instance (~1 min each); later runs reuse them from bench/work/quality. bench_seconds in the
# JSON says how long the last run took. bench-quality-explore adds the candidate estimators
# of DMM's shift on the tuning instances (about 10 minutes more).
QUALITY_REPORT = python bench/report_quality.py --json bench/results/quality.json \
	--per-point bench/work/quality/klom-per-point.safetensors --out-dir bench/results \
	--candidates bench/results/quality-candidates.json

bench-quality: setup
	cargo run --release -p lethe-ml --example bench_quality -- --out bench/results/quality.json
	$(QUALITY_REPORT)

bench-quality-explore: setup
	cargo run --release -p lethe-ml --example bench_quality -- --explore --out bench/results/quality.json
	$(QUALITY_REPORT)

# About two minutes: 64 simulated gRPC workers against a SKIP LOCKED loop in SQL, on a private
# PostgreSQL cluster (durable settings), two rounds of 20,000 no-op tasks each.
bench-coordinator: setup
	cargo run --release -p lethe-coordinator --example bench_coordinator -- --out bench/results/coordinator.json

# No benchmark is run: docs/BENCHMARKS.md and docs/benchmarks/*.png from bench/results/*.json.
bench-report: setup
	python bench/report.py --results bench/results --out docs/BENCHMARKS.md --img-dir docs/benchmarks

# The full fault campaign (crates/lethe-worker/tests/chaos.rs): 100 worker kills, 10 coordinator
# restarts, 3 PostgreSQL restarts and 5 artifact-store faults under a stream of requests, then
# the bad-input suite (crates/lethe-coordinator/tests/bad_input.rs, 500+ hostile requests) and
# the overload checks (tests/overload.rs: shedding, bounded long-polls, quotas) and the
# malformed objects (lethe-worker/tests/malformed_objects.rs).
# Both write their figures into bench/results/reliability.json. make test runs a short
# campaign and the whole suite.
# docker-compose.yml for real (Docker, else Podman from Debian; local base images where no
# registry answers): build, start, one audited deletion through it, download, tear down.
# Tens of minutes on 2 cores, most of it building the images. Logs in compose-smoke/.
compose-smoke: setup
	scripts/compose-smoke.sh

chaos: setup
	cargo build --release -p lethe-coordinator -p lethe-worker
	LETHE_CHAOS=full LETHE_RELIABILITY_OUT=$(CURDIR)/bench/results/reliability.json \
		cargo test --release -p lethe-worker --test chaos -- --nocapture
	LETHE_RELIABILITY_OUT=$(CURDIR)/bench/results/reliability.json \
		cargo test --release -p lethe-coordinator --test bad_input --test overload -- --nocapture
	LETHE_RELIABILITY_OUT=$(CURDIR)/bench/results/reliability.json \
		cargo test --release -p lethe-worker --test malformed_objects -- --nocapture

clean:
	cargo clean
	rm -rf demo-output
