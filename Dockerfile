# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    RECSVC_MODELS_DIR=/srv/models \
    RECSVC_EVENTS_DIR=/srv/events \
    RECSVC_BIND=0.0.0.0:8000

WORKDIR /app
COPY pyproject.toml README.md gunicorn.conf.py ./
COPY recsvc ./recsvc
COPY training ./training
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /srv recsvc \
 && mkdir -p /srv/models /srv/events \
 && chown recsvc /srv/models /srv/events

USER 10001
EXPOSE 8000
VOLUME ["/srv/models", "/srv/events"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "recsvc.wsgi:app"]
