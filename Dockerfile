# syntax=docker/dockerfile:1
# Production image: `docker build -t sms-receiver .` then
# `docker run -e DATABASE_URL=postgresql://user:pass@db/sms -p 8080:8080 sms-receiver`.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY receiver ./receiver
COPY normalizers ./normalizers
COPY migrations ./migrations
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock .

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app --create-home receiver
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER receiver
WORKDIR /app
ENV LISTEN_HOST=0.0.0.0 \
    LISTEN_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LISTEN_PORT', '8080'), timeout=2)"]
# DATABASE_URL must be given: the image has no embedded Postgres.
CMD ["sms-receiver", "serve"]
