# The two set-up commands of the README: `make run` (main job) and `make test` (test suite).
# Both first install into a virtual environment of the project's own (VENV, default .venv; created here,
# without the system's site-packages, so nothing installed by hand elsewhere can stand in for a missing
# dependency). The install is redone only when the build inputs change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch's OpenMP threads spin while waiting by default; on a small shared machine (CI, 2 cores) that
# makes every step several times slower. Passive waiting costs little on a dedicated one.
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.autofocus-installed

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a plain `torch` requirement would fetch a CUDA build of several GB.
$(STAMP): $(PY) pyproject.toml setup.py CMakeLists.txt $(shell find csrc -type f 2>/dev/null)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The main job: the shipped model exported to bundles/default, then AutoFocus against the full pyramid
# and each single scale on the bundled val split (generated on first use), in one run.
BUNDLE := bundles/default/bundle.json
$(BUNDLE): model/checkpoints/default.pt model/configs/default.json $(STAMP)
	$(PY) export/build_engine.py

run: $(BUNDLE)
	$(PY) benchmarks/fps.py --limit 100 --repeats 2

test: $(STAMP)
	$(PY) -m pytest -q

# A wheel with the compiled extension, installed into a fresh environment of its own and run on the
# bundle without the source tree (.ci/wheel_check).
wheel-check: $(BUNDLE)
	bash .ci/wheel_check $(BUNDLE)

# The SAHI comparison (benchmarks/peers.py) needs sahi, installed without its opencv-python requirement
# (it would clash with opencv-python-headless); sliced prediction needs only shapely beside it.
peers-deps: $(STAMP)
	$(PY) -m pip install -q --no-deps sahi==0.12.8 shapely

.PHONY: install run test wheel-check peers-deps
