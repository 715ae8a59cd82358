# syntax=docker/dockerfile:1.7
# Metrics sidecar image (queue depth to CloudWatch). Build from the repository root:
#   docker build -f docker/metrics-sidecar.Dockerfile -t euglena/metrics-sidecar .

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
RUN cargo chef cook --release --locked --recipe-path recipe.json -p metrics-sidecar
COPY . .
RUN cargo build --release --locked -p metrics-sidecar --bin metrics-sidecar \
    && cp target/release/metrics-sidecar /usr/local/bin/metrics-sidecar

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 euglena \
    && useradd --system --uid 10001 --gid euglena --home-dir /nonexistent --shell /usr/sbin/nologin euglena
COPY --from=builder /usr/local/bin/metrics-sidecar /usr/local/bin/metrics-sidecar
ENV PORT=8082
USER 10001:10001
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8082/health"]
ENTRYPOINT ["/usr/local/bin/metrics-sidecar"]
