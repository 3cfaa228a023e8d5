# Two commands on a fresh machine:
#   make demo  - set up .venv and run the whole job offline on the embedded default
#   make test  - set up .venv and run the test suite
# The venv is created once and reused; it is reinstalled when pyproject.toml or
# constraints.txt change. constraints.txt pins torch to the local CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,hf,tagger]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lorastory demo --out $(DEMO_OUT)

test: $(STAMP) browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The code's shape: ruff's small rule set and the layers contract (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/lint-imports

# The web app's browser tests drive Debian's chromium through Playwright (its own browser
# download cannot work offline) and need a CJK font. Installed with apt when missing and
# running as root; otherwise those tests skip and say why (CI sets LORASTORY_REQUIRE_BROWSER=1
# so there they fail instead).
BROWSER_PACKAGES := chromium fonts-noto-cjk
browser:
	@if dpkg -s $(BROWSER_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(BROWSER_PACKAGES) for the browser tests (apt-get)..."; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null 2>&1; } \
		|| echo "warning: apt-get could not install $(BROWSER_PACKAGES); the browser tests will skip"; \
	else \
		echo "note: $(BROWSER_PACKAGES) missing and apt-get unavailable (or not root): the browser tests will skip"; \
	fi

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
