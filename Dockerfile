# CrowdTick: one `crowdtick` binary in a small non-root image.
#
#   docker build -t crowdtick:local .
#   docker run --rm -p 127.0.0.1:8080:8080 crowdtick:local            # everything in one process
#   docker compose up                                                 # the distributed deployment
#
# Stages: `builder` compiles the dependencies first, from the manifests and Cargo.lock alone with
# stub sources, so that layer is reused until a manifest or the lock file changes; then the real
# sources are copied in and only the workspace's own crates are compiled. `runtime` is Debian
# slim (glibc, libgcc, zlib: what the binary and its bundled librdkafka link against) with the
# binary, a uid-10001 user and the data volume.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5

# 1. Dependencies: the workspace manifests, the lock file and a stub for every target they declare
#    (every member is a library; the root also has the `crowdtick` binary, the `it` test and the
#    processor its `pipeline` and `voter_set` benches). A new workspace member needs a line in both lists below
#    (deploy/checks/test_compose.py checks that).
COPY Cargo.toml Cargo.lock ./
COPY edge/Cargo.toml edge/Cargo.toml
COPY ingest/Cargo.toml ingest/Cargo.toml
COPY processor/Cargo.toml processor/Cargo.toml
COPY results/Cargo.toml results/Cargo.toml
COPY query/Cargo.toml query/Cargo.toml
COPY realtime/Cargo.toml realtime/Cargo.toml
COPY schemas/Cargo.toml schemas/Cargo.toml
COPY seed_api/Cargo.toml seed_api/Cargo.toml
COPY storage/Cargo.toml storage/Cargo.toml
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN set -eux; \
    for member in . edge ingest processor results query realtime schemas seed_api storage loadtest; do \
        mkdir -p "$member/src"; \
        : > "$member/src/lib.rs"; \
    done; \
    echo 'fn main() {}' > src/main.rs; \
    mkdir -p tests/it processor/benches examples; \
    echo 'fn main() {}' > tests/it/main.rs; \
    echo 'fn main() {}' > processor/benches/pipeline.rs; \
    echo 'fn main() {}' > processor/benches/voter_set.rs; \
    echo 'fn main() {}' > examples/tallies_consumer.rs; \
    cargo build --release --locked --bin crowdtick

# 2. The real sources (each crate with the files it embeds: query/ui, query/openapi.json,
#    schemas/avro|sql|cql). The stubs for tests/, benches/ and examples/ stay: nothing here
#    builds them.
#    COPY keeps the files' own modification times, which may be older than the stub build:
#    touch them so cargo recompiles every workspace crate.
COPY src src
COPY edge edge
COPY ingest ingest
COPY processor processor
COPY results results
COPY query query
COPY realtime realtime
COPY schemas schemas
COPY seed_api seed_api
COPY storage storage
COPY loadtest loadtest
RUN set -eux; \
    find src edge ingest processor results query realtime schemas seed_api storage loadtest -type f -exec touch {} +; \
    cargo build --release --locked --bin crowdtick; \
    install -D -m 0755 target/release/crowdtick /out/crowdtick; \
    /out/crowdtick --version

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="CrowdTick" \
      org.opencontainers.image.description="Real-time polling at broadcast scale: one binary, embedded or distributed." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="CrowdTick" \
      org.opencontainers.image.documentation="README.md (Running distributed), docker-compose.yml"

# uid/gid 10001, no login shell, owning the data directory (also the working directory, so a
# relative data_dir or a ./crowdtick.toml lands there).
RUN set -eux; \
    groupadd --system --gid 10001 crowdtick; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/crowdtick --no-create-home \
        --shell /usr/sbin/nologin crowdtick; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/crowdtick

COPY --from=builder /out/crowdtick /usr/local/bin/crowdtick
# Fails the build here, not at run time, if the binary needs a library this base lacks.
RUN ["crowdtick", "--version"]

USER 10001:10001
WORKDIR /var/lib/crowdtick
ENV CROWDTICK_LISTEN=0.0.0.0:8080 \
    CROWDTICK_DATA_DIR=/var/lib/crowdtick
VOLUME ["/var/lib/crowdtick"]
EXPOSE 8080

# Liveness of the HTTP server; no curl in the image: the binary checks itself.
# (The compose file checks /readyz instead, which also covers Kafka, PostgreSQL and Redis.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["crowdtick", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["crowdtick"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
