# The two commands a newcomer runs:  make demo  and  make test  (each sets up .venv on first use).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := resources/datasets/fashion-mnist
CORES ?= all
# Idle OpenMP threads spin by default; with concurrent jobs on few cores that costs 10x.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo study study-holdout evaluate bench bench-peers test test-quick install fetch-demo-data lint format docs config-docs rulegraph clean-results

demo: $(STAMP) $(DEMO_DATA)/train-images-idx3-ubyte.gz
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

# The noise study (config/study.yaml, about 100 minutes on 2 cores): one thread per job, so two small
# jobs share the 2 cores instead of each waiting for both.
STUDY_THREADS := train_model=1 train_run=1 train_fold=1 predict=1 extract_factors=1 cleanlab_logistic=1

study: $(STAMP) $(DEMO_DATA)/train-images-idx3-ubyte.gz
	$(BIN)/snakemake --cores $(CORES) --set-threads $(STUDY_THREADS) --configfile config/study.yaml

# The study on seeds that chose nothing (config/study_holdout.yaml over study.yaml, about 45
# minutes on 2 cores): results/study_holdout/.
study-holdout: $(STAMP) $(DEMO_DATA)/train-images-idx3-ubyte.gz
	$(BIN)/snakemake --cores $(CORES) --set-threads $(STUDY_THREADS) \
		--configfile config/study.yaml config/study_holdout.yaml

# The counterfactual evaluation (config/evaluate.yaml, about 40 minutes on 2 cores): its retrains
# are small jobs, one thread each, two at a time.
EVALUATE_THREADS := train_model=1 predict=1 extract_factors=1 evaluation_factors=1

evaluate: $(STAMP) $(DEMO_DATA)/train-images-idx3-ubyte.gz
	$(BIN)/snakemake --cores $(CORES) --set-threads $(EVALUATE_THREADS) --configfile config/evaluate.yaml

# Two pytest workers (pytest-xdist), one per core of the 2-core machines the suite is sized for;
# each test file runs whole on one worker, so a file's module fixtures are built once, and the
# files go out in collection order (the longest first, tests/conftest.py), not xdist's
# most-tests-first. More cores: make test TEST_WORKERS=8.
TEST_WORKERS ?= 2
IN_WORKERS := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(BIN)/python -m pytest $(IN_WORKERS)

# The development loop: every test that does not run snakemake (about a minute on 2 cores);
# `make test` (CI) runs these and the workflow tests.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not workflow and not slurm" $(IN_WORKERS)

# The speed benchmarks (benchmarks/README.md), about 18 minutes on 2 cores, each table also kept in
# results/bench/. The Captum comparison and the stage table read the demo's results, so the demo
# runs first (a no-op once it has run).
BENCH_STAMP := $(VENV)/.bench-installed
BENCHMARKS := bench_memory_format bench_startup bench_influence bench_scale bench_captum bench_demo bench_curvature

bench: demo $(BENCH_STAMP)
	mkdir -p results/bench
	for name in $(BENCHMARKS); do \
		$(BIN)/python benchmarks/$$name.py > results/bench/$$name.md.tmp || exit 1; \
		mv results/bench/$$name.md.tmp results/bench/$$name.md; \
		cat results/bench/$$name.md; \
	done

# The peers (Kronfluence, TRAK, dattri's LDS) on the evaluation's retrains: make evaluate first,
# then about 20-35 minutes on 2 cores; the table also in results/evaluation/peers.csv.
bench-peers: evaluate $(BENCH_STAMP)
	mkdir -p results/bench
	$(BIN)/python benchmarks/bench_peers.py > results/bench/bench_peers.md.tmp
	mv results/bench/bench_peers.md.tmp results/bench/bench_peers.md
	cat results/bench/bench_peers.md

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

install: $(STAMP)

# Re-installs only when pyproject.toml changes; a second `make` is a no-op.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

fetch-demo-data: $(DEMO_DATA)/train-images-idx3-ubyte.gz

$(DEMO_DATA)/train-images-idx3-ubyte.gz:
	bash scripts/fetch-demo-data.sh $(DEMO_DATA)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/snakefmt .

# The docs site (mkdocs.yml: docs/ with README, config/README.md, benchmarks/README.md and the
# changelog as pages, the TracIn reference from its docstrings) into site/, offline. --strict fails
# on any warning, a broken link or anchor included. NO_MKDOCS_2_WARNING silences the theme's notice
# about its own end of life, printed on every build, which is no finding about these pages.
DOCS_STAMP := $(VENV)/.docs-installed

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,docs]'
	touch $@

# Regenerates the key reference in config/README.md from the schema.
config-docs: $(STAMP)
	$(BIN)/python -m tracinflow.config workflow/schemas/config.schema.yaml config/README.md

# The rule graph of the demo config as a picture (needs graphviz: apt-get install graphviz).
rulegraph: $(STAMP)
	@command -v dot >/dev/null || { echo "graphviz's dot is missing: apt-get install graphviz"; exit 1; }
	mkdir -p docs
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg.tmp
	mv docs/rulegraph.svg.tmp docs/rulegraph.svg

clean-results:
	rm -rf results logs/*.log logs/*/ .snakemake
