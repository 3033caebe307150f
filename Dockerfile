# One image per role, each with only what that role runs:
#   docker build --target api     -t intel-image-classifier:api .      (no OpenVINO, no TensorFlow)
#   docker build --target worker  -t intel-image-classifier:worker .   (OpenVINO; runs models/default)
#   docker build --target trainer -t intel-image-classifier:trainer .  (TensorFlow too: train, export)
# Every install is pinned by constraints.txt (`make lock` refreshes it). BASE_IMAGE is any
# Debian-like image whose `python`/`pip` are Python 3.11+; `make compose-test` passes one
# it built from Debian's packages with debootstrap, as no registry is reachable there.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 DATA_DIR=/data
WORKDIR /app
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir -p intel_classifier api worker shared client \
    && touch intel_classifier/__init__.py api/__init__.py worker/__init__.py shared/__init__.py \
       client/__init__.py
RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data

# Each role's dependencies on top of the last one's: what the API needs is installed
# once for all three images, OpenVINO once for two, and only the trainer adds TensorFlow.
FROM base AS api-deps
RUN pip install -c constraints.txt -e .

FROM api-deps AS worker-deps
RUN pip install -c constraints.txt -e '.[worker]'

FROM worker-deps AS trainer-deps
RUN pip install -c constraints.txt -e '.[train]'

FROM api-deps AS api
COPY intel_classifier intel_classifier
COPY api api
COPY worker worker
COPY shared shared
COPY client client
COPY migrations migrations
USER app
EXPOSE 9696
CMD ["intel-classifier", "api", "--host", "0.0.0.0", "--port", "9696"]

FROM worker-deps AS worker
COPY intel_classifier intel_classifier
COPY api api
COPY worker worker
COPY shared shared
COPY client client
COPY migrations migrations
COPY models models
USER app
CMD ["intel-classifier", "worker"]

FROM trainer-deps AS trainer
COPY intel_classifier intel_classifier
COPY api api
COPY worker worker
COPY shared shared
COPY client client
COPY migrations migrations
COPY models models
USER app
CMD ["intel-classifier", "--help"]
