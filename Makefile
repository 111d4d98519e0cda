# Set-up and everyday commands. `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: venv demo test test-pythons lint typecheck bench system-deps clean

# Debian's python3 comes without ensurepip (package python3-venv), which `-m venv` needs.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing: python3-venv"; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,fast-ua]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium (Playwright's own browser download is not used) and a Redis server for the tests.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(PY) -m demo_site

test: $(STAMP) system-deps
	$(PY) -m ruff check tracking_mw demo_site tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The suite on other supported Pythons (OTHER_PYTHONS: commands or paths), each in a venv of
# its own (.venv-3.x); one that does not run is reported and skipped. `make test` runs the
# default one. With pyenv: OTHER_PYTHONS="$$(pyenv root)/versions/3.13.0/bin/python".
OTHER_PYTHONS ?= python3.12 python3.13
test-pythons: system-deps
	@for py in $(OTHER_PYTHONS); do \
	  ver=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || \
	    { echo "$$py: does not run here, skipped"; continue; }; \
	  venv=.venv-$$ver; \
	  echo "== Python $$ver ($$venv)"; \
	  [ -x $$venv/bin/python ] || $$py -m venv $$venv || exit 1; \
	  $$venv/bin/python -m pip install --quiet --upgrade pip && \
	  $$venv/bin/python -m pip install --quiet -e '.[test,fast-ua]' && \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider || exit 1; \
	done

lint: $(STAMP)
	$(PY) -m ruff check tracking_mw demo_site tests bench

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP) system-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache
