#!/usr/bin/env bash
# Memory after a spike of connections: does the server give memory back?
#
#   scripts/bench-memory.sh [CLIENTS] [OUTDIR]
#
# For our `signaling` and Debian's Go server (and Go 2.0.2 when
# GO2_SIGNALING_SERVER names its binary): start the server, read its RSS
# (baseline), hold CLIENTS authenticated sessions with `client idle`
# (default 10000) while sampling the RSS every 0.2 s (peak), let the clients
# leave, wait until the server has no session left and read the RSS again
# after 10, 30 and 60 s. Loopback only; the server on CPU 0, the client on
# CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-10000}
OUT=${2:-target/bench-memory}
PORT=${BENCH_PORT:-28090}
GO=${GO_SIGNALING_SERVER:-/usr/bin/nextcloud-spreed-signaling-server}
GO2=${GO2_SIGNALING_SERVER:-}
mkdir -p "$OUT"
rm -f "$OUT/parts.txt"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p signaling -p client
TARGET=${CARGO_TARGET_DIR:-target}
OURS=$TARGET/release/signaling
CLIENT=$TARGET/release/client
ulimit -n "$(ulimit -Hn)"

cat > "$OUT/server.conf" <<CONF
[http]
listen = 127.0.0.1:$PORT
[sessions]
hashkey = bench-hash-key-0123456789abcdef
blockkey = bench-block-0123
[backend]
allowall = true
secret = bench-secret
timeout = 10
[nats]
url = :loopback:
[app]
loglevel = warn
CONF

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Anonymous and file-backed parts (code pages first touched during the
# spike stay in the page cache and count as file-backed RSS).
parts() { awk '/^RssAnon|^RssFile/ {printf "%s %d MiB ", $1, $2 / 1024}' "/proc/$1/status"; }
sessions() {
  curl -sf "http://127.0.0.1:$PORT/api/v1/stats" | sed -n 's/.*"sessions": *\([0-9]*\).*/\1/p'
}

measure() { # $1 = name, $2 = binary
  local name=$1 bin=$2
  taskset -c 0 "$bin" --config "$OUT/server.conf" >"$OUT/server-$name.log" 2>&1 &
  local spid=$!
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/api/v1/welcome" >/dev/null && break
    sleep 0.1
  done
  sleep 2
  local base peak after10 after30 after60
  base=$(rss "$spid")
  peak=$base
  echo "$name baseline: $(parts "$spid")" >>"$OUT/parts.txt"
  (
    while kill -0 "$spid" 2>/dev/null; do rss "$spid" 2>/dev/null || true; sleep 0.2; done
  ) >"$OUT/rss-$name.txt" &
  local sampler=$!
  taskset -c 1 "$CLIENT" idle -addr "127.0.0.1:$PORT" -secret bench-secret \
    -maxClients "$CLIENTS" -duration 5 -no-progress -json >"$OUT/client-$name.json" 2>"$OUT/client-$name.log" || true
  for _ in $(seq 600); do
    [ "$(sessions || echo 1)" = 0 ] && break
    sleep 0.1
  done
  sleep 10; after10=$(rss "$spid")
  sleep 20; after30=$(rss "$spid")
  sleep 30; after60=$(rss "$spid")
  echo "$name +60 s: $(parts "$spid")" >>"$OUT/parts.txt"
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$OUT/rss-$name.txt" | tail -1)
  kill "$spid"; wait "$spid" 2>/dev/null || true
  printf '| %s | %d | %d | %d | %d | %d | %+.0f%% |\n' "$name" \
    $((base / 1024)) $((peak / 1024)) $((after10 / 1024)) $((after30 / 1024)) $((after60 / 1024)) \
    "$(awk "BEGIN { print ($after60 - $base) * 100 / $base }")"
}

echo "RSS in MiB; $CLIENTS sessions held for 5 s, then gone"
echo
echo "| server | baseline | peak | +10 s | +30 s | +60 s | +60 s vs baseline |"
echo "|---|---:|---:|---:|---:|---:|---:|"
measure ours "$OURS"
[ -x "$GO" ] && measure go-0.4.1 "$GO"
[ -n "$GO2" ] && [ -x "$GO2" ] && measure go-2.0.2 "$GO2"
echo
cat "$OUT/parts.txt"
