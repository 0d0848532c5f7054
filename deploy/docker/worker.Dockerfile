# The worker: lethe-worker with libtorch 2.13 from the torch wheel (which carries the CUDA
# runtime it was built with; the host provides the driver), and Fashion-MNIST for the
# `builtin:` datasets.
# Build from the repository root: docker build -f deploy/docker/worker.Dockerfile .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
RUN cargo build --release -p lethe-worker -p lethe-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
        dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
# The binary's rpath points into the virtualenv's torch/lib.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/target/release/lethe-worker /src/target/release/lethe /usr/local/bin/
USER 65534
ENTRYPOINT ["lethe-worker", "serve"]
