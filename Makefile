# Every target builds .venv from nothing when it is missing, so a fresh clone needs only `make run` / `make test`.
PYTHON ?= python3.11
# Extra pip arguments for torch, e.g. an index with CPU-only builds (the Dockerfile sets one).
TORCH_PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
# One stamp per install: `make run` needs the project and its [train] extra (it trains the models),
# `make test` / `make lint` also the [dev] tools and the [ray] extra (tests/test_ray_serve.py, and
# mypy reads ray's types). Each is a superset-or-equal pip install on the same venv, so running one
# after the other only adds what is missing.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
LINTED := training service tests bench scripts

.PHONY: run test models lint proto screenshots clean

$(RUN_STAMP): EXTRAS := train
$(DEV_STAMP): EXTRAS := train,dev,ray
$(RUN_STAMP) $(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned to the CPU build, so no dependency can pull a CUDA torch.
	$(BIN)/pip install torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	touch $@

model_store/cnn.mar: | $(RUN_STAMP)
	@echo "model_store/cnn.mar is missing: training the default CNN (a few minutes on 2 cores)"
	$(BIN)/python -m training cnn --out model_store

model_store/tabular.mar: | $(RUN_STAMP)
	@echo "model_store/tabular.mar is missing: training the default tabular model"
	$(BIN)/python -m training tabular --out model_store

models: model_store/cnn.mar model_store/tabular.mar

run: $(RUN_STAMP) models
	$(BIN)/python -m service --model-store model_store

test: $(DEV_STAMP)
	$(BIN)/python -m pytest

# Retake docs/ui-image.png and docs/ui-tabular.png from tests/test_web.py (`make test` saves
# them in its temporary directories and leaves docs/ as it is).
screenshots: $(DEV_STAMP)
	SCREENSHOTS_TO_DOCS=1 $(BIN)/python -m pytest tests/test_web.py

# Regenerate the gRPC stubs in service/proto/ from proto/glimpse/v1/glimpse.proto (checked in;
# tests/test_grpc_stubs.py fails when they are stale).
proto: $(DEV_STAMP)
	$(BIN)/python scripts/gen_proto.py

# Settings in pyproject.toml: ruff's rules and format, mypy strict on service/, plain on training/.
lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy --strict service
	$(BIN)/mypy training

clean:
	rm -rf $(VENV) model_store/*.mar
