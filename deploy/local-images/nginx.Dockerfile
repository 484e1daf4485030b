# nginx from Debian's package, for hosts that cannot pull `nginx:1.27-alpine` (deploy/smoke.sh
# builds it on a local Debian base when the pull fails). Behaves like the official image for
# docker-compose.yml: the configuration is mounted at /etc/nginx/nginx.conf, logs go to the
# container's output, and `wget` is there for the health check.
#   docker build -f deploy/local-images/nginx.Dockerfile \
#     --build-arg BASE_IMAGE=localhost/bookworm-min -t localhost/ctvis-nginx deploy/local-images
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Versions come with the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
