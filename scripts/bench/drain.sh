#!/usr/bin/env bash
# Warehouse drain of a preloaded Redis backlog, alone and then with the fraud worker beside it
# (docs/benchmarks.md, issues 3 and 6). Needs Redis and PostgreSQL on their default ports and a
# release build. Usage: scripts/bench/drain.sh [PRELOAD_SECONDS] [MODE...]
#   MODE: alone | fraud | fraud-only   (default: alone fraud)
# Prints one line per mode: events, seconds, events/s, peak RSS of each worker.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${B:-target/release/sluice}
SECS=${1:-10}
shift || true
MODES=("${@:-alone}")
[ $# -eq 0 ] && MODES=(alone fraud)
PREFIX=drainbench
LOG="redis://127.0.0.1:6379/0?prefix=$PREFIX"
PGBASE=postgres://postgres@127.0.0.1:5432
PORT=18093
FRAUD_PREFIX=${FRAUD_PREFIX:-}   # e.g. "nice -n 19"
FRAUD_FLAGS=${FRAUD_FLAGS:-}     # extra flags for the fraud worker
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; cp "$WORK"/*.log /tmp/ 2>/dev/null; rm -rf "$WORK"' EXIT

clean_redis() {
  redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli del >/dev/null
}
fresh_db() {
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}
# Sum over shards of (lag + pending) of a group; empty until the group exists.
backlog() {
  local total=0 found=0
  for s in $(redis-cli --scan --pattern "$PREFIX:events:*" | grep -v dead); do
    local info
    info=$(redis-cli --raw XINFO GROUPS "$s" 2>/dev/null | paste - - - - - - - - - - - - | grep -P "^name\t$1\t" || true)
    [ -z "$info" ] && continue
    found=1
    local pending lag
    pending=$(echo "$info" | awk -F'\t' '{for(i=1;i<NF;i++) if($i=="pending") print $(i+1)}')
    lag=$(echo "$info" | awk -F'\t' '{for(i=1;i<NF;i++) if($i=="lag") print $(i+1)}')
    total=$((total + pending + lag))
  done
  [ $found = 1 ] && echo $total || echo -1
}
rss_mb() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }

# 1. Preload: the API writes the log, no worker runs.
clean_redis
fresh_db drainbench_keys
KEY=$($B keys create --source bench --kind write --store "$PGBASE/drainbench_keys" | tail -1)
$B api --listen 127.0.0.1:$PORT --log "$LOG" --store "$PGBASE/drainbench_keys" >"$WORK/api.log" 2>&1 &
API=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
$B bench --url "http://127.0.0.1:$PORT" --write-key "$KEY" --duration "${SECS}s" --batch-size 100 \
  --concurrency 50 > "$WORK/preload.json"
kill $API; wait $API 2>/dev/null || true
EVENTS=$(python3 -c "import json,sys; print(json.load(open('$WORK/preload.json'))['acked'])")
echo "preloaded $EVENTS events"

for mode in "${MODES[@]}"; do
  # Every run starts from the same backlog: drop the groups, fresh warehouse.
  for s in $(redis-cli --scan --pattern "$PREFIX:events:*" | grep -v dead); do
    redis-cli XGROUP DESTROY "$s" warehouse >/dev/null 2>&1 || true
    redis-cli XGROUP DESTROY "$s" fraud >/dev/null 2>&1 || true
  done
  fresh_db drainbench
  $B migrate --store "$PGBASE/drainbench" >/dev/null
  [ -n "${PGSETUP:-}" ] && psql -q -h 127.0.0.1 -U postgres -d drainbench -c "$PGSETUP"
  pids=()
  redis_cpu0=$(redis-cli INFO cpu | awk -F: '/used_cpu_(user|sys):/ {s+=$2} END {print s}')
  start=$(date +%s.%N)
  if [ "$mode" != fraud-only ]; then
    $B worker --processor warehouse --log "$LOG" --trim-keep 24h --store "$PGBASE/drainbench" \
      --consumer w1 >"$WORK/w.log" 2>&1 &
    pids+=($!); watch_group=warehouse
  fi
  if [ "$mode" != alone ]; then
    $FRAUD_PREFIX $B worker --processor fraud --log "$LOG" --trim-keep 24h \
      --store "$PGBASE/drainbench" --consumer f1 $FRAUD_FLAGS >"$WORK/f.log" 2>&1 &
    pids+=($!)
    [ "$mode" = fraud-only ] && watch_group=fraud
  fi
  peak=()
  while :; do
    b=$(backlog $watch_group)
    [ "$b" = 0 ] && break
    [ -n "${VERBOSE:-}" ] && echo "$(date +%T.%N) $b"
    sleep 0.25
  done
  end=$(date +%s.%N)
  cpu=()
  for p in "${pids[@]}"; do
    peak+=("$(rss_mb "$p")MB")
    cpu+=("$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1fs", ($14+$15)/hz}' "/proc/$p/stat")")
    kill "$p"
  done
  redis_cpu=$(redis-cli INFO cpu | awk -F: '/used_cpu_(user|sys):/ {s+=$2} END {print s}')
  wait "${pids[@]}" 2>/dev/null || true
  python3 -c "s=$end-$start; print(f'$mode: {$EVENTS} events in {s:.1f} s = {$EVENTS/s:,.0f} events/s; peak RSS ${peak[*]}; CPU ${cpu[*]}; Redis CPU {$redis_cpu-$redis_cpu0:.1f}s')"
done
clean_redis
