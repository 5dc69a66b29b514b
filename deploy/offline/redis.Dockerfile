# Redis from Debian's redis-server package (7.0 in bookworm): the stand-in for redis:7.4.1-alpine
# on a machine that cannot pull it, on the base of deploy/offline/base-image.sh; the
# compose file's `redis-server --save "" ...` command and `redis-cli ping` healthcheck run as is.
# BASE_IMAGE: the image of deploy/offline/base-image.sh (the compose override passes it)
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# Not pinned: bookworm replaces the version with each security update, and a pin would then fail.
# The package's `redis` user, made first with the official image's uid 999.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis \
        --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
USER 999:999
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
