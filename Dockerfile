# Build: the Rust toolchain this project is tested with (1.95), then a slim runtime image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# GraphiQL's files, embedded by src/http/graphiql.rs (include_bytes!).
COPY assets ./assets
# The workspace's other member (the benchmark): cargo needs its manifest; the build leaves it out.
COPY bench ./bench
COPY migrations ./migrations
RUN cargo build --release --locked && strip target/release/phone-auth

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home phoneauth
COPY --from=build /src/target/release/phone-auth /usr/local/bin/phone-auth
USER phoneauth
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/phone-auth"]
CMD ["serve"]
