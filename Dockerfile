# The image manifests/ deploys: both binaries on a distroless base, running as non-root.
#   docker build -t ghcr.io/rauta-dev/rauta:0.1.0 .
# (Not built by CI: the machines CI runs on have no container engine.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rauta-controller -p rauta-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/rauta-controller /src/target/release/rauta-proxy /usr/local/bin/
USER 65532:65532
