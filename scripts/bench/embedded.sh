#!/usr/bin/env bash
# Embedded mode end to end (docs/benchmarks.md, issue 4): `sluice serve` with no services on a
# fresh data directory, `sluice bench --verify` at a target rate, serve's RSS sampled.
# Usage: scripts/bench/embedded.sh RATE [DURATION] [extra serve flags...]
# B=BINARY runs another build (serve and bench); BENCH=BINARY another build's load generator.
# VERIFY_TIMEOUT (default 600s): how long --verify waits for every acked event; counting tens of
# millions of events beside serve takes minutes (the answer is the first count to find them all,
# or the first one begun after the deadline).
# Keeps the memory samples (every 0.5 s, MB: RSS total, anonymous, file-backed; the allocator's
# heap in use and resident pages, from /metrics) in /tmp/embedded-rss
# and serve's log in /tmp/embedded-serve.log; STOP_WAIT=SECONDS waits that long after stopping
# serve before copying its log (for what it prints at exit, e.g. MALLOC_CONF=stats_print:true).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${B:-target/release/sluice}
BENCH=${BENCH:-$B}
RATE=${1:?rate}
DUR=${2:-60s}
shift 2 || shift $#
PORT=18094
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep ${STOP_WAIT:-0}; cp "$DATA"/serve.log /tmp/embedded-serve.log 2>/dev/null; cp "$DATA"/rss /tmp/embedded-rss 2>/dev/null; rm -rf "$DATA"' EXIT
if curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; then
  echo "port $PORT is taken (a serve left from an earlier run?): $(pgrep -fa "serve --listen 127.0.0.1:$PORT" || true)"
  exit 1
fi
$B serve --listen 127.0.0.1:$PORT --data-dir "$DATA/d" "$@" >"$DATA/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 200); do
  kill -0 $SERVE 2>/dev/null || { echo "serve exited:"; cat "$DATA/serve.log"; exit 1; }
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.1
done
KEY=$(grep -oE 'write key[^A-Za-z0-9]*[A-Za-z0-9_]+' "$DATA/serve.log" | head -1 | grep -oE '[A-Za-z0-9_]+$')
[ -n "$KEY" ] || { echo "no write key in serve's output:"; cat "$DATA/serve.log"; exit 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }  # utime+stime, clock ticks
TCK=$(getconf CLK_TCK)
cpu0=$(cpu $SERVE)
( while kill -0 $SERVE 2>/dev/null; do
    { awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%d ", $2/1024}' /proc/$SERVE/status
      curl -s "http://127.0.0.1:$PORT/metrics" |
        awk '/^sluice_memory_(allocated|resident)_bytes / {m[$1] = int($2 / 1048576)}
          END {printf "%s %s", m["sluice_memory_allocated_bytes"], m["sluice_memory_resident_bytes"]}'
      echo; } 2>/dev/null
    sleep 0.5
  done ) > "$DATA/rss" &
/usr/bin/time -f "bench CPU: %U s user + %S s system" -o "$DATA/bench.time" \
  $BENCH bench --url "http://127.0.0.1:$PORT" --write-key "$KEY" --rate "$RATE" --batch-size 100 \
  --concurrency 50 --duration "$DUR" --verify --verify-timeout "${VERIFY_TIMEOUT:-600s}" --store "embedded:$DATA/d" | tee "$DATA/bench.json"
cpu1=$(cpu $SERVE)
landed=$(grep -oE '"landed": [0-9]+' "$DATA/bench.json" | grep -oE '[0-9]+$')
cat "$DATA/bench.time"
echo "serve CPU: $(( (cpu1 - cpu0) / TCK )) s, $(( (cpu1 - cpu0) * 1000000 / TCK / (landed > 0 ? landed : 1) )) µs per landed event"
grep -E "^(Rss|Anonymous|AnonHugePages|Shared_Clean|Private_Clean)" /proc/$SERVE/smaps_rollup | tr -s ' ' | paste -sd' '
echo "serve RSS peak: $(sort -n "$DATA/rss" | tail -1 | cut -d' ' -f1) MB, last: $(tail -1 "$DATA/rss" | cut -d' ' -f1) MB (anon peak $(sort -n -k2 "$DATA/rss" | tail -1 | cut -d' ' -f2) MB, file peak $(sort -n -k3 "$DATA/rss" | tail -1 | cut -d' ' -f3) MB)"
echo "heap (allocated) peak: $(sort -n -k4 "$DATA/rss" | tail -1 | cut -d' ' -f4) MB, mean $(awk 'NF >= 4 {s += $4; n++} END {printf "%d", n ? s / n : 0}' "$DATA/rss") MB; RSS mean $(awk 'NF >= 4 {s += $1; n++} END {printf "%d", n ? s / n : 0}' "$DATA/rss") MB"
