# make run  : set up .venv, then run the whole pipeline locally (kfp.local, tiny models, synthetic pets)
# make test : set up .venv, then run the unit and integration tests
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
OUT ?= runs/latest

.PHONY: setup run test test-unit test-gpu compile mutation clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly: this release's CPU wheel lies on the machine's disk (a bare `torch` pulls a CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,pipeline,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: setup
	rm -rf $(OUT)
	$(PY) pipeline.py run-local --output-dir $(OUT) --config configs/local.yaml

test: setup
	$(PY) -m pytest -m "not gpu"

test-unit: setup
	$(PY) -m pytest -m "not gpu and not integration"

test-gpu: setup
	$(PY) -m pytest -m gpu

compile: setup
	$(PY) pipeline.py compile --output pipeline.yaml

# plant known bugs one at a time in a scratch copy and check the tests catch each (minutes; not part of `make test`)
mutation: setup
	$(PY) tools/mutation_check.py

clean:
	rm -rf runs pipeline.yaml .pytest_cache
