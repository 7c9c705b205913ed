# polarsearch: `make run` (a short real search on CPU) and `make test` (the test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
# CIFAR-10 as an ImageFolder tree beside the repository, when it is there.
DATA ?= $(wildcard ../shared/data/cifar10)
export POLARSEARCH_TEST_DATA := $(abspath $(DATA))

.PHONY: install run test lint clean experiment fidelity bench docker screenshots

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

run: install
	$(VENV)/bin/polarsearch --preset cpu-quick --target-flops 0.5 --delta 0.05 \
		$(if $(DATA),--data-dir $(DATA),--download --data-dir .cache/cifar10)

test: install
	$(PY) -m pytest -q -ra

# Issue 6: the F(λ, t) surfaces of the CPU regimes, with figures, into experiments/results/.
experiment: install
	$(PY) experiments/cpu_regime.py --data-dir $(DATA)

# Issue 11: polarization vs L1 vs uniform width at equal F, threshold scope, prunable set, Theorem 3.2
# (resumable; tables and figures into experiments/results/fidelity*; write-up in docs/fidelity.md).
fidelity: install
	nice -n 10 $(PY) experiments/fidelity.py --data-dir $(DATA) --jobs 2 && $(PY) experiments/fidelity_report.py --data-dir $(DATA)

# Side-by-side ratios (data pipeline vs random tensors, regularizer overhead, Ray overhead, strategies,
# pruned-model speed-up: its --quick run; the full table of docs/speed.md is that file's command).
bench: install
	for b in bench/bench_*.py; do echo "== $$b"; \
		case $$b in *bench_speed.py|*bench_search_cost.py) quick=--quick;; *) quick=;; esac; $(PY) $$b $$quick || exit 1; done

# Issue 14: the image over a local Debian base, run end to end (one container, then docker/compose.yaml).
# Needs a Docker engine and docker-compose; no venv.
docker:
	$(if $(DATA),CIFAR10_DIR=$(abspath $(DATA))) docker/run-local.sh

lint: install
	$(VENV)/bin/ruff check search trainers pruning tests experiments bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Issue 15: screenshots of the Ray dashboard during a smoke search and of MLflow after it, into docs/screenshots/.
screenshots: install
	$(PY) -m pip install -q -e ".[screenshots]" && $(PY) docs/screenshots.py --data-dir $(DATA)
