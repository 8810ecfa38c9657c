#!/usr/bin/env bash
# Messages through a cluster: two of our `signaling` servers joined by a real
# nats-server, against one server (in-process bus, and with NATS configured),
# driven by our `client`.
#
#   scripts/bench-cluster.sh [ROUNDS] [OUTDIR]
#
# The servers and nats-server share CPU 0, the client runs on CPU 1, so every
# setup gets the same single core; loopback only. For each setup and
# scenario the median of ROUNDS runs (default 3) of the client's delivered
# messages per second and of the deliveries per CPU-second of all server
# processes together (signaling servers plus nats-server) is printed as a
# Markdown table. Raw JSON reports go to OUTDIR (default target/bench-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${2:-target/bench-cluster}
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
PA=${BENCH_PORT:-28081}
PB=$((PA + 1))
PN=$((PA + 2))
mkdir -p "$OUT"
[ -x "$NATS" ] || { echo "missing nats-server (apt-get install nats-server)"; exit 1; }
cargo build --release -q -p signaling -p client
TARGET=${CARGO_TARGET_DIR:-target}
OURS=$TARGET/release/signaling
CLIENT=$TARGET/release/client
TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)"

conf() { # $1 = port, $2 = nats url
  cat > "$OUT/server-$1.conf" <<CONF
[http]
listen = 127.0.0.1:$1
[sessions]
hashkey = bench-hash-key-0123456789abcdef
blockkey = bench-block-0123
[backend]
allowall = true
secret = bench-secret
timeout = 10
[nats]
url = $2
[app]
loglevel = warn
CONF
}

PIDS=()
start() { # $1 = name, rest = command
  local name=$1; shift
  taskset -c 0 "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  [ "$name" = a ] && APID=$!
  return 0
}
wait_http() {
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$1/api/v1/welcome" >/dev/null && return 0
    sleep 0.1
  done
  echo "server on $1 did not start"; exit 1
}
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
cpu_ticks() { # sum of utime+stime of the running server processes
  local sum=0
  for p in "${PIDS[@]}"; do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $sum
}

setup() { # $1 = one|one-nats|two
  case $1 in
    one) conf "$PA" ":loopback:"; start a "$OURS" --config "$OUT/server-$PA.conf"; wait_http "$PA"; ADDRS=127.0.0.1:$PA ;;
    one-nats)
      start nats "$NATS" -a 127.0.0.1 -p "$PN"; sleep 0.5
      conf "$PA" "nats://127.0.0.1:$PN"; start a "$OURS" --config "$OUT/server-$PA.conf"; wait_http "$PA"
      ADDRS=127.0.0.1:$PA ;;
    two)
      start nats "$NATS" -a 127.0.0.1 -p "$PN"; sleep 0.5
      conf "$PA" "nats://127.0.0.1:$PN"; conf "$PB" "nats://127.0.0.1:$PN"
      start a "$OURS" --config "$OUT/server-$PA.conf"; start b "$OURS" --config "$OUT/server-$PB.conf"
      wait_http "$PA"; wait_http "$PB"
      ADDRS=127.0.0.1:$PA,127.0.0.1:$PB ;;
  esac
  sleep 1 # NATS connections up
}

run() { # $1 = setup, $2 = name, rest = client args
  local s=$1 name=$2; shift 2
  for r in $(seq "$ROUNDS"); do
    setup "$s"
    local before; before=$(cpu_ticks)
    local pid=()
    [ "$name" = idle ] && pid=(-server-pid "$APID")
    taskset -c 1 "$CLIENT" "$@" "${pid[@]}" -addr "$ADDRS" -secret bench-secret -config "$OUT/server-$PA.conf" \
      -json -no-progress >"$OUT/$name-$s-$r.json" 2>"$OUT/$name-$s-$r.log" || true
    local after; after=$(cpu_ticks)
    echo "{\"cpu_s\": $(awk "BEGIN {print ($after - $before) / $TCK}")}" >"$OUT/$name-$s-$r.cpu.json"
    stop_all
  done
}

for s in one one-nats two; do
  run "$s" flood flood -maxClients 100 -duration 5
  run "$s" room room -maxClients 200 -room-size 10 -rate 2000 -duration 5
done
# Memory per idle session of server A (the NATS bus adds subscriptions).
for s in one one-nats; do
  run "$s" idle idle -maxClients 5000 -duration 3 -concurrency 200
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(name, setup, f):
    vals = []
    for r in range(1, rounds + 1):
        try:
            rep = json.load(open(f"{out}/{name}-{setup}-{r}.json"))
            cpu = json.load(open(f"{out}/{name}-{setup}-{r}.cpu.json"))["cpu_s"]
            vals.append(f(rep, cpu))
        except Exception:
            pass
    return statistics.median(vals) if vals else float("nan")
setups = [("one", "one server, in-process bus"), ("one-nats", "one server, NATS"), ("two", "two servers, NATS")]
print(f"| scenario (median of {rounds}) | " + " | ".join(l for _, l in setups) + " |")
print("|---|" + "---:|" * len(setups))
for name, label in [("flood", "flood, 100 clients"), ("room", "room K=10 @2k msg/s")]:
    rate = [med(name, s, lambda r, c: r["messages"]["delivered_per_s"]) for s, _ in setups]
    per_cpu = [med(name, s, lambda r, c: r["messages"]["delivered"] / c if c else float("nan")) for s, _ in setups]
    lost = [med(name, s, lambda r, c: r["messages"]["lost"]) for s, _ in setups]
    p99 = [med(name, s, lambda r, c: r["messages"]["latency"]["p99_ms"]) for s, _ in setups]
    print(f"| {label}: delivered/s | " + " | ".join(f"{v:,.0f}" for v in rate) + " |")
    print(f"| {label}: deliveries per server CPU-s | " + " | ".join(f"{v:,.0f}" for v in per_cpu) + " |")
    print(f"| {label}: p99 latency ms | " + " | ".join(f"{v:.1f}" for v in p99) + " |")
    print(f"| {label}: lost | " + " | ".join(f"{v:.0f}" for v in lost) + " |")
rss = [med("idle", s, lambda r, c: r["idle"]["rss_kib_per_session"]) for s, _ in setups[:2]]
print("| idle, 5,000 sessions: RSS KiB per session (server A) | " + " | ".join(f"{v:.1f}" for v in rss) + " | |")
PY
