# syntax=docker/dockerfile:1
# imgcls images: the inference service (`imgcls serve`, the default command). Two targets:
#
#   docker build -t imgcls:0.1.0-gpu .                 # default: NVIDIA GPUs, Torch-TensorRT
#   docker build --target cpu -t imgcls:0.1.0-cpu .    # slim, CPU only: ONNX Runtime, serving only
#
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" imgcls:0.1.0-cpu
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" imgcls:0.1.0-gpu
#   docker run --rm --gpus all -v "$PWD/data:/work/data" -v "$PWD/runs:/work/runs" \
#       -v "$PWD/models:/work/models" imgcls:0.1.0-gpu train --config configs/digits.yaml
#
# The CPU image installs only what serving needs (`pip install imgcls[explain]`: the service and
# its explanations, no timm or tensorboard); the GPU image has the whole command line (`imgcls[train]`), so it also
# trains and builds TensorRT engines on the GPU that will serve them.
#
# The model repository is mounted at /models (IMGCLS_MODEL_REPO). Every setting is an IMGCLS_*
# variable (docs/serving.md and docs/operations.md): `docker run -e IMGCLS_PORT=9000 -e IMGCLS_METRICS_PORT=9090 ...`.
# docs/deployment.md covers building, running and deploying both targets.

# ---- wheel: imgcls itself, and the list of its dependencies (train extra too) but torch/torchvision ----
FROM python:3.11-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgcls ./imgcls
COPY trainer ./trainer
COPY service ./service
COPY benchmarks ./benchmarks
# The GPU image keeps NGC's own torch, torchvision and torch-tensorrt, so it installs pyproject's
# dependencies and train extra minus torch and torchvision, and the tensorrt extra minus torch-tensorrt
# (nvidia-modelopt, for INT8/FP8 engines): written out here from pyproject.toml, never copied by hand.
# The CPU image adds the explain extra (Grad-CAM for :explain and the page) from its own list.
RUN pip wheel --no-deps --wheel-dir /dist . \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['explain']))" > /dist/requirements-explain.txt \
    && python -c "import re, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = project['dependencies'] + project['optional-dependencies']['train']; print('\n'.join(d for d in deps if re.split(r'[\s<>=!~;\[]', d)[0] not in ('torch', 'torchvision')))" > /dist/requirements-not-torch.txt \
    && python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tensorrt']; print('\n'.join(d for d in deps if re.split(r'[\s<>=!~;\[]', d)[0] != 'torch-tensorrt'))" > /dist/requirements-tensorrt.txt

# ---- cpu-build: a virtual environment with CPU torch wheels and imgcls --------------------------
FROM python:3.11-slim-bookworm AS cpu-build
# PyTorch's CPU wheel index: torch without the CUDA libraries (about 200 MB instead of several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# `pip install imgcls[explain]`: the serving set and Grad-CAM for :explain and the page, after the
# CPU builds of the torch and torchvision pins.
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1 \
    && pip install /dist/imgcls-*.whl --requirement /dist/requirements-explain.txt \
    && imgcls --help >/dev/null

# ---- cpu: the slim CPU image --------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMGCLS_HOST=0.0.0.0 \
    IMGCLS_PORT=8000 \
    IMGCLS_MODEL_REPO=/models \
    IMGCLS_DEVICE=cpu
COPY --from=cpu-build /opt/venv /opt/venv
COPY configs /work/configs
RUN useradd --create-home --uid 10001 --user-group imgcls \
    && mkdir /models \
    && chown imgcls:imgcls /work /models
WORKDIR /work
USER 10001
EXPOSE 8000
# Liveness only (the process serves); readiness (models loaded and warm) is /v2/health/ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('IMGCLS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["imgcls"]
CMD ["serve"]

# ---- gpu (default): NGC PyTorch, which ships CUDA, TensorRT and Torch-TensorRT built together ----
# nvcr.io/nvidia/pytorch:26.09-py3: CUDA 13, TensorRT 11.1, torch-tensorrt 2.14 and NVIDIA's build of
# torch 2.14; needs an NVIDIA driver of the R580 series or newer on the node.
FROM nvcr.io/nvidia/pytorch:26.09-py3 AS gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    IMGCLS_HOST=0.0.0.0 \
    IMGCLS_PORT=8000 \
    IMGCLS_MODEL_REPO=/models
# Never `pip install torch` here: NGC's torch, torchvision and torch-tensorrt are built against each
# other and pinned by the image's constraints file (PIP_CONSTRAINT). pyproject pins PyPI's
# torch==2.14.1, which NGC's build does not satisfy, so imgcls goes in with --no-deps and its other
# dependencies from the list the wheel stage wrote. nvidia-modelopt is installed only when NGC's
# image lacks it, so its requirements never have to resolve against NGC's pins needlessly.
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    pip install -r /dist/requirements-not-torch.txt \
    && pip install --no-deps /dist/imgcls-*.whl \
    && (python -c "import modelopt.torch.quantization" 2>/dev/null || pip install -r /dist/requirements-tensorrt.txt) \
    && imgcls --help >/dev/null
COPY configs /work/configs
RUN useradd --create-home --uid 10001 --user-group imgcls \
    && mkdir -p /models \
    && chown imgcls:imgcls /work /models
WORKDIR /work
USER 10001
EXPOSE 8000
# Liveness only (the process serves); readiness (models loaded and warm) is /v2/health/ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('IMGCLS_PORT', '8000'), timeout=4)"]
# imgcls directly, not NGC's banner script, so the log stays one JSON object per line.
ENTRYPOINT ["imgcls"]
CMD ["serve"]
