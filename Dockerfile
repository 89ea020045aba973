# syntax=docker/dockerfile:1
#
# readstates in a small runtime image, running as a non-root user.
#
#   docker build -t readstates .
#   docker run --rm -p 50051:50051 -p 9464:9464 \
#       -v "$PWD/my-config.toml:/etc/readstates/readstates.toml:ro" readstates
#
# Ports: 50051 gRPC API, 9464 Prometheus /metrics.
# Config: /etc/readstates/readstates.toml (READSTATES_CONFIG); the image
# ships readstates.example.toml there, so it starts without a mount.
# Environment overrides (READSTATES_<SECTION>_<KEY>) win over the file: the
# image sets the listen addresses to all interfaces, as a container needs.
# Data of the embedded store: /var/lib/readstates/data (mount a volume).
# `readstates migrate` (same config) creates the ScyllaDB/Cassandra schema.

FROM rust:1.90-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build artifacts between builds;
# the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin readstates \
    && cp target/release/readstates /usr/local/bin/readstates

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/readstates readstates \
    && mkdir -p /var/lib/readstates/data /etc/readstates \
    && chown -R readstates:readstates /var/lib/readstates
COPY --from=builder /usr/local/bin/readstates /usr/local/bin/readstates
COPY readstates.example.toml /etc/readstates/readstates.toml
ENV READSTATES_CONFIG=/etc/readstates/readstates.toml \
    READSTATES_SERVER_LISTEN_ADDR=0.0.0.0:50051 \
    READSTATES_METRICS_LISTEN_ADDR=0.0.0.0:9464 \
    READSTATES_STORE_DATA_DIR=/var/lib/readstates/data
USER readstates
WORKDIR /var/lib/readstates
EXPOSE 50051 9464
# SIGTERM drains calls, flushes every dirty state and exits 0; allow it
# server.shutdown_timeout_ms (60 s by default) before a SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["readstates"]
