#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:${CTVIS_REDIS_PORT:-6379}.
# Starts one (installing redis-server with apt-get when missing) if none is reachable.
set -euo pipefail
PORT="${CTVIS_REDIS_PORT:-6379}"

ping_redis() {
  # Speak RESP directly so that redis-cli is not required.
  python3 - "$PORT" <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if ping_redis; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[redis] redis-server not found; installing it with apt-get"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
echo "[redis] starting redis-server on 127.0.0.1:$PORT"
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --daemonize yes \
  --logfile /tmp/ctvis-redis-"$PORT".log
for _ in $(seq 1 50); do
  if ping_redis; then exit 0; fi
  sleep 0.1
done
echo "[redis] redis-server did not come up on port $PORT" >&2
exit 1
