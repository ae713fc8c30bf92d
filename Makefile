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

# ---- container images (containers/, requirements/): docs/cloud_setup.md section 6 --------------------------
# make lock             regenerate requirements/images.lock (+ build.lock) from pyproject.toml: PyPI, hashes,
#                       linux x86_64 (glibc 2.39: Ubuntu 24.04, both images' base), CPython 3.12; uv runs from
#                       a throwaway venv under /tmp, never from .venv
# make pin-base-images  write the base images' digests into the Dockerfiles (needs Docker with buildx)
# make images           build both images, tagged $(IMAGE_REGISTRY)/{trainer,pipeline}:<package version>
# make push-images      push them
.PHONY: lock pin-base-images images push-images

UV_VERSION := 0.13.8
LOCK_VENV := /tmp/petqlora-lock-venv
# Wheels only, but kfp-server-api (published as an sdist only); the Dockerfiles pass the same two options to pip.
LOCK_OPTIONS := --no-config --no-python-downloads --index-url https://pypi.org/simple --generate-hashes \
	--python-version 3.12 --python-platform x86_64-manylinux_2_39 --only-binary :all:
IMAGES_LOCK_ARGS := $(LOCK_OPTIONS) --no-binary kfp-server-api pyproject.toml requirements/build.in \
	--extra train --extra pipeline -o requirements/images.lock
BUILD_LOCK_ARGS := $(LOCK_OPTIONS) requirements/build.in -c requirements/images.lock -o requirements/build.lock

lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip install --quiet --isolated --index-url https://pypi.org/simple uv==$(UV_VERSION)
	UV_CACHE_DIR=$(LOCK_VENV)/cache $(LOCK_VENV)/bin/uv pip compile $(IMAGES_LOCK_ARGS) \
		--custom-compile-command "make lock, i.e. uv==$(UV_VERSION) pip compile $(IMAGES_LOCK_ARGS)"
	UV_CACHE_DIR=$(LOCK_VENV)/cache $(LOCK_VENV)/bin/uv pip compile $(BUILD_LOCK_ARGS) \
		--custom-compile-command "make lock, i.e. uv==$(UV_VERSION) pip compile $(BUILD_LOCK_ARGS)"
	rm -rf $(LOCK_VENV)

pin-base-images:
	python3 tools/pin_base_images.py

# The Artifact Registry repository; the default is the placeholder registry of components/images.py, refused.
IMAGE_REGISTRY ?= us-central1-docker.pkg.dev/my-project/petqlora
IMAGE_VERSION = $(shell python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")

images:
	@case "$(IMAGE_REGISTRY)" in *my-project*|"") echo "make images: set IMAGE_REGISTRY to your Artifact Registry repository, e.g. make images IMAGE_REGISTRY=us-central1-docker.pkg.dev/PROJECT/petqlora, the registry the pipeline names its images with"; exit 1;; esac
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine here (docker not found or its daemon not reachable). Build the images where Docker runs (docs/cloud_setup.md section 6)."; exit 1; }
	python3 tools/pin_base_images.py --check
	docker build --platform linux/amd64 -f containers/trainer/Dockerfile \
		--label org.opencontainers.image.version=$(IMAGE_VERSION) --label org.opencontainers.image.revision=$$(git describe --always --dirty --abbrev=40) \
		-t $(IMAGE_REGISTRY)/trainer:$(IMAGE_VERSION) .
	docker build --platform linux/amd64 -f containers/pipeline/Dockerfile \
		--label org.opencontainers.image.version=$(IMAGE_VERSION) --label org.opencontainers.image.revision=$$(git describe --always --dirty --abbrev=40) \
		-t $(IMAGE_REGISTRY)/pipeline:$(IMAGE_VERSION) .

push-images: images
	docker push $(IMAGE_REGISTRY)/trainer:$(IMAGE_VERSION)
	docker push $(IMAGE_REGISTRY)/pipeline:$(IMAGE_VERSION)
