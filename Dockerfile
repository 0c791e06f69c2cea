# The `marketplace` binary, for docker-compose.yml. It needs no PostgreSQL
# binaries in the image: DATABASE_URL points at the postgres service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p marketplace-cli --bin marketplace

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/marketplace /usr/local/bin/marketplace
ENV MARKETPLACE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["marketplace"]
CMD ["serve"]
