#!/usr/bin/env bash
# Deployment smoke test: build the CPU image, start the compose stack, drive it through the
# load balancer, tear it down. Prints one summary line (SMOKE PASS / SMOKE FAIL); exit status
# 0 only when every step passed.
#
#   bash deploy/smoke.sh              # from anywhere; logs under $SMOKE_CACHE/run/
#
# Steps (each timed; its output in $SMOKE_CACHE/run/<step>.log):
#   engine  Docker where a Docker engine answers, else Podman; the compose tool that goes with
#           it: `docker compose`, or podman-compose (pip, in $SMOKE_CACHE/tools).
#   base    CPU_IMAGE: ubuntu:24.04 when it can be pulled, else a Debian 12 base made here:
#           `debootstrap --variant=minbase bookworm` from the mirror apt uses, imported as
#           localhost/bookworm-min (tarball and image kept between runs).
#   build   the image, VARIANT=cpu, with what this host's pip uses: its CA bundle (build secret
#           pip_cert), its index, and the torch wheel from its find-links folders (linked into
#           deploy/wheels, TORCH_FIND_LINKS=/wheels). Layers stay cached between runs.
#   images  redis and nginx: REDIS_IMAGE / NGINX_IMAGE when set, else the public images when
#           they can be pulled, else deploy/local-images/*.Dockerfile on the Debian base.
#   up      docker-compose.yml + deploy/compose.cpu.yml, project $SMOKE_PROJECT: Redis, 2 API
#           replicas, 2 CPU workers, nginx on a free port; waits until every container is healthy.
#   drive   deploy/smoke_drive.py: live WebSocket sessions, a video job, a worker killed
#           mid-job, /metrics of every role (see its docstring).
#   down    `compose down -v` (also on failure or Ctrl-C; SMOKE_KEEP=1 keeps the stack).
#
# Environment (all optional): SMOKE_ENGINE (docker|podman), SMOKE_CACHE (/var/tmp/ctvis-smoke),
# SMOKE_PROJECT (ctvis-smoke), SMOKE_IMAGE (localhost/ctvis-serve-smoke; tag cpu), CPU_IMAGE,
# SMOKE_LOCAL_BASE=1 (skip the pull and use the Debian base), DEBIAN_MIRROR, REDIS_IMAGE,
# NGINX_IMAGE, SMOKE_JOB_FRAMES (480), SMOKE_LIVE_FRAMES (24), SMOKE_KEEP, SMOKE_REDIS
# (single | cluster: deploy/compose.redis-cluster.yml's 3+3-node Redis Cluster), PYTHON (the
# project's .venv/bin/python: the driver needs httpx, websockets, PyAV, pycocotools).
#
# Podman without a Docker engine (Debian: apt-get install podman runc uidmap slirp4netns
# containernetworking-plugins golang-github-containernetworking-plugin-dnsname debootstrap).
# What these sandboxed machines need, and what this script does about it:
# - runc, not crun: crun fails on `setrlimit RLIMIT_NOFILE/NPROC`. With runc installed, the
#   script makes it podman's runtime (containers.conf below) when podman would pick another.
# - Without CAP_SYS_RESOURCE podman cannot raise a container's nofile/nproc limits to its
#   defaults ("error setting rlimit type 7/6"): the script then writes a containers.conf with
#   default_ulimits at the limits this shell already has and exports CONTAINERS_CONF.
# - No systemd: podman runs no HEALTHCHECK timers (health stays "starting") and podman-compose
#   < podman 4.6 ignores `condition: service_healthy`. The script runs `podman healthcheck run`
#   on every container itself until all are healthy; containers that start too early (nginx
#   before the API exists) are restarted by their `restart: unless-stopped` policy.
# - HEALTHCHECK survives only in the docker image format: `podman build --format docker`.
# - Builds use `--network host` (RUN steps reach the package mirrors like the host does); the
#   stack itself runs on the compose network (podman's CNI bridge with DNS names).
# Steps run through `timed NAME FUNCTION`: shellcheck cannot see those calls.
# shellcheck disable=SC2329
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SMOKE_CACHE:-/var/tmp/ctvis-smoke}"
RUN="$CACHE/run"
PROJECT="${SMOKE_PROJECT:-ctvis-smoke}"
IMAGE="${SMOKE_IMAGE:-localhost/ctvis-serve-smoke}"
LOCAL_BASE="localhost/bookworm-min"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

EXTRA_COMPOSE=()
if [ "${SMOKE_REDIS:-single}" = cluster ]; then EXTRA_COMPOSE=(-f deploy/compose.redis-cluster.yml); fi

T0=$SECONDS
TIMES=()
SUMMARY_EXTRA=""
STACK_UP=0

log() { printf '[smoke] %s\n' "$*" >&2; }

finish() {
  local status=$1 what=$2
  trap - EXIT INT TERM
  if [ "$STACK_UP" = 1 ]; then
    if [ "$status" != PASS ]; then
      for c in $($ENGINE ps -a -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        {
          echo "==== $($ENGINE inspect --format '{{.Name}}' "$c" 2>/dev/null)"
          $ENGINE logs --tail 60 "$c" 2>&1
        } >> "$RUN/containers.log"
      done
      log "container logs: $RUN/containers.log"
    fi
    if [ -n "${SMOKE_KEEP:-}" ]; then
      log "SMOKE_KEEP: the stack stays up (project $PROJECT)"
    else
      timed down compose_down || true
    fi
  fi
  local times
  times="$(IFS=' '; echo "${TIMES[*]}")"
  echo "SMOKE $status ($what) redis=${SMOKE_REDIS:-single} engine=${ENGINE:-none} base=${CPU_IMAGE:-none} ${times} total=$((SECONDS - T0))s${SUMMARY_EXTRA:+ | $SUMMARY_EXTRA}"
  [ "$status" = PASS ]
  exit $?
}

# timed NAME FUNCTION [ARGS...]: run FUNCTION with its output in $RUN/NAME.log; record seconds.
timed() {
  local name=$1 start=$SECONDS rc
  shift
  log "$name ..."
  "$@" > "$RUN/$name.log" 2>&1
  rc=$?
  TIMES+=("$name=$((SECONDS - start))s")
  if [ $rc -ne 0 ]; then
    log "$name failed (exit $rc); last lines of $RUN/$name.log:"
    tail -n 25 "$RUN/$name.log" >&2
  else
    log "$name done in $((SECONDS - start))s"
  fi
  return $rc
}

# ---- engine ------------------------------------------------------------------------------------

engine() { "$ENGINE" "$@"; }

podman_conf() {
  # Runtime and rlimits that work here, through a containers.conf that podman-compose's podman
  # calls see too (CONTAINERS_CONF). A CONTAINERS_CONF of the caller is left as it is.
  if [ -n "${CONTAINERS_CONF:-}" ] && [ "$CONTAINERS_CONF" != "$CACHE/containers.conf" ]; then
    echo "CONTAINERS_CONF=$CONTAINERS_CONF (given)"
    return 0
  fi
  unset CONTAINERS_CONF
  local conf="" runtime out nproc
  runtime="$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)"
  if [ "$runtime" != runc ] && command -v runc > /dev/null; then
    conf+=$'[engine]\nruntime = "runc"\n'
  fi
  if [ -n "$conf" ]; then
    printf '%s' "$conf" > "$CACHE/containers.conf"
    export CONTAINERS_CONF="$CACHE/containers.conf"
  fi
  podman image inspect "$LOCAL_BASE" > /dev/null 2>&1 || return 0  # probed with the base
  out="$(podman run --rm --network none "$LOCAL_BASE" true 2>&1)" && return 0
  if grep -q "rlimit" <<< "$out"; then
    nproc="$(ulimit -Hu)"
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    conf+=$'[containers]\n'
    conf+="default_ulimits = [\"nofile=$(ulimit -Hn):$(ulimit -Hn)\", \"nproc=$nproc:$nproc\"]"
    printf '%s\n' "$conf" > "$CACHE/containers.conf"
    export CONTAINERS_CONF="$CACHE/containers.conf"
    out="$(podman run --rm --network none "$LOCAL_BASE" true 2>&1)" && return 0
  fi
  echo "$out"
  return 1
}

setup_engine() {
  if [ -n "${SMOKE_ENGINE:-}" ]; then
    ENGINE="$SMOKE_ENGINE"
  elif command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman > /dev/null; then
    ENGINE=podman
  else
    echo "no container engine: no Docker engine answers and podman is not installed"
    return 1
  fi
  if [ "$ENGINE" = docker ]; then
    docker version --format '{{.Server.Version}}' && docker compose version || return 1
    COMPOSE=(docker compose)
    return 0
  fi
  podman version --format '{{.Client.Version}}' || return 1
  local tools="$CACHE/tools"
  if [ ! -x "$tools/bin/podman-compose" ]; then
    python3 -m venv "$tools" && "$tools/bin/pip" install --quiet "podman-compose==1.6.0" \
      || return 1
  fi
  "$tools/bin/podman-compose" version | head -n 1
  COMPOSE=("$tools/bin/podman-compose")
  podman_conf || return 1
  if [ -n "${CONTAINERS_CONF:-}" ]; then cat "$CONTAINERS_CONF"; fi
}

# ---- base image --------------------------------------------------------------------------------

# The apt mirror of this host for a suite (deb822 .sources or one-line .list), else deb.debian.org.
apt_mirror() {  # SUITE DEFAULT; APT_ETC: /etc/apt
  local suite=$1 found etc="${APT_ETC:-/etc/apt}"
  found="$(
    cat "$etc/sources.list" "$etc"/sources.list.d/*.list 2>/dev/null \
      | awk -v s="$suite" '$1 == "deb" {
          i = 2  # skip [options], one token or several
          if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) == s) { print $i; exit } }'
  )"
  if [ -z "$found" ]; then
    found="$(
      cat "$etc"/sources.list.d/*.sources 2>/dev/null | awk -v s="$suite" '
        /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit = 1 }
        /^$/ { if (hit && uri) { print uri; exit } hit = 0; uri = "" }
        END { if (hit && uri) print uri }' | head -n 1
    )"
  fi
  echo "${found:-$2}"
}

local_base() {
  # Debian 12 minbase from the host's mirror. The tarball is reused for 14 days; the image is
  # imported when missing (and replaced with a new tarball).
  local tar="$CACHE/bookworm-min.tar" rootfs="$CACHE/rootfs"
  if [ ! -s "$tar" ] || [ -n "$(find "$tar" -mtime +14)" ]; then
    command -v debootstrap > /dev/null || { echo "debootstrap is not installed"; return 1; }
    local mirror security
    mirror="${DEBIAN_MIRROR:-$(apt_mirror bookworm http://deb.debian.org/debian)}"
    security="$(apt_mirror bookworm-security http://deb.debian.org/debian-security)"
    echo "debootstrap bookworm from $mirror (security: $security)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" || return 1
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
      "$mirror" "$mirror" "$security" > "$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . > "$tar.tmp" && mv "$tar.tmp" "$tar" || return 1
    rm -rf "$rootfs"
    engine rmi -f "$LOCAL_BASE" > /dev/null 2>&1
  fi
  if ! engine image inspect "$LOCAL_BASE" > /dev/null 2>&1; then
    engine import "$tar" "$LOCAL_BASE" || return 1
  fi
  echo "local base $LOCAL_BASE from $tar"
}

setup_base() {
  if [ -z "${SMOKE_LOCAL_BASE:-}" ]; then
    CPU_IMAGE="${CPU_IMAGE:-docker.io/library/ubuntu:24.04}"
    if engine image inspect "$CPU_IMAGE" > /dev/null 2>&1 || engine pull "$CPU_IMAGE"; then
      return 0
    fi
    echo "$CPU_IMAGE cannot be pulled: building a local Debian base"
  fi
  local_base || return 1
  CPU_IMAGE="$LOCAL_BASE"
  # The local torch wheels fit this base's Python (3.11).
  WHEEL_TAG=cp311
  if [ "$ENGINE" = podman ]; then podman_conf; fi  # now probed with the base
}

debian_base() {  # a Debian base for deploy/local-images: pulled, else the local one
  local slim=docker.io/library/debian:bookworm-slim
  if [ -n "${DEBIAN_BASE:-}" ]; then return 0; fi
  if [ "$CPU_IMAGE" != "$LOCAL_BASE" ] \
    && { engine image inspect "$slim" > /dev/null 2>&1 || engine pull "$slim"; }; then
    DEBIAN_BASE="$slim"
  else
    local_base || return 1
    DEBIAN_BASE="$LOCAL_BASE"
  fi
}

# ---- the ctvis image ---------------------------------------------------------------------------

pip_setting() {  # the value pip uses for a setting: environment first, then pip config
  local env_name=$1 key=$2 value
  value="${!env_name:-}"
  [ -n "$value" ] || value="$("$PYTHON" -m pip config get "global.$key" 2>/dev/null)" || value=""
  echo "$value"
}

build_image() {
  local args=(--build-arg VARIANT=cpu --build-arg "CPU_IMAGE=$CPU_IMAGE"
    --build-arg "TORCH_VERSION=$TORCH_VERSION")
  local cert links dir wheel found=0
  cert="$(pip_setting PIP_CERT cert)"
  if [ -n "$cert" ] && [ -s "$cert" ]; then
    args+=(--secret "id=pip_cert,src=$cert")
    echo "pip CA bundle: $cert (build secret pip_cert)"
  fi
  # pip's index settings, where they are reachable from a build (not file:// folders).
  local var key value item
  for var in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url \
    PIP_TRUSTED_HOST:trusted-host; do
    key="${var#*:}" var="${var%%:*}" value=""
    for item in $(pip_setting "$var" "$key"); do
      [[ "$item" == file:* ]] || value+="${value:+ }$item"
    done
    if [ -n "$value" ]; then
      args+=(--build-arg "$var=$value")
      echo "$var=$value"
    fi
  done
  # The torch wheel for the base's Python from pip's find-links folders, hard-linked (or
  # copied) into deploy/wheels (bind-mounted at /wheels by the build).
  local tag="${SMOKE_WHEEL_TAG:-${WHEEL_TAG:-}}"
  links="$(pip_setting PIP_FIND_LINKS find-links)"
  for dir in $links; do
    dir="${dir#file://}"
    [ -n "$tag" ] && [ -d "$dir" ] || continue
    for wheel in "$dir"/torch-"$TORCH_VERSION"[+-]*-"$tag"-*.whl; do
      [ -f "$wheel" ] || continue
      ln -f "$wheel" "$ROOT/deploy/wheels/" 2> /dev/null || cp -f "$wheel" "$ROOT/deploy/wheels/"
      echo "torch wheel: $wheel"
      found=1
    done
  done
  if [ "$found" = 1 ]; then args+=(--build-arg TORCH_FIND_LINKS=/wheels); fi
  local format=()
  if [ "$ENGINE" = podman ]; then format=(--format docker); fi
  local previous
  previous="$(engine image inspect --format '{{.Id}}' "$IMAGE:cpu" 2> /dev/null)"
  engine build "${format[@]}" --network host --target runtime -t "$IMAGE:cpu" "${args[@]}" \
    -f "$ROOT/Dockerfile" "$ROOT" || return 1
  prune_storage "$previous"
  # Checks of the result: the HEALTHCHECK is there, and so is the bundled demo model.
  local health
  health="$(engine image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE:cpu" 2>/dev/null)"
  if [ -z "$health" ] || [ "$health" = null ] || [ "$health" = "<no value>" ]; then
    health="$(engine image inspect --format '{{json .Healthcheck}}' "$IMAGE:cpu" 2>/dev/null)"
  fi
  echo "HEALTHCHECK: $health"
  grep -q healthcheck.py <<< "$health" || { echo "the image has no HEALTHCHECK"; return 1; }
  engine run --rm --network none --entrypoint python "$IMAGE:cpu" -c \
    "from model.demo import demo_checkpoint; import sys; p = demo_checkpoint(); print('demo checkpoint:', p, sys.version.split()[0]); sys.exit(p is None)" \
    || return 1
  image_is_current
}

image_is_current() {
  # Every module in the image is byte-for-byte this tree's (a stale cached layer is not).
  local digest='import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else __import__("model").__file__).parent
root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent
for package in ("model", "service", "training", "cli"):
    for path in sorted((root / package).rglob("*.py")):
        print(path.relative_to(root), hashlib.sha256(path.read_bytes()).hexdigest())'
  local image host stale
  image="$(engine run --rm --network none --entrypoint python "$IMAGE:cpu" -c "$digest")" \
    || return 1
  host="$("$PYTHON" -c "$digest" "$ROOT")" || return 1
  stale="$(comm -23 <(sort <<< "$image") <(sort <<< "$host"))"
  if [ -n "$stale" ]; then
    echo "the image's modules differ from this tree's:"
    head -n 10 <<< "$stale"
    return 1
  fi
  echo "image is current: $(wc -l <<< "$image") modules equal to this tree's"
}

prune_storage() {
  # The previous image of this tag goes; the stages' cached layers stay (`image prune` would
  # take them too: every intermediate image of a stage becomes dangling once its last child
  # goes). Past SMOKE_MAX_STORAGE_GB (30) of Podman storage, every unused image goes: the next
  # build starts cold.
  local previous=$1 root used
  if [ -n "$previous" ] && [ "$previous" != "$(engine image inspect --format '{{.Id}}' \
    "$IMAGE:cpu")" ]; then
    engine rmi "$previous" > /dev/null 2>&1 && echo "removed the previous image ${previous:0:12}"
  fi
  [ "$ENGINE" = podman ] || return 0
  root="$(podman info --format '{{.Store.GraphRoot}}')"
  used="$(du -s -BG "$root" 2> /dev/null | cut -f1 | tr -d G)"
  echo "podman storage: ${used:-?} GB in $root"
  if [ -n "$used" ] && [ "$used" -gt "${SMOKE_MAX_STORAGE_GB:-30}" ]; then
    echo "over ${SMOKE_MAX_STORAGE_GB:-30} GB: removing unused images"
    podman image prune -a -f > /dev/null
  fi
  return 0
}

# ---- redis and nginx ---------------------------------------------------------------------------

service_image() {  # VAR DEFAULT LOCAL_NAME DOCKERFILE
  local var=$1 default=$2 local_name=$3 dockerfile=$4
  if [ -n "${!var:-}" ]; then
    echo "$var=${!var} (given)"
    return 0
  fi
  if engine image inspect "$default" > /dev/null 2>&1 || engine pull "$default"; then
    printf -v "$var" '%s' "$default"
    echo "$var=$default (pulled)"
    return 0
  fi
  debian_base || return 1
  engine build --network host -t "$local_name" --build-arg "BASE_IMAGE=$DEBIAN_BASE" \
    -f "$ROOT/deploy/local-images/$dockerfile" "$ROOT/deploy/local-images" || return 1
  printf -v "$var" '%s' "$local_name"
  echo "$var=$local_name (built from Debian packages on $DEBIAN_BASE)"
}

service_images() {
  service_image REDIS_IMAGE docker.io/library/redis:7.4-alpine localhost/ctvis-redis \
    redis.Dockerfile || return 1
  service_image NGINX_IMAGE docker.io/library/nginx:1.27-alpine localhost/ctvis-nginx \
    nginx.Dockerfile
}

# ---- the compose stack -------------------------------------------------------------------------

compose() {
  # A clean environment: only the env file shapes the stack (never the caller's CTVIS_* or a
  # .env in the repository).
  (cd "$ROOT" && env -i PATH="$PATH" HOME="${HOME:-/root}" \
    ${CONTAINERS_CONF:+CONTAINERS_CONF="$CONTAINERS_CONF"} ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} \
    "${COMPOSE[@]}" --env-file "$RUN/smoke.env" -p "$PROJECT" \
    -f docker-compose.yml -f deploy/compose.cpu.yml "${EXTRA_COMPOSE[@]}" "$@")
}

compose_down() {
  compose down -v -t 10
  # podman-compose leaves the network of a project whose `up` failed half-way.
  if [ "$ENGINE" = podman ]; then engine network rm -f "${PROJECT}_default" 2> /dev/null; fi
  return 0
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stack_up() {
  PORT="${SMOKE_PORT:-$(free_port)}"
  cat > "$RUN/smoke.env" <<EOF
IMAGE=$IMAGE
VARIANT=cpu
REDIS_IMAGE=$REDIS_IMAGE
NGINX_IMAGE=$NGINX_IMAGE
PUBLISH_PORT=$PORT
CHECKPOINTS_DIR=$RUN/checkpoints
API_REPLICAS=2
WORKER_REPLICAS=2
API_DEVICE=cpu
CTVIS_JOB_CLAIM_IDLE_MS=5000
CTVIS_LOG_LEVEL=info
EOF
  cat "$RUN/smoke.env"
  compose_down > /dev/null 2>&1  # a stack left by an interrupted run
  STACK_UP=1
  compose up -d --no-build || return 1
  wait_healthy 420
}

wait_healthy() {
  # Every container of the project healthy (podman: run the checks ourselves, no systemd).
  local deadline=$((SECONDS + $1)) ids c pending
  while [ "$SECONDS" -lt "$deadline" ]; do
    ids="$(engine ps -a -q --filter "label=com.docker.compose.project=$PROJECT")"
    pending=""
    for c in $ids; do
      # A one-shot service (redis-cluster-init) is done once it exited with status 0.
      if [ "$(engine inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$c")" = "exited 0" ]; then
        continue
      fi
      if [ "$ENGINE" = podman ]; then
        podman healthcheck run "$c" > /dev/null 2>&1 || pending+=" $c"
      else
        [ "$(docker inspect --format '{{.State.Health.Status}}' "$c")" = healthy ] || pending+=" $c"
      fi
    done
    if [ -n "$ids" ] && [ -z "$pending" ]; then
      engine ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}'
      echo "all $(wc -w <<< "$ids") containers healthy after $((SECONDS - deadline + $1))s"
      return 0
    fi
    sleep 3
  done
  echo "not healthy within $1 s:"
  engine ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}'
  return 1
}

drive() {
  local out rc
  out="$("$PYTHON" "$ROOT/deploy/smoke_drive.py" --url "http://127.0.0.1:$PORT" \
    --engine "$ENGINE" --project "$PROJECT" --work "$RUN/work" \
    --job-frames "${SMOKE_JOB_FRAMES:-480}" --live-frames "${SMOKE_LIVE_FRAMES:-24}" \
    --stream-shards "$([ "${SMOKE_REDIS:-single}" = cluster ] && echo 3 || echo 1)")"
  rc=$?
  echo "$out"
  SUMMARY_EXTRA="$(tail -n 1 <<< "$out")"
  return "$rc"
}

main() {
  mkdir -p "$CACHE"
  rm -rf "$RUN"
  mkdir -p "$RUN/work" "$RUN/checkpoints"
  trap 'finish FAIL interrupted' INT TERM
  trap 'finish FAIL "unexpected exit"' EXIT
  timed engine setup_engine || finish FAIL "no container engine"
  timed base setup_base || finish FAIL "base image"
  timed build build_image || finish FAIL "image build"
  timed images service_images || finish FAIL "redis/nginx images"
  timed up stack_up || finish FAIL "compose stack not healthy"
  timed drive drive
  local rc=$?
  cat "$RUN/drive.log" >&2
  [ $rc -eq 0 ] || finish FAIL "drive"
  finish PASS "image built, stack healthy, driven through nginx"
}

# Sourced (tests/deploy call single functions), it only defines them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
