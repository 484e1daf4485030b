#!/bin/sh
# Form a Redis Cluster from the nodes named in CLUSTER_NODES (space-separated HOST or HOST:PORT;
# the port defaults to CLUSTER_PORT, 6379), with
# CLUSTER_REPLICAS replicas per primary. Idempotent: a cluster that already reports
# cluster_state:ok is left as it is. CLUSTER MEET takes addresses, not names, so each name is
# resolved first (getent, else nslookup, else ping's answer line: whichever the image has).
set -eu
PORT="${CLUSTER_PORT:-6379}"
first="${CLUSTER_NODES%% *}"
first_host="${first%%:*}"
first_port="$PORT"
case "$first" in *:*) first_port="${first##*:}" ;; esac

resolve() {
  addr="$(getent hosts "$1" 2> /dev/null | awk '{print $1; exit}')" || true
  if [ -z "$addr" ]; then
    addr="$(nslookup "$1" 2> /dev/null | awk '/^Name:/ {n = 1} n && /^Address/ {print $NF; exit}')" || true
  fi
  if [ -z "$addr" ]; then
    addr="$(ping -c 1 -W 1 "$1" 2> /dev/null | sed -n 's/^PING [^(]*(\([0-9.]*\)).*/\1/p')" || true
  fi
  [ -n "$addr" ] || { echo "cannot resolve $1" >&2; return 1; }
  echo "$addr"
}

if redis-cli -h "$first_host" -p "$first_port" cluster info | grep -q '^cluster_state:ok'; then
  echo "cluster already formed"
  exit 0
fi
addrs=""
for node in $CLUSTER_NODES; do
  port="$PORT"
  case "$node" in *:*) port="${node##*:}" ;; esac
  addrs="$addrs $(resolve "${node%%:*}"):$port"
done
echo "forming the cluster from$addrs"
# shellcheck disable=SC2086  # one word per node address
redis-cli --cluster create $addrs --cluster-replicas "${CLUSTER_REPLICAS:-1}" --cluster-yes
i=0
until redis-cli -h "$first_host" -p "$first_port" cluster info | grep -q '^cluster_state:ok'; do
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "cluster not ok after 30 s" >&2; exit 1; }
  sleep 0.5
done
echo "cluster formed"
