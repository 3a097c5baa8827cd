# Every target builds .venv from nothing when it is missing, so a fresh clone needs only `make run` / `make test`.
PYTHON ?= python3.11
# Extra pip arguments for torch, e.g. an index with CPU-only builds (the Dockerfile sets one).
TORCH_PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test models lint proto clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned to the CPU build, so no dependency can pull a CUDA torch.
	$(BIN)/pip install torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

model_store/cnn.mar: | $(STAMP)
	@echo "model_store/cnn.mar is missing: training the default CNN (a few minutes on 2 cores)"
	$(BIN)/python -m training cnn --out model_store

model_store/tabular.mar: | $(STAMP)
	@echo "model_store/tabular.mar is missing: training the default tabular model"
	$(BIN)/python -m training tabular --out model_store

models: model_store/cnn.mar model_store/tabular.mar

run: $(STAMP) models
	$(BIN)/python -m service --model-store model_store

test: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate the gRPC stubs in service/proto/ from proto/glimpse/v1/glimpse.proto (checked in;
# tests/test_grpc_stubs.py fails when they are stale).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

lint: $(STAMP)
	$(BIN)/ruff check training service tests
	$(BIN)/mypy training service

clean:
	rm -rf $(VENV) model_store/*.mar
