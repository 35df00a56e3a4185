# Both binaries in one minimal image; the charts run /tether-hub or /tether-agent.
# (Not built in CI: the build machines have no Docker engine. Rust 1.95 is what the code is tested with.)
#   docker build -t ghcr.io/tether/tether:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY hub hub
COPY agent agent
COPY tests tests
COPY charts charts
RUN cargo build --release --locked -p tether-hub -p tether-agent \
 && cp target/release/tether-hub target/release/tether-agent /

# distroless: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tether-hub /tether-agent /
USER 65532:65532
ENTRYPOINT ["/tether-agent"]
