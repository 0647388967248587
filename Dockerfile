# The image docker-compose.yml runs: jmirror-web on Python 3.11, as a non-root user. The
# same image is the web process (the default command) and the receiver (`manage.py
# receive`); the slim base and pip without a cache keep it small, and .dockerignore keeps
# the virtual environment, data, tests and benchmarks out.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JMIRROR_DATA_DIR=/data

# /data is made here so that a new named volume mounted on it is owned by jmirror, and
# is jmirror's alone (0700: the web and receiver containers both run as jmirror, so they
# share it; an older volume is tightened when either starts).
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home jmirror \
    && mkdir --mode=0700 /data \
    && chown jmirror:jmirror /data

WORKDIR /app
COPY . .
# Editable, because templates/ and static/ sit beside the packages rather than in them.
# gcc builds the receiver's C part (receiver/_fastpath.c, about twice as fast as the pure
# Python path) and leaves with its packages in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --editable . \
    && python -c "import receiver._fastpath" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* build

USER jmirror
EXPOSE 8000 30030/udp
# Daphne through `serve`, which bounds websocket messages; with REDIS_URL set the receiver
# is not embedded (it runs as its own container), and --no-receiver says so regardless.
CMD ["python", "manage.py", "serve", "--bind", "0.0.0.0", "--port", "8000", "--no-receiver"]
