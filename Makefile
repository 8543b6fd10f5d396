# Two entry points: `make test` and `make demo`. Both create .venv on first use and install
# everything into it, so a fresh machine needs nothing but Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GLUE_DIR ?=
DEMO_TASK ?= mrpc
DEMO_OUT  ?= demo_output

.PHONY: install test demo interop bench clean peer-venv

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt peft/pyproject.toml ivon/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# The reference optimizer, a test oracle only; kept out of site-packages because it is also `ivon`.
	$(PY) -m pip install -q --no-deps --target $(VENV)/ivon_ref ivon-opt==0.1.3
	touch $@

# IVON_REF_DIR: where tests/_ivon_utils.py finds the reference optimizer, wherever VENV points.
test: install
	IVON_REF_DIR="$(abspath $(VENV))/ivon_ref" $(PY) -m pytest -q tests

demo: install
	GLUE_DIR="$(GLUE_DIR)" DEMO_TASK="$(DEMO_TASK)" DEMO_OUT="$(DEMO_OUT)" $(PY) scripts/demo.py

# Opt-in: our adapters <-> Hugging Face PEFT 0.21.2, in a separate venv (.venv-hfpeft) since both are `peft`;
# it also runs the training script with the peer's adapters (bench/peer_hf_peft.py), hence the data packages.
HF_VENV := .venv-hfpeft

$(HF_VENV)/.installed:
	test -x $(HF_VENV)/bin/python || $(PYTHON) -m venv $(HF_VENV)
	$(HF_VENV)/bin/python -m pip install -q torch==2.13.0 transformers==5.24.0 safetensors peft==0.21.2 \
		"datasets>=2.18" "evaluate>=0.4.1" "accelerate>=0.30" "scipy>=1.10" "scikit-learn>=1.3" tqdm sentencepiece regex
	touch $@

peer-venv: $(HF_VENV)/.installed

interop: install $(HF_VENV)/.installed
	PEFT_INTEROP=1 HF_PEFT_PYTHON=$(HF_VENV)/bin/python $(PY) -m pytest -q tests/test_peft_interop.py

# Speed: the IVON optimizer vs AdamW, and a training step of every method on MiniLM (needs GLUE_DIR).
bench: install
	$(PY) bench/ivon_step.py
	$(PY) bench/step_time.py --glue_dir "$(GLUE_DIR)" --threads 1 --clock cpu --rounds 24 --steps 1

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
