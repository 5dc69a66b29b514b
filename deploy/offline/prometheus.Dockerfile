# Prometheus from Debian's prometheus package (2.42 in bookworm): the stand-in for
# prom/prometheus:v2.55.1 on a machine that cannot pull it. Like that image: the binary is the
# entrypoint (the compose file passes its flags), data in /prometheus, run as nobody (65534), so
# a prometheus-data volume of either image works with the other.
# BASE_IMAGE: the image of deploy/offline/base-image.sh (the compose override passes it)
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# Not pinned: bookworm replaces the version with each security update, and a pin would then fail.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
