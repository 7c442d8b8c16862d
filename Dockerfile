# syntax=docker/dockerfile:1
# Receiver (default command) and worker (`starvit worker`) share this image.

FROM python:3.13-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_CREATE=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Poetry lives in its own environment; the application's environment is /opt/venv.
RUN python -m venv /opt/poetry \
    && /opt/poetry/bin/pip install --no-cache-dir poetry==2.5.1 \
    && python -m venv /opt/venv
WORKDIR /srv/starvit
COPY pyproject.toml poetry.lock README.md ./
# Runtime dependencies exactly as locked (no dev group), before the code for layer caching.
RUN /opt/poetry/bin/poetry install --only main --no-root --no-directory
COPY app ./app
COPY bots ./bots
# Installs the project itself (the `starvit` console script) pointing at /srv/starvit.
RUN /opt/poetry/bin/poetry install --only main

FROM python:3.13-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    STARVIT_ENVIRONMENT=production \
    PORT=8000
RUN groupadd --system --gid 10001 starvit \
    && useradd --system --uid 10001 --gid starvit --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin starvit
WORKDIR /srv/starvit
COPY --from=builder /opt/venv /opt/venv
COPY app ./app
COPY bots ./bots
COPY subscriptions ./subscriptions
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', timeout=4)"]
# Shell form through `sh -c` so that Cloud Run's $PORT is honoured; `exec` keeps Gunicorn as
# PID 1 so it receives SIGTERM. Worker count from WEB_CONCURRENCY (Gunicorn reads it).
# The flags are GUNICORN_FLAGS in app/cli/main.py (the worker class enforces the request-line,
# header and connection limits; tests/contract/test_dockerfile.py keeps the two identical).
CMD ["sh", "-c", "exec gunicorn 'app.main:create_app()' --worker-class app.api.server.StarvitUvicornWorker --limit-request-line 4094 --limit-request-fields 100 --limit-request-field_size 8190 --worker-connections 1000 --timeout 30 --graceful-timeout 30 --keep-alive 5 --access-logfile /dev/null --error-logfile - --bind \"0.0.0.0:${PORT:-8000}\""]
