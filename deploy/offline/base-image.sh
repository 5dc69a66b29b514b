#!/bin/sh
# A Python 3.11 base image made from Debian's packages alone, for machines no image registry
# answers: debootstrap (minbase + python3, venv, ca-certificates, passwd) piped into `docker import`.
# It stands in for python:3.11-slim-bookworm: deploy/offline/*.Dockerfile and the gateway image
# (PYTHON_IMAGE) build FROM it. About a minute; does nothing when the image exists already.
#   deploy/offline/base-image.sh [IMAGE]        (root: debootstrap needs it)
set -eu

IMAGE=${1:-${OFFLINE_BASE_IMAGE:-infergate/debian-python:3.11-bookworm}}
SUITE=${SUITE:-bookworm}
# the mirror this machine's apt already uses, else Debian's CDN
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists"
    exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }

ROOTFS=$(mktemp -d /tmp/infergate-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$ROOTFS" "$MIRROR"
cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# as in Docker's own Debian images: package scripts start no services, apt keeps no caches
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$IMAGE"
docker image ls "$IMAGE"
