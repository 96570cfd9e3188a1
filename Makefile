# The two set-up commands of the README: `make run` (main job) and `make test` (test suite).
# Both install what they need first; the install is redone only when the build inputs change.
PY ?= python3
# Torch's OpenMP threads spin while waiting by default; on a small shared machine (CI, 2 cores) that
# makes every step several times slower. Passive waiting costs little on a dedicated one.
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := build/.installed

$(STAMP): pyproject.toml setup.py CMakeLists.txt $(shell find csrc -type f 2>/dev/null)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@mkdir -p build && touch $(STAMP)

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

# The SAHI comparison (benchmarks/peers.py) needs sahi, installed without its opencv-python requirement
# (it would clash with opencv-python-headless); sliced prediction needs only shapely beside it.
peers-deps: $(STAMP)
	$(PY) -m pip install -q --no-deps sahi==0.12.8 shapely

.PHONY: install run test peers-deps
