# Two commands for a newcomer:  `make train` (set up + default Pong run, Ctrl-C stops cleanly)
#                               `make test`  (set up + the test suite)
# Every other command has a target too, so nothing needs an activated venv (`make help` lists them);
# flags go in ARGS, e.g.  make evaluate ARGS="runs/stm-small-skip4-seed0 --episodes 5"
# Outside make, the same commands are .venv/bin/stm-rl and .venv/bin/python -m stm_rl.supervised.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Where torch comes from. Empty: the configured package index (here it serves a CPU wheel). On a machine
# whose index would give the CUDA build (~20 NVIDIA packages), get the CPU build with
#     make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM  := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# `make bench` runs benchmarks/$(BENCH).py (env_speed, stm_speed, train_speed, time_to_score, ...).
BENCH ?= train_speed

.DEFAULT_GOAL := setup
# The Figure 3 campaign (docs/figure3.md): every run of the paper's figure, one at a time on this machine's cores,
# seed by seed (skips 32, 0, 16, 4 of seed 0 first); resumable: the same command continues it after a stop, in a
# later sitting too. On a machine without the run directories (a fresh clone), the runs committed as completed in
# results/figure3 are adopted, not trained again.
FIGURE3_OUT ?= runs/figure3
FIGURE3 := --agents lstm stm --frame-skips 32 0 16 4 --seeds 0 1 2 --order seed \
           --agent-steps 32=4M 0=50M 16=4M 4=5M --final-eval-games 20 --workers-per-run 2 --out $(FIGURE3_OUT) \
           --adopt results/figure3
# What a sitting of the campaign commits (docs/figure3.md): its runs' game logs and configs, and the figures and
# tables drawn from them. A run in progress is published as far as it got (figure3.png leaves it out, progress.png
# draws it); publish refuses to replace a committed log with a shorter one (a run restarted on a new machine).
FIGURE3_AT_STEPS := 1M 2M 4M 8M 16M 32M 50M

# The paper's associative-retrieval result at its own sizes (issue 26, docs/supervised.md): the STM and the LSTM with
# the authors' optimiser, 10 epochs of the fixed 100k set (781 iterations each), validated every epoch, tested on 20k.
# Resumable like the campaign: the same command continues it; ARGS="--iterations N" extends it.
AR_PAPER_OUT ?= runs/supervised_paper
AR_PAPER := --tasks associative-retrieval-30 --models stm lstm --preset paper --iterations 7810 --eval-every 781 \
            --threads 2 --out $(AR_PAPER_OUT)

# Copy at the small preset (issue 26): the STM with the small preset's optimiser (Adam 1e-3, norm 10) and with the
# authors' (RMSprop 1e-4, momentum 0.9, alpha 0.95, values +-10), the same budget, one after the other; resumable,
# and COPY_ITERATIONS=N with the same command extends both.
COPY_SMALL_OUT ?= runs/supervised_copy
COPY_ITERATIONS ?= 30000
COPY_SMALL := --tasks copy --models stm --preset small --iterations $(COPY_ITERATIONS) --eval-every 1000 --threads 2

# bAbI with the paper's read-out (issue 26): the joint 20-task STM run at the small preset, the final relational
# memory unbound with question-derived vectors; task 3 from its 1k file (the shared 10k copy lacks it). The same
# command continues it; BABI_ITERATIONS=N extends it.
BABI_RUN ?= runs/supervised/babi-stm-small-unbind
BABI_DATA ?= ../shared/data/babi/en-valid-10k
BABI_ITERATIONS ?= 45000
BABI_SMALL := --task babi --model stm --preset small --data-dir $(BABI_DATA) --babi-missing use-1k --eval-every 1000 \
              --threads 2

.PHONY: help setup train test sweep figure3 figure3-results evaluate plot publish supervised ar-paper copy-small babi-small bench clean

help:
	@echo "make setup                       create $(VENV) and install (TORCH_INDEX=<url> picks torch's index)"
	@echo "make train      ARGS=...         stm-rl train (default run; ARGS=\"--resume RUN_DIR\" continues one)"
	@echo "make sweep      ARGS=...         stm-rl sweep (the paper's Figure 3 runs)"
	@echo "make figure3    ARGS=...         the Figure 3 campaign: stm-rl sweep with its fixed grid (resumable)"
	@echo "make figure3-results             publish the campaign's runs to results/figure3 and redraw its figures and tables"
	@echo "make evaluate   ARGS=RUN_DIR     stm-rl evaluate (play games with a saved agent)"
	@echo "make plot       ARGS=DIR         stm-rl plot (Figure 3 and a table from game logs)"
	@echo "make publish    ARGS=\"DIR --to results/DIR\"  stm-rl publish (game logs and configs for committing)"
	@echo "make supervised ARGS=...         python -m stm_rl.supervised (copy, retrieval, bAbI...)"
	@echo "make ar-paper   ARGS=...         associative retrieval at the paper's sizes, STM and LSTM (resumable)"
	@echo "make copy-small ARGS=...         copy, small preset, STM with the preset's and the authors' optimiser (resumable)"
	@echo "make babi-small ARGS=...         bAbI, 20 tasks jointly, STM with the paper's read-out, small preset (resumable)"
	@echo "make test       ARGS=...         the test suite (ARGS=\"-m slow\": the long fault tests)"
	@echo "make bench      BENCH=name       benchmarks/<name>.py (default: $(BENCH))"
	@echo "exit codes: 0 completed, 1 failed, 2 bad input, 130 interrupted; STM_RL_DEBUG=1 shows tracebacks"

setup: $(STAMP)

# The pinned CPU wheel goes in first, so that resolving the package never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_FROM) torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/stm-rl train $(ARGS)

sweep: $(STAMP)
	$(VENV)/bin/stm-rl sweep $(ARGS)

figure3: $(STAMP)
	$(VENV)/bin/stm-rl sweep $(FIGURE3) $(ARGS)

# publish exits 1 where it kept a committed log longer than the run's (a run restarted on a new machine): the
# figures are drawn anyway, from what results/figure3 holds ("-": make goes on and says the error was ignored).
figure3-results: $(STAMP)
	-$(VENV)/bin/stm-rl publish $(FIGURE3_OUT) --to results/figure3
	$(VENV)/bin/stm-rl plot results/figure3 --x games frames --output results/figure3/figure3.png \
	    --table-md results/figure3/table.md --table-csv results/figure3/table.csv --skip-empty --completed-only
	$(VENV)/bin/stm-rl plot results/figure3 --x games --metrics losses/entropy losses/grad_norm losses/value_loss \
	    --output results/figure3/training.png --completed-only
	$(VENV)/bin/stm-rl plot results/figure3 --x steps games --at-steps $(FIGURE3_AT_STEPS) --skip-empty \
	    --metrics memory/stm_item_norm losses/entropy --output results/figure3/progress.png \
	    --table-md results/figure3/progress.md

evaluate: $(STAMP)
	$(VENV)/bin/stm-rl evaluate $(ARGS)

plot: $(STAMP)
	$(VENV)/bin/stm-rl plot $(ARGS)

publish: $(STAMP)
	$(VENV)/bin/stm-rl publish $(ARGS)

supervised: $(STAMP)
	$(PY) -m stm_rl.supervised $(ARGS)

ar-paper: $(STAMP)
	$(PY) benchmarks/supervised_table.py $(AR_PAPER) $(ARGS)

copy-small: $(STAMP)
	$(PY) benchmarks/supervised_table.py $(COPY_SMALL) --optimizer preset --out $(COPY_SMALL_OUT)/preset-optimizer $(ARGS)
	$(PY) benchmarks/supervised_table.py $(COPY_SMALL) --optimizer authors --out $(COPY_SMALL_OUT)/authors-optimizer $(ARGS)

babi-small: $(STAMP)
	if [ -f $(BABI_RUN)/checkpoints/latest.pt ]; then \
	  $(PY) -m stm_rl.supervised --resume $(BABI_RUN) --iterations $(BABI_ITERATIONS) --threads 2 $(ARGS); \
	else \
	  $(PY) -m stm_rl.supervised $(BABI_SMALL) --iterations $(BABI_ITERATIONS) --run-dir $(BABI_RUN) $(ARGS); \
	fi

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/$(BENCH).py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
