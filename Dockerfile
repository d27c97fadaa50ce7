# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    RECSVC_MODELS_DIR=/srv/models \
    RECSVC_EVENTS_DIR=/srv/events \
    RECSVC_BIND=unix:/run/recsvc/gunicorn.sock

WORKDIR /app
COPY pyproject.toml README.md gunicorn.conf.py ./
COPY recsvc ./recsvc
COPY training ./training
# The service alone: the trainer's dependencies are the `train` extra, not installed here.
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /srv recsvc \
 && mkdir -p /srv/models /srv/events /run/recsvc \
 && chown recsvc /srv/models /srv/events /run/recsvc

# gunicorn's sync workers must not face clients: it listens on a unix socket in /run/recsvc,
# which nginx shares (deploy/compose.yaml), and publishes no port.
USER 10001
VOLUME ["/srv/models", "/srv/events", "/run/recsvc"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import http.client as h, os, socket; c = h.HTTPConnection('localhost'); c.sock = socket.socket(socket.AF_UNIX); c.sock.settimeout(2); c.sock.connect(os.environ['RECSVC_BIND'].removeprefix('unix:')); c.request('GET', '/healthz'); exit(c.getresponse().status != 200)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "recsvc.wsgi:app"]
