# Two entry points for a fresh machine with only Python and make: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install profiles bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the paper's §8.3 case study under FP16-Only, Quality-First and Energy-First.
run: $(STAMP)
	$(BIN)/qfleet-sim -m policy=fp16_only,quality_first,energy_first,slo_energy_optimal

test: $(STAMP)
	$(BIN)/python -m pytest

# Rebuild the shipped default profile set (step models, quality, curves); slow (tens of minutes).
profiles: $(STAMP)
	$(BIN)/python -m profiles.build_default

bench: $(STAMP)
	$(BIN)/python benchmarks/case_study_speed.py

clean:
	rm -rf $(VENV) outputs multirun
