# The README's two commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := .cache/installed.stamp

.PHONY: demo test install data bench bench-smoke clean

# Reinstall only when pyproject.toml changed or the package is missing, or installed from another
# checkout (an editable install elsewhere imports from here only by the current directory's luck).
# The check runs every time: a reimaged machine can keep .cache but lose site-packages.
install:
	@mkdir -p .cache
	@(cd / && $(PYTHON) -c "import lana, os, sys; sys.exit(os.path.dirname(os.path.realpath(lana.__file__)) != os.path.realpath('$(CURDIR)/lana'))") 2>/dev/null && [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] || \
		{ echo "installing lana-accel and its dependencies (pip; a few minutes on a fresh machine)" && \
		  $(PIP) install --disable-pip-version-check -e '.[dev]' && touch $(STAMP); }

# Fashion-MNIST: use the files if present anywhere lana looks, else the Debian package.
data:
	@if $(PYTHON) -c "import sys; from lana.data import _find_idx; sys.exit(0 if _find_idx('t10k-labels-idx1-ubyte') else 1)" 2>/dev/null; then \
		true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) ; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files in \$$LANA_DATA (see README)."; \
		exit 1; \
	fi

demo: install data
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PYTHON) -m lana demo

test: install data
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

bench: install data
	HF_HUB_OFFLINE=1 $(PYTHON) -m bench

bench-smoke: install data
	HF_HUB_OFFLINE=1 $(PYTHON) -m bench --smoke

clean:
	rm -rf .cache runs .pytest_cache
