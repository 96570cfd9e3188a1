# The two set-up commands of the README: `make run` (main job) and `make test` (test suite).
# Both install what they need first; the install is redone only when the build inputs change.
PY ?= python3
STAMP := build/.installed

$(STAMP): pyproject.toml setup.py CMakeLists.txt $(shell find csrc -type f 2>/dev/null)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@mkdir -p build && touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m model.evaluate

test: $(STAMP)
	$(PY) -m pytest -q

.PHONY: install run test
