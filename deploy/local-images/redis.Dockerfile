# Redis from Debian's package, for hosts that cannot pull `redis:7.4-alpine` (deploy/smoke.sh
# builds it on a local Debian base when the pull fails). Behaves like the official image for
# docker-compose.yml: `redis-server` with flags as the command, data in /data, non-root.
#   docker build -f deploy/local-images/redis.Dockerfile \
#     --build-arg BASE_IMAGE=localhost/bookworm-min -t localhost/ctvis-redis deploy/local-images
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The user first, with the official image's uid/gid 999 (the package keeps an existing user).
# Versions come with the base image's Debian release.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/redis \
        --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data
WORKDIR /data
USER 999:999
EXPOSE 6379
# Started without a configuration file, Debian's redis-server keeps protected mode on and then
# refuses clients from other containers; the official image is built with it off. Same here:
# `redis-server ARGS` runs `redis-server --protected-mode no ARGS` (later flags still win).
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; set -- redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "redis-entrypoint"]
CMD ["redis-server"]
