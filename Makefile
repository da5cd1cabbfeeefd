# Two entry points for a fresh machine: `make demo` (set up, restore the bundled example) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo ui test bench-speed bench-quality bench-presets bench-batch bench-paper clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,ray,ui]'
	touch $(STAMP)

demo: setup
	mkdir -p demo
	$(VENV)/bin/dipc fit inpaint dip_compile/data/example.png --mask dip_compile/data/example_mask.png \
		-o demo/restored.png --iterations 300 --compare demo/before_after.png \
		--reference dip_compile/data/example.png --report demo/report.json --checkpoint demo/restored.ckpt --force
	@echo "demo: restored image demo/restored.png, before/after demo/before_after.png"

# The web page (dipc ui, the 'ui' extra that setup installs): http://127.0.0.1:7860 (PORT=N to choose another)
ui: setup
	$(VENV)/bin/dipc ui $(if $(PORT),--port $(PORT))

# The browser of tests/test_ui.py: Debian's Chromium, installed only where it is missing and apt-get can run (CI runs
# as root); elsewhere the browser test skips and says why (.ci/run sets DIPC_REQUIRE_BROWSER: there it fails instead).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "make: no chromium, and apt-get cannot run here: the browser test of tests/test_ui.py will skip"; fi

# Lint, format check and type check, then the suite twice: with `auto` resolving as on a CPU without native bf16
# and as on one with it (the capability is faked, so both runs pass on any CPU).
test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	DIPC_TEST_AUTO_PRECISION=fp32 $(PY) -m pytest -q --durations=15
	DIPC_TEST_AUTO_PRECISION=bf16 $(PY) -m pytest -q --durations=15

# On demand, not in CI: speed and quality figures (tables on stdout, JSON under benchmarks/results/).
bench-speed: setup
	$(PY) benchmarks/fit_speed.py --nets denoise,inpaint --sizes 256 --backends eager,auto --precisions fp32,auto

bench-presets: setup
	$(PY) benchmarks/presets_quality.py --size 128 --iterations 600 --threads 2

bench-quality: setup
	$(PY) benchmarks/quality.py --size 96 --iterations 900 --denoise-iterations 1800 --stop-patience 300 \
		--denoise-images F16_GT.png kate.png

bench-batch: setup
	$(PY) benchmarks/batch_throughput.py --sizes 64,128 --images 8 --iterations 50

# The paper's three tables at quick scale (30 min measured on 2 Xeon AMX cores in bf16, about 2 h estimated on 2
# AVX2 cores in fp32; docs/paper-tables.md; --scale paper for the paper's sizes), with the
# classical peers of the 'bench' extra (bm3d is free for non-commercial use only).
bench-paper: setup
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/paper_tables.py --table all --scale quick -q

clean:
	rm -rf $(VENV) demo *.egg-info
