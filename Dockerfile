# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    RECSVC_MODELS_DIR=/srv/models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY recsvc ./recsvc
COPY training ./training
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /srv recsvc \
 && mkdir -p /srv/models && chown recsvc /srv/models

USER recsvc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--preload", "recsvc.wsgi:app"]
