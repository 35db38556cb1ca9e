# speculum-registry: the buildset and intermediate registry.
#   docker build -t speculum-registry .
#   docker run -v $PWD/conf:/conf:ro -v data:/storage -p 5000:5000 speculum-registry
# Build stage: the workspace as checked in, the registry binary only.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin speculum-registry \
 && cp target/release/speculum-registry /usr/local/bin/speculum-registry

# Runtime stage: Debian slim with CA certificates, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /storage --shell /usr/sbin/nologin speculum \
 && mkdir -p /storage /conf \
 && chown speculum:speculum /storage
COPY --from=builder /usr/local/bin/speculum-registry /usr/local/bin/speculum-registry
USER speculum
VOLUME /storage
EXPOSE 5000
ENTRYPOINT ["speculum-registry"]
CMD ["serve", "--config", "/conf/registry.yaml"]
