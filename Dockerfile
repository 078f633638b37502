# imgcls trainer image: `imgcls data|train|export` in a container.
# The serving image (and its Kubernetes manifests) arrive with the inference service.
#
#   docker build -t imgcls .
#   docker run --rm -v "$PWD/data:/work/data" -v "$PWD/runs:/work/runs" -v "$PWD/models:/work/models" \
#       imgcls train --config configs/digits.yaml
#
# torch==2.14.1 from PyPI is the CUDA build. For a smaller CPU-only image, point pip at PyTorch's CPU
# wheel index with --build-arg TORCH_INDEX_URL=<that index>.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/imgcls
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY service ./service
# `imgcls bench` (load tests against a deployment) ships in the image; recorded results do not.
COPY benchmarks ./benchmarks
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --extra-index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; \
    fi \
    && pip install . \
    && useradd --create-home --uid 10001 imgcls

COPY configs /work/configs
WORKDIR /work
RUN chown imgcls:imgcls /work
USER 10001
ENTRYPOINT ["imgcls"]
CMD ["--help"]
