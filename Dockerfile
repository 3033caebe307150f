# One image for every process: `intel-classifier api`, `worker`, `migrate` or `serve`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 DATA_DIR=/data
WORKDIR /app

# Dependencies first, so code changes do not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir -p intel_classifier api worker shared client \
    && touch intel_classifier/__init__.py api/__init__.py worker/__init__.py shared/__init__.py \
       client/__init__.py \
    && pip install -e '.[ml]'

COPY intel_classifier intel_classifier
COPY api api
COPY worker worker
COPY shared shared
COPY client client
COPY migrations migrations
COPY models models

RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
USER app
EXPOSE 9696
CMD ["intel-classifier", "serve", "--host", "0.0.0.0"]
