# syntax=docker/dockerfile:1
# The `portcullis` binary (controller, data plane, check, demo) in a minimal image:
#   docker build -t ghcr.io/portcullis-dev/portcullis:0.1.0 .
# Build stage: the toolchain rust-toolchain.toml pins, Debian 12 to match the runtime's glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches the registry and target/ between builds; the binary is copied out of the
# cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis --bin portcullis \
    && install -m 0755 target/release/portcullis /portcullis

# Runtime stage: glibc, libgcc and CA certificates, no shell, no package manager. The binary
# needs nothing else: io_uring is plain syscalls (epoll when seccomp refuses them).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /portcullis
# distroless's `nonroot`; the chart's pods also set runAsUser/runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/portcullis"]
