# wp-sync-bridge — everything a fresh Debian 12 machine needs is installed by these targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := scripts/wordpress-stack

.PHONY: help test demo venv system-deps stack-up stack-down bench lint clean wheel docs

help:
	@echo "make test   - install everything; the whole suite on WordPress 6.1, then its end-to-end part on 6.8"
	@echo "make demo   - local WordPress + fake CRM + the bridge; sends webhooks and shows the users made"
	@echo "make bench  - intake and end-to-end sync benchmarks (ratios against baselines in the same run)"
	@echo "make wheel  - build dist/wp_sync_bridge-*.whl (plugin, example config and unit included)"
	@echo "make docs   - regenerate docs/configuration.md from the settings model"

system-deps:
	$(STACK) install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Each run starts its own stack and purges it at the end, so both take the same WPSB_STACK_DIR and
# ports one after the other. On 6.8 only the tests marked `wordpress` (those that need the real
# WordPress) run again, less three whose subject is not WordPress (the wheel, the demo, the systemd
# unit) and whose WordPress calls the others make too. WordPress 6.8 is Debian 13's package,
# fetched with apt into .cache once (never installed).
test: system-deps venv
	WPSB_WP_LINE=6.8 $(STACK) install
	WPSB_WP_LINE=6.1 $(PY) -m pytest -ra
	WPSB_WP_LINE=6.8 $(PY) -m pytest -ra -m wordpress --ignore=tests/test_packaging.py \
	    --ignore=tests/test_demo.py --ignore=tests/test_systemd_e2e.py

demo: system-deps venv
	$(PY) scripts/demo.py

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

bench: system-deps venv
	$(PY) bench/intake.py
	$(PY) bench/sync.py
	$(PY) bench/scale.py --rounds 1

# The suite builds the wheel too (tests/test_packaging.py: fresh venv, --version, doctor).
wheel: venv
	$(PY) -m pip wheel . --no-deps -q -w dist

docs: venv
	$(PY) -m bridge.docs > docs/configuration.md

clean:
	-$(STACK) purge
	rm -rf $(VENV) .demo .pytest_cache dist build .cache
