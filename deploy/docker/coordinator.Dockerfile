# The coordinator and the `lethe` CLI: no libtorch, a small image.
# Build from the repository root: docker build -f deploy/docker/coordinator.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p lethe-coordinator -p lethe-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lethe-coordinator /src/target/release/lethe /usr/local/bin/
USER 65534
# gRPC; Prometheus metrics when metrics_listen is set (deploy/config/coordinator.toml).
EXPOSE 50051 9464
ENTRYPOINT ["lethe-coordinator"]
