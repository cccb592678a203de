# The Tally image: `tally worker`, `tally api` and `tally migrate` against Kafka and a
# ClickHouse server (settings from TALLY_* variables; see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in a layer of their own: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN for p in schemas producers streams api tally commands; do mkdir -p $p && touch $p/__init__.py; done \
    && pip install . \
    && pip uninstall -y tally \
    && rm -rf schemas producers streams api tally commands build *.egg-info

COPY schemas schemas
COPY producers producers
COPY streams streams
COPY api api
COPY tally tally
COPY commands commands
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/tally tally

USER tally
WORKDIR /var/lib/tally
ENV TALLY_DATA_DIR=/var/lib/tally

EXPOSE 8080
ENTRYPOINT ["tally"]
CMD ["api"]
