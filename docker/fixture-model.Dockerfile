# syntax=docker/dockerfile:1.7
# Fixture model image: the scripted stand-in for an OpenAI-compatible model (NOT an LLM) that lets the compose
# stack complete a task with no model account (`docker compose --profile fixture up`). Local use only; it is
# not part of the ECS deployment. Build from the repository root:
#   docker build -f docker/fixture-model.Dockerfile -t euglena/fixture-model .
#
# The binary (tests/src/bin/fixture-model.rs, package euglena-tests) listens on 127.0.0.1 only, which other
# containers cannot reach, so socat forwards the container's port 8099 to it (fixture-model on 8098).

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
RUN cargo chef cook --release --locked --recipe-path recipe.json -p euglena-tests
COPY . .
RUN cargo build --release --locked -p euglena-tests --bin fixture-model \
    && cp target/release/fixture-model /usr/local/bin/fixture-model

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl socat \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 euglena \
    && useradd --system --uid 10001 --gid euglena --home-dir /nonexistent --shell /usr/sbin/nologin euglena
COPY --from=builder /usr/local/bin/fixture-model /usr/local/bin/fixture-model
USER 10001:10001
EXPOSE 8099
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8099/v1/models"]
# Either process ending stops the container (and compose restarts it).
ENTRYPOINT ["/bin/bash", "-c", "fixture-model 8098 & socat TCP-LISTEN:8099,fork,reuseaddr TCP:127.0.0.1:8098 & wait -n; exit 1"]
