# glimpse: the same steps as `make run`, in an image. Build: docker build -t glimpse .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# TorchServe (optional second engine) needs Java 17; make is how the image builds and runs glimpse;
# g++ builds fpng-py (the PNG overlay writer), which PyPI has as source only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

# /app is made the user's own first: WORKDIR would create it as root, and `COPY --chown` does not
# reliably change an existing directory's owner, so make could not create .venv in it.
RUN useradd --create-home --uid 1000 glimpse && install -d -o glimpse -g glimpse /app
WORKDIR /app
COPY --chown=glimpse:glimpse . /app
USER glimpse

# The Makefile creates .venv, installs torch==2.13.0 (CPU) first, then the project with its
# [train] extra: the same install and models as `make run`, which the container then runs.
# The models are built at image build time, so a container starts serving at once.
# Outside this project's build machines the CPU-only wheel comes from PyTorch's own index.
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
RUN make .venv/.installed-run models TORCH_PIP_ARGS="$TORCH_PIP_ARGS"

# Every interface, so glimpse requires a token (README "Authentication"): unless the container gets
# GLIMPSE_AUTH_TOKEN (or GLIMPSE_AUTH_TOKEN_FILE naming a mounted secret), it makes a new one at each
# start in /home/glimpse/.glimpse/token (mode 0600) and logs that path, never the token:
#   docker exec <container> cat /home/glimpse/.glimpse/token
# /ping, which the HEALTHCHECK below calls, stays open; GLIMPSE_METRICS_PUBLIC=true opens /metrics.
ENV GLIMPSE_HOST=0.0.0.0
EXPOSE 8000 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ping', timeout=4)"
CMD ["make", "run"]
