# Two entry points for a fresh machine: `make demo` (set up, restore the bundled example) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench-speed bench-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	mkdir -p demo
	$(VENV)/bin/dipc fit inpaint dip_compile/data/example.png --mask dip_compile/data/example_mask.png \
		-o demo/restored.png --iterations 300 --compare demo/before_after.png \
		--reference dip_compile/data/example.png --report demo/report.json --checkpoint demo/restored.ckpt --force
	@echo "demo: restored image demo/restored.png, before/after demo/before_after.png"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo *.egg-info
