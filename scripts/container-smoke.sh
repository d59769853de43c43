#!/usr/bin/env bash
# Build the image, run docker-compose.yml with podman-compose, and check the system from the
# host: the LB's /health, 3 Log API instances registered, a log posted through the LB comes back
# from a query, the web page answers. Slow (minutes): .ci/run runs it only with CONTAINER_SMOKE=1.
#
#   bash scripts/container-smoke.sh
#
# Works with Docker too (set COMPOSE="docker compose" and ENGINE=docker). On a machine without
# access to a registry, the Redis image is built locally from Debian's redis-server package.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-podman}
PROJECT=aygolog-smoke
export AYGOLOG_REGISTRATION_TOKEN=${AYGOLOG_REGISTRATION_TOKEN:-smoke-$(date +%s)-$RANDOM}
LB=http://127.0.0.1:${SMOKE_LB_PORT:-18080}
UI=http://127.0.0.1:${SMOKE_UI_PORT:-18000}

if [[ $ENGINE == podman ]]; then
  if ! command -v podman >/dev/null || ! podman image exists localhost/aygolog-base:bookworm; then
    ../shared/tools/oci prepare
  fi
  BUILD=(../shared/tools/oci build --format docker)
  BASE=localhost/aygolog-base:bookworm
else
  BUILD=(docker build)
  BASE=python:3.12-slim
fi
if [[ -z ${COMPOSE:-} ]]; then
  tools=.venv-compose
  [[ -x $tools/bin/podman-compose ]] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q podman-compose; }
  COMPOSE="$tools/bin/podman-compose"
fi

echo "== build the aygolog image"
"${BUILD[@]}" -t aygolog:latest . >/tmp/aygolog-smoke-build.log 2>&1 || { tail -30 /tmp/aygolog-smoke-build.log; exit 1; }
if [[ -z ${REDIS_IMAGE:-} ]]; then
  echo "== build a Redis image from Debian's package (no registry needed)"
  printf 'FROM %s\nUSER root\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null && rm -rf /var/lib/apt/lists/*\nWORKDIR /data\nEXPOSE 6379\n' "$BASE" \
    | "${BUILD[@]}" -t aygolog-smoke-redis:latest -f - . >/tmp/aygolog-smoke-redis.log 2>&1 \
    || { tail -30 /tmp/aygolog-smoke-redis.log; exit 1; }
  export REDIS_IMAGE=localhost/aygolog-smoke-redis:latest
fi

export LB_PUBLISHED_PORT=${LB##*:} UI_PUBLISHED_PORT=${UI##*:}
compose() { $COMPOSE -p "$PROJECT" -f docker-compose.yml "$@"; }
trap 'compose down -v >/dev/null 2>&1 || true' EXIT

echo "== compose up"
compose up -d >/tmp/aygolog-smoke-up.log 2>&1 || { tail -30 /tmp/aygolog-smoke-up.log; exit 1; }

wait_for() {  # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then echo "ok: $what"; return 0; fi
    sleep 0.5
  done
  echo "FAILED: $what"; compose logs --tail 40 2>&1 | tail -80; return 1
}
three_registered() {
  curl -fsS "$LB/api/registration/services" | python3 -c \
    'import json,sys; s=json.load(sys.stdin); sys.exit(0 if sum(i["status"]=="healthy" for i in s)>=3 else 1)'
}
log_round_trip() {
  local message="smoke-$RANDOM$RANDOM"
  curl -fsS -X POST "$LB/api/log" -H 'Content-Type: application/json' -d "{\"name\": \"$message\"}" >/dev/null
  curl -fsS "$LB/api/logs?q=$message" | grep -q "$message"
}

wait_for "LB /health" 60 curl -fsS "$LB/health"
wait_for "3 Log API instances registered and healthy" 60 three_registered
wait_for "a log posted through the LB comes back from a query" 30 log_round_trip
wait_for "the web page answers" 60 curl -fsS "$UI/"
curl -fsS "$LB/api/registration/services" | python3 -m json.tool | head -40
echo "container smoke test passed"
