#!/usr/bin/env bash
# Container smoke test: build the image, run docker-compose.yml (podman-compose by default) and
# check the system from the host, then take it down again (always, also on failure or Ctrl-C).
# Prints PASS/FAIL per check and exits 0 only if every check passed. Slow (a few minutes, most
# of it the first build): .ci/run runs it only with CONTAINER_SMOKE=1.
#
#   bash scripts/container-smoke.sh
#
# Checks: the LB's /health answers 200; 3 Log API instances registered and healthy; a log posted
# through the LB comes back from GET /api/log; the web page answers GET / with 200; the image's
# HEALTHCHECK passes in every aygolog container; the services run as uid 10001, not root.
#
# Environment (all optional):
#   ENGINE=podman|docker       container engine (default podman)
#   COMPOSE="docker compose"   compose command (default: podman-compose, installed from PyPI into
#                              .venv-compose on first use)
#   SMOKE_LB_PORT=28480 SMOKE_UI_PORT=28473   host ports, unusual so they clash with nothing
#   AYGOLOG_REGISTRATION_TOKEN token for the run (default: a random one)
#   BASE_IMAGE                 the Dockerfile's base; with podman and ../shared/tools/oci present,
#                              that tool's local Debian image (no registry needed)
#   REDIS_IMAGE                Redis image; default here: one built from Debian's redis-server
#                              package on BASE_IMAGE (SMOKE_LOCAL_REDIS=0: compose's default)
#   SMOKE_KEEP=1               leave the containers running at the end (for poking at them)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

ENGINE=${ENGINE:-podman}
PROJECT=aygolog-smoke
IMAGE=localhost/aygolog:smoke
LB_PORT=${SMOKE_LB_PORT:-28480}
UI_PORT=${SMOKE_UI_PORT:-28473}
LB=http://127.0.0.1:$LB_PORT
UI=http://127.0.0.1:$UI_PORT
LOGS=${TMPDIR:-/tmp}/aygolog-smoke
START=$SECONDS
mkdir -p "$LOGS"
export AYGOLOG_REGISTRATION_TOKEN=${AYGOLOG_REGISTRATION_TOKEN:-smoke-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')}
export AYGOLOG_IMAGE=$IMAGE LB_PUBLISHED_PORT=$LB_PORT UI_PUBLISHED_PORT=$UI_PORT

say() { printf '[%3ds] %s\n' $((SECONDS - START)) "$*"; }
die() { say "FAIL: $*"; exit 1; }
for tool in curl python3 timeout "$ENGINE"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

# -- the engine, the build command, the compose command ---------------------------------------
OCI=../shared/tools/oci
if [[ $ENGINE == podman && -x $OCI ]]; then
  podman image exists localhost/aygolog-base:bookworm || "$OCI" prepare >"$LOGS/prepare.log" 2>&1 \
    || { tail -20 "$LOGS/prepare.log"; die "oci prepare"; }
  BASE_IMAGE=${BASE_IMAGE:-localhost/aygolog-base:bookworm}
  BUILD=(podman build --format docker --network=host -v /etc/ssl/certs:/etc/ssl/certs:ro)
  SMOKE_LOCAL_REDIS=${SMOKE_LOCAL_REDIS:-1}
elif [[ $ENGINE == podman ]]; then
  BUILD=(podman build --format docker)
else
  BUILD=("$ENGINE" build)
fi
BASE_IMAGE=${BASE_IMAGE:-python:3.12-slim}
export BASE_IMAGE
if [[ -z ${COMPOSE:-} ]]; then
  if [[ $ENGINE == podman ]]; then
    tools=.venv-compose
    if [[ ! -x $tools/bin/podman-compose ]]; then
      say "installing podman-compose into $tools"
      { python3 -m venv "$tools" && "$tools/bin/pip" install -q "podman-compose==1.6.0"; } \
        >"$LOGS/pip.log" 2>&1 || { tail -20 "$LOGS/pip.log"; die "pip install podman-compose"; }
    fi
    COMPOSE="$tools/bin/podman-compose"
  else
    COMPOSE="docker compose"
  fi
fi
read -r -a COMPOSE_CMD <<<"$COMPOSE"

# -- build ------------------------------------------------------------------------------------
say "building $IMAGE (BASE_IMAGE=$BASE_IMAGE; log: $LOGS/build.log)"
timeout 900 "${BUILD[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >"$LOGS/build.log" 2>&1 \
  || { tail -30 "$LOGS/build.log"; die "image build"; }
if [[ -z ${REDIS_IMAGE:-} && ${SMOKE_LOCAL_REDIS:-0} == 1 ]]; then
  # Like the official image: redis-server with protected mode off (the network is the guard).
  ctx=$(mktemp -d)
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* \\
 && printf '#!/bin/sh\\nexec /usr/bin/redis-server "\$@" --protected-mode no\\n' >/usr/local/bin/redis-server \\
 && chmod 755 /usr/local/bin/redis-server && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
EOF
  say "building a Redis image from Debian's redis-server package (no registry needed)"
  timeout 600 "${BUILD[@]}" -t localhost/aygolog-smoke-redis:latest "$ctx" >"$LOGS/redis-build.log" 2>&1 \
    || { tail -30 "$LOGS/redis-build.log"; rm -rf "$ctx"; die "Redis image build"; }
  rm -rf "$ctx"
  export REDIS_IMAGE=localhost/aygolog-smoke-redis:latest
fi
say "image: $IMAGE, $("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

# -- up (and always down) ---------------------------------------------------------------------
down() { timeout 120 "${COMPOSE_CMD[@]}" -p "$PROJECT" -f docker-compose.yml down -v >"$LOGS/down.log" 2>&1; }
DOWN_DONE=0
take_down() {
  ((DOWN_DONE)) && return 0
  DOWN_DONE=1
  if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
    say "SMOKE_KEEP=1: left running (take it down: $COMPOSE -p $PROJECT down -v)"
  elif down; then
    say "compose down: done"
  else
    say "compose down: FAILED (see $LOGS/down.log)"
  fi
}
trap take_down EXIT
trap 'exit 130' INT TERM
down || true  # leftovers of an interrupted run
say "compose up (project $PROJECT; LB on :$LB_PORT, web page on :$UI_PORT)"
timeout 300 "${COMPOSE_CMD[@]}" -p "$PROJECT" -f docker-compose.yml up -d --no-build >"$LOGS/up.log" 2>&1 \
  || { tail -30 "$LOGS/up.log"; die "compose up"; }

# -- checks -----------------------------------------------------------------------------------
RESULTS=()
FAILED=0
check() {  # check NAME SECONDS COMMAND...: retry COMMAND every second for up to SECONDS
  local name=$1 seconds=$2 t0=$SECONDS; shift 2
  while :; do
    if "$@" >"$LOGS/check.out" 2>&1; then
      RESULTS+=("PASS  $name ($((SECONDS - t0))s)"); say "PASS  $name"; return 0
    fi
    ((SECONDS - t0 >= seconds)) && break
    sleep 1
  done
  RESULTS+=("FAIL  $name (gave up after ${seconds}s: $(tail -c 300 "$LOGS/check.out" | tr '\n' ' '))")
  say "FAIL  $name"
  FAILED=$((FAILED + 1))
  return 1
}
containers() {  # the names of this project's aygolog containers (`containers -a`: also stopped)
  "$ENGINE" ps "$@" --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Image}}' \
    | awk -v image="$IMAGE" '$2 == image || "localhost/"$2 == image {print $1}' | sort
}
http_200() { [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$1") == 200 ]]; }
three_healthy() {
  curl -fsS --max-time 5 "$LB/api/registration/services" | python3 -c '
import json, sys
services = json.load(sys.stdin)
healthy = sorted(s["name"] for s in services if s["status"] == "healthy")
print(len(healthy), "healthy:", ", ".join(healthy))
sys.exit(0 if len(healthy) >= 3 else 1)'
}
MESSAGE=smoke-$RANDOM$RANDOM
log_round_trip() {
  [[ -s $LOGS/posted ]] || curl -fsS --max-time 5 -X POST "$LB/api/log" \
    -H 'Content-Type: application/json' -d "{\"name\": \"$MESSAGE\"}" >"$LOGS/posted" || return 1
  curl -fsS --max-time 5 "$LB/api/log" | grep -q "\"$MESSAGE\""
}
healthchecks() {  # the image's HEALTHCHECK, run now in every aygolog container
  local name good=() bad=()
  for name in $(containers -a); do
    if [[ $ENGINE == podman ]]; then
      podman healthcheck run "$name" >/dev/null 2>&1 && good+=("$name") || bad+=("$name")
    else
      [[ $(docker inspect --format '{{.State.Health.Status}}' "$name") == healthy ]] \
        && good+=("$name") || bad+=("$name")
    fi
  done
  echo "healthy: ${good[*]:-none}; unhealthy or not running: ${bad[*]:-none}"
  ((${#good[@]} == 5 && ${#bad[@]} == 0))
}
non_root() {  # the running ones (a stopped container has no process to ask)
  local name uid n=0
  for name in $(containers); do
    uid=$("$ENGINE" exec "$name" id -u) || return 1
    [[ $uid == 10001 ]] || { echo "$name runs as uid $uid"; return 1; }
    n=$((n + 1))
  done
  echo "$n running containers checked"
  ((n > 0))
}
rm -f "$LOGS/posted"
check "LB GET /health answers 200" 60 http_200 "$LB/health"
check "GET /api/registration/services: 3 instances healthy" 60 three_healthy \
  && say "      $(cat "$LOGS/check.out")"
check "POST /api/log through the LB, then GET /api/log returns it" 30 log_round_trip
check "the web page answers GET / with 200" 60 http_200 "$UI/"
check "HEALTHCHECK passes in lb, api-1..3, ui" 30 healthchecks
check "every running aygolog container runs as uid 10001" 10 non_root \
  && say "      $(cat "$LOGS/check.out")"

if ((FAILED)); then
  say "the containers, and the last lines of each one's log:"
  "$ENGINE" ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '      {{.Names}}: {{.Status}}'
  for name in $("$ENGINE" ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
    echo "      --- $name"
    "$ENGINE" logs --tail 200 "$name" 2>&1 | grep -v -e 'systemd connection' -e 'heartbeat "HTTP/1.1 200' \
      | grep . | uniq | tail -4 | cut -c1-200 | sed 's/^/      /'
  done
fi
take_down
echo
echo "== container smoke: ${#RESULTS[@]} checks, $FAILED failed, $((SECONDS - START))s in all"
printf '%s\n' "${RESULTS[@]}"
if ((FAILED)); then echo "RESULT: FAIL"; exit 1; fi
echo "RESULT: PASS"
