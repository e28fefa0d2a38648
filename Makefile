# The two commands a new user runs. Both build the virtualenv from scratch when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: test demo venv lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check fiat_t5x tasks launch tests bench
	$(BIN)/ruff format --check fiat_t5x tasks launch tests bench
	$(BIN)/python -m pytest -q -ra --durations=15

# FIAT end to end on the bundled demo task (CPU, about 12 minutes on 2 cores; docs/fiat.md): β's
# rationales, the demo's instruction-tuned base, FIAT, its ablation ladder and the baselines
# (gin/sweeps/demo.yaml), then the paper-shaped tables with bootstrap intervals and paired
# tests, and the plots, in demo_out/report. Re-running skips finished variants (delete
# demo_out/sweep/<variant> to run one again). DEMO_FLAGS go to every variant, e.g. another β:
#   make demo DEMO_ROOT=demo_out/real_beta DEMO_FLAGS="--gin_file=my_beta.gin"
DEMO_ROOT ?= demo_out/sweep
DEMO_REPORT ?= demo_out/report
DEMO_FLAGS ?=
demo: $(STAMP)
	$(BIN)/fiat-t5x sweep run gin/sweeps/demo.yaml --root $(DEMO_ROOT) $(DEMO_FLAGS); status=$$?; \
	$(BIN)/fiat-t5x sweep report gin/sweeps/demo.yaml --root $(DEMO_ROOT) --out $(DEMO_REPORT) \
	  && for t in main comparisons ladder languages_demo_acc; do echo; cat $(DEMO_REPORT)/$$t.md; done \
	  && echo && echo "report: $(DEMO_REPORT)/report.md"; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check --fix fiat_t5x tasks launch tests bench
	$(BIN)/ruff format fiat_t5x tasks launch tests bench

clean:
	rm -rf $(VENV) build *.egg-info
