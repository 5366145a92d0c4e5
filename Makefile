# `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo study test bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,parquet,timm,lightning,slurm]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/hparr reproduce --out runs/demo

# lenet on digits: 3 seeds x {clean, 50% and 100% label noise, pixel shuffle}, statistics across them
study: $(STAMP)
	$(BIN)/hparr study --seeds 0-2 --noise 0,0.5,1,-1 --epochs 20 --lr 0.02 --snapshot-every 5 \
		--snapshot-all-until 5 --tb-logdir '' --out runs/study

# the fast tests first, then the end-to-end ones marked slow; each group spread over the cores (pytest-xdist:
# the fast tests file by file, so that a module's shared fixture is built once)
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile --durations=10
	$(BIN)/python -m pytest -q -m slow -n auto --dist worksteal --durations=10

bench: $(STAMP)
	$(BIN)/python -m bench

bench-gpu: $(STAMP)
	$(BIN)/python -m bench gpu

clean:
	rm -rf $(VENV) build src/*.egg-info
