# microservice2 container image: serve mode by default, `gateway` as the first argument for
# gateway mode. Build: docker build -t microservice2 .   Run: docker run --rm -p 3000:3000 microservice2

# --- builder: the official Rust image, on the same Debian release as the runtime image ---
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, with placeholder sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/response.rs \
    && cargo build --release --locked \
    && rm -rf src benches

COPY src ./src
COPY benches ./benches
# Touch the sources so cargo rebuilds the crate itself over the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/microservice2 /microservice2

# --- runtime: glibc and libgcc only, no shell, running as uid 65532 ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /microservice2 /microservice2
USER 65532:65532
EXPOSE 3000
# SIGTERM starts the graceful drain (readiness 503, finish in-flight requests, exit 0).
STOPSIGNAL SIGTERM
# The image has no curl: the binary checks its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
    CMD ["/microservice2", "healthcheck"]
ENTRYPOINT ["/microservice2"]
