# syntax=docker/dockerfile:1.7
#
# The commerce image: one binary, `commerce`, that runs every service of the platform
# (`commerce serve --services checkout|loyalty|subscriptions`, `commerce psp serve`, the all-in-one
# `commerce serve`, and the operator commands). k8s/ deploys it; k8s/README.md says how to build it.
#
#   docker build -t commerce:dev .
#   docker run --rm commerce:dev --help
#
# scripts/k8s-check keeps this recipe honest without a container engine: the package and binary it
# builds must be the workspace's `commerce` package and bin, the subcommand in CMD and the ENV names
# must be ones the binary accepts, and EXPOSE must match the ports the manifests use.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- toolchain + cargo-chef (dependency caching) --------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# --- planner: the dependency recipe, from manifests and Cargo.lock only ---------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- build: dependencies first (a layer that only changes with Cargo.lock), then the sources -----
FROM chef AS build
# Build scripts need a protoc: .cargo/config.toml points PROTOC at tools/protoc, which runs the one
# the protoc-bin-vendored crate ships (no system protoc, no download).
COPY .cargo .cargo
COPY tools tools
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p commerce --bin commerce
COPY . .
RUN cargo build --release --locked -p commerce --bin commerce \
 && install -D -m 0755 target/release/commerce /out/usr/local/bin/commerce \
 && install -d -m 0750 -o 65532 -g 65532 /out/var/lib/commerce

# --- runtime: distroless cc (glibc + libgcc, no shell, no package manager) -----------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="commerce" \
      org.opencontainers.image.description="Commerce API platform: checkout, loyalty, subscriptions and the PSP simulator in one binary" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/ /
# Listen on every interface inside the container (the binary's defaults are loopback-only); the
# embedded store (all-in-one, `psp serve` without MongoDB) lives under /var/lib/commerce.
ENV COMMERCE_LISTEN=0.0.0.0:8080 \
    COMMERCE_ADMIN_LISTEN=0.0.0.0:9090 \
    COMMERCE_PSP_LISTEN=0.0.0.0:8090 \
    COMMERCE_PSP_ADMIN_LISTEN=0.0.0.0:9091 \
    COMMERCE_DATA_DIR=/var/lib/commerce
# API (gRPC, gRPC-web, Connect) and admin (/metrics, /healthz) of `serve`; the same of `psp serve`.
EXPOSE 8080 9090 8090 9091
# distroless's "nonroot" user, by number so runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /var/lib/commerce
ENTRYPOINT ["commerce"]
CMD ["serve"]
