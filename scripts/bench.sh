#!/usr/bin/env bash
# Side-by-side benchmark of our `signaling` and Debian's Go server
# (package nextcloud-spreed-signaling), driven by our `client`.
#
#   scripts/bench.sh [ROUNDS] [OUTDIR]
#
# Each scenario runs ROUNDS times (default 3) against each server, the server
# pinned to CPU 0 and the client to CPU 1, and prints the medians and the
# ratio ours/Go as a Markdown table. Raw JSON reports go to OUTDIR
# (default target/bench). Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${2:-target/bench}
GO=${GO_SIGNALING_SERVER:-/usr/bin/nextcloud-spreed-signaling-server}
PORT=${BENCH_PORT:-28080}
mkdir -p "$OUT"
[ -x "$GO" ] || { echo "missing $GO (apt-get install nextcloud-spreed-signaling)"; exit 1; }
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

start_server() { # $1 = ours|go
  if [ "$1" = ours ]; then
    taskset -c 0 "$OURS" --config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 &
  else
    taskset -c 0 "$GO" --config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 &
  fi
  SPID=$!
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/api/v1/welcome" >/dev/null && return 0
    sleep 0.1
  done
  echo "server $1 did not start"; cat "$OUT/server-$1.log"; exit 1
}
stop_server() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
trap stop_server EXIT

run() { # $1 = server, $2 = name, rest = client args
  local server=$1 name=$2; shift 2
  for r in $(seq "$ROUNDS"); do
    start_server "$server"
    taskset -c 1 "$CLIENT" "$@" -addr "127.0.0.1:$PORT" -secret bench-secret -config "$OUT/server.conf" \
      -server-pid "$SPID" -json -no-progress >"$OUT/$name-$server-$r.json" 2>"$OUT/$name-$server-$r.log" || true
    stop_server
  done
}

for server in ours go; do
  run $server flood flood -maxClients 100 -duration 5
  run $server room room -maxClients 200 -room-size 10 -rate 4000 -duration 5
  run $server roomhigh room -maxClients 200 -room-size 10 -rate 8000 -duration 5
  run $server connect connect -maxClients 2000
  run $server idle idle -maxClients 19000 -duration 3 -concurrency 200
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def val(name, server, path):
    vals = []
    for r in range(1, rounds + 1):
        try:
            d = json.load(open(f"{out}/{name}-{server}-{r}.json"))
            for p in path.split("."):
                d = d[p]
            vals.append(float(d))
        except Exception:
            pass
    return statistics.median(vals) if vals else float("nan")
rows = [
    ("flood: msgs per server CPU-s", "flood", "server.delivered_per_cpu_s", "{:,.0f}"),
    ("flood: p99 latency ms", "flood", "messages.latency.p99_ms", "{:.1f}"),
    ("flood: lost", "flood", "messages.lost", "{:.0f}"),
    ("room K=10 @4k msg/s: deliveries per server CPU-s", "room", "server.delivered_per_cpu_s", "{:,.0f}"),
    ("room K=10 @4k msg/s: p99 ms", "room", "messages.latency.p99_ms", "{:.1f}"),
    ("room K=10 @8k msg/s: deliveries per server CPU-s", "roomhigh", "server.delivered_per_cpu_s", "{:,.0f}"),
    ("room K=10 @8k msg/s: p99 ms", "roomhigh", "messages.latency.p99_ms", "{:.1f}"),
    ("room K=10 @8k msg/s: lost", "roomhigh", "messages.lost", "{:.0f}"),
    ("connect: server CPU ms per hello", "connect", "setup.server_cpu_ms_per_hello", "{:.3f}"),
    ("idle 19k: RSS KiB per session", "idle", "idle.rss_kib_per_session", "{:.1f}"),
]
print(f"| metric (median of {rounds}) | ours | Go 0.4.1 | ours/Go |")
print("|---|---:|---:|---:|")
for label, name, path, fmt in rows:
    a, b = val(name, "ours", path), val(name, "go", path)
    ratio = f"{a / b:.2f}" if b and b == b and a == a and b != 0 else "-"
    print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
PY
