# nfcourse: two commands do everything on a fresh machine with Python 3.11.
#   make book   create .venv, install, build the HTML book into _build/html (and its PDF,
#               _build/html/nfcourse.pdf, when chromium is installed)
#   make test   everything CI runs (unit tests, notebooks under nbval, warning-free build,
#               the book in a browser, the PDF)
# Helpers: make execute [CHAPTERS=chapters/NN-name.md]   re-execute chapter records
#          make pdf        the whole book as one PDF (after make html; installs chromium)
#          make clean

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JB     := $(BIN)/jupyter-book
PYTEST := $(BIN)/python -m pytest
CHAPTERS ?=
# Chapters (names or number prefixes) that `make standalone` runs; all when empty. CI runs
# the two that depend most on their surroundings: 01 (the first a reader opens) and 09 (reads
# the other chapters' results).
STANDALONE ?=
CI_STANDALONE := 01 09

export PYTHONHASHSEED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: book test unit notebooks html check-records execute clean venv standalone

venv: $(STAMP)

$(STAMP): requirements.txt requirements-peers.txt pyproject.toml
	@echo "== setting up $(VENV) with $(PYTHON)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@# The flow libraries the performance appendix compares against; never imported by nfcourse.
	@# --no-deps: their declared extras (torchdyn, torchvision) would replace the pinned torch.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-peers.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Build the book. A chapter whose record is stale (its .md changed) is re-executed first.
book: $(STAMP)
	@stale="$$($(BIN)/python tools/notebooks.py stale)"; \
	if [ -n "$$stale" ]; then echo "== re-executing stale chapters: $$stale"; \
	  $(BIN)/python tools/notebooks.py execute $$stale || exit 1; fi
	$(MAKE) --no-print-directory html
	@if [ -x "$(CHROMIUM)" ] && [ -x "$(CHROMEDRIVER)" ]; then \
	  $(MAKE) --no-print-directory pdf || exit 1; \
	else echo "== no chromium here, so no PDF: \`make pdf\` builds it (installing chromium)"; fi
	@echo "== the book is at $(CURDIR)/_build/html/index.html"

html: $(STAMP)
	rm -rf _build/html _build/.doctrees
	$(JB) build . --warningiserror --nitpick --keep-going --quiet
	$(BIN)/python tools/check_html.py _build/html

execute: $(STAMP)
	$(BIN)/python tools/notebooks.py execute $(CHAPTERS)

check-records: $(STAMP)
	$(BIN)/python tools/notebooks.py check

unit: $(STAMP)
	MPLBACKEND=Agg $(PYTEST) tests -n 2 -q

# Each chapter executes exactly once here (nbval); the HTML build then renders those records.
# The chapters that set torch to one thread (setup(threads=1); tests/test_nbval_scheme.py
# checks the list) run side by side, one per core; the others use both cores, one at a time.
NBVAL := $(PYTEST) -p no:cacheprovider --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with tools/nbval_sanitize.cfg --durations=0 -q
ONE_THREAD_CHAPTERS := chapters/10-autoregressive-and-spline-flows.ipynb \
	  chapters/11-variational-inference.ipynb chapters/07-jko.ipynb \
	  chapters/01-change-of-variables.ipynb
notebooks: $(STAMP)
	$(NBVAL) $(filter-out $(ONE_THREAD_CHAPTERS),$(sort $(wildcard chapters/*.ipynb)))
	$(NBVAL) -n 2 --dist loadfile $(ONE_THREAD_CHAPTERS)

# Every chapter record alone in an empty folder, executed in a fresh environment built only
# from the README's install lines (what a reader who downloads one chapter has).
standalone: $(STAMP)
	$(BIN)/python tools/standalone.py $(STANDALONE)

test: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory check-records && \
	$(MAKE) --no-print-directory unit && \
	$(MAKE) --no-print-directory notebooks && \
	$(MAKE) --no-print-directory html && \
	$(MAKE) --no-print-directory browser && \
	$(MAKE) --no-print-directory pdf && \
	$(MAKE) --no-print-directory pdf-check && \
	$(MAKE) --no-print-directory standalone STANDALONE="$(CI_STANDALONE)" && \
	echo "== make test passed in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf _build .pytest_cache .hypothesis

# The built book in a real browser (needs `make html` first): every page of _toc.yml in
# headless Debian chromium, served on 127.0.0.1 and from file://, with no network, plus the
# Binder and Colab launch paths on paper; screenshots go to _build/screenshots/.
# chromium and its driver come from apt when missing (CI runs as root; otherwise sudo -n).
CHROMIUM     ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
BROWSER_ENV  := NFCOURSE_CHROMIUM="$(CHROMIUM)" NFCOURSE_CHROMEDRIVER="$(CHROMEDRIVER)"
.PHONY: browser chromium pdf pdf-check
browser: $(STAMP) chromium
	@start=$$(date +%s); \
	$(BROWSER_ENV) $(PYTEST) -p no:cacheprovider -q tests/browser && \
	echo "== browser check passed in $$(( $$(date +%s) - start )) s (screenshots: _build/screenshots/)"

# Debian's chromium and chromium-driver, from apt when missing (browser, pdf, pdf-check).
chromium:
	@if [ ! -x "$(CHROMIUM)" ] || [ ! -x "$(CHROMEDRIVER)" ]; then \
	  echo "== $(CHROMIUM) or $(CHROMEDRIVER) missing: installing Debian's chromium and chromium-driver"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo="sudo -n"; fi; \
	  { $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver; } >/dev/null || true; \
	  if [ ! -x "$(CHROMIUM)" ] || [ ! -x "$(CHROMEDRIVER)" ]; then \
	    echo "ERROR: the browser check needs $(CHROMIUM) and $(CHROMEDRIVER) (Debian packages" \
	      "chromium and chromium-driver) and could not install them with apt-get (see the" \
	      "lines above; it needs root or password-less sudo and a Debian package mirror)." \
	      "Install them as root: apt-get update && apt-get install -y chromium chromium-driver" >&2; \
	    exit 1; \
	  fi; \
	fi

# The whole book as one PDF (needs `make html` first): every page of _toc.yml, in order,
# printed by the browser check's headless chromium once MathJax has typeset, with every
# dropdown open, into _build/html/nfcourse.pdf (the landing page links it), one bookmark per
# page. A picture of its first page goes to _build/screenshots/pdf-page-1.png; `make test`
# runs this after `make browser`, whose run empties _build/screenshots/ first.
pdf: $(STAMP) chromium
	$(BROWSER_ENV) $(BIN)/python tools/pdf.py _build/html --png _build/screenshots/pdf-page-1.png

# The PDF against the HTML it was printed from (tests/pdf): every page's title in order, no
# raw TeX, as many figures as the HTML pages print, the landing page's link; and broken
# prints of small pages of its own, to show that each of these checks fails when it should.
pdf-check: $(STAMP) chromium
	$(BROWSER_ENV) $(PYTEST) -p no:cacheprovider -q tests/pdf
