#!/bin/sh
# As the official redis image does: no protected mode, which would refuse every client from
# another container (Redis's default without a config file); only the compose network reaches it.
set -e
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
