# syntax=docker/dockerfile:1.7
# Gateway image. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t euglena/gateway .
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (cook deps, then build the
# one package) -> runtime (debian slim, non-root, curl for the health check).

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
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p gateway
COPY . .
RUN cargo build --release --locked -p gateway --bin gateway \
    && cp target/release/gateway /usr/local/bin/gateway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 euglena \
    && useradd --system --uid 10001 --gid euglena --home-dir /nonexistent --shell /usr/sbin/nologin euglena
COPY --from=builder /usr/local/bin/gateway /usr/local/bin/gateway
ENV HOST=0.0.0.0 \
    PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/gateway"]
