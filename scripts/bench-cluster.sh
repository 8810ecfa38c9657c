#!/usr/bin/env bash
# Messages through a cluster: two signaling servers joined by a real
# nats-server against one server, for ours and for current upstream (Go
# 2.0.2, Debian sid's package unpacked into /opt/go-signaling), driven by our `client`
# with its clients spread round robin over the servers (half the messages
# cross between them).
#
#   scripts/bench-cluster.sh [ROUNDS] [OUTDIR]
#
# The servers and nats-server share CPU 0, the client runs on CPU 1, so every
# setup gets the same single core; loopback only; a fresh set of processes
# per run, rounds interleaved. The client reads the CPU time of all server
# processes (signaling servers plus nats-server) over the measured phase, so
# "per CPU-s" counts them all. Every message is its own write (unbatched).
# Printed: medians of ROUNDS (default 3) and the raw rounds as Markdown.
# Raw JSON reports go to OUTDIR (default target/bench-cluster).
#
# Environment: SKIP_BUILD=1, GO2_SIGNALING_SERVER (skipped when missing),
# DURATION (default 5), NATS_SETTLE (seconds the NATS setups wait before the
# client starts, default 6: our nodes batch only after a presence interval
# and a second), SETUPS_ONLY (space separated subset of "one one-nats two
# go2-one go2-two"; default all), CARGO_TARGET_DIR (whose release/ binaries
# are measured). Go 0.4.1 is left out: its cluster misdelivers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${2:-target/bench-cluster}
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
GO2=${GO2_SIGNALING_SERVER:-/opt/go-signaling/nextcloud-spreed-signaling-server}
DUR=${DURATION:-5}
PA=${BENCH_PORT:-28081}
PB=$((PA + 1))
PN=$((PA + 2))
mkdir -p "$OUT"
[ -x "$NATS" ] || { echo "missing nats-server (apt-get install nats-server)"; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p signaling -p client
TARGET=${CARGO_TARGET_DIR:-target}
OURS=$TARGET/release/signaling
CLIENT=$TARGET/release/client
ulimit -n "$(ulimit -Hn)"

SETUPS=(one one-nats two)
if [ -x "$GO2" ]; then SETUPS+=(go2-one go2-two); else echo "skipping Go 2.0.2: no $GO2" >&2; fi
if [ -n "${SETUPS_ONLY:-}" ]; then read -r -a SETUPS <<<"$SETUPS_ONLY"; fi

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
  for _ in $(seq 100); do
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

server() { # $1 = ours|go, $2 = port
  if [ "$1" = ours ]; then echo "$OURS --config $OUT/server-$2.conf"; else echo "$GO2 -config $OUT/server-$2.conf"; fi
}

setup() { # $1 = setup name
  local impl=ours s=$1
  case $s in go2-*) impl=go; s=${s#go2-} ;; esac
  case $s in
    one) conf "$PA" ":loopback:"; start a $(server $impl "$PA"); wait_http "$PA"; ADDRS=127.0.0.1:$PA ;;
    one-nats)
      start nats "$NATS" -a 127.0.0.1 -p "$PN"; sleep 0.5
      conf "$PA" "nats://127.0.0.1:$PN"; start a $(server $impl "$PA"); wait_http "$PA"
      ADDRS=127.0.0.1:$PA ;;
    two)
      start nats "$NATS" -a 127.0.0.1 -p "$PN"; sleep 0.5
      conf "$PA" "nats://127.0.0.1:$PN"; conf "$PB" "nats://127.0.0.1:$PN"
      start a $(server $impl "$PA"); start b $(server $impl "$PB")
      wait_http "$PA"; wait_http "$PB"
      ADDRS=127.0.0.1:$PA,127.0.0.1:$PB ;;
  esac
  sleep 1 # NATS connections up
  # Steady state: our nodes start batching cross-server messages (one NATS
  # message for all queued at the same moment) once they have heard every
  # other node for a presence interval and a second (5 s + 1 s), as in any
  # cluster that has run for a while. Go waits the same.
  case $s in one) ;; *) sleep "${NATS_SETTLE:-6}" ;; esac
}

run() { # $1 = setup, $2 = name, rest = client args
  local s=$1 name=$2 r=$3; shift 3
  setup "$s"
  local pids; pids=$(IFS=,; echo "${PIDS[*]}")
  # Idle memory is server A's alone; everything else counts all processes.
  [ "$name" = idle ] && pids=$APID
  timeout 300 taskset -c 1 "$CLIENT" "$@" -server-pid "$pids" -addr "$ADDRS" -secret bench-secret \
    -config "$OUT/server-$PA.conf" -json -no-progress >"$OUT/$name-$s-$r.json" 2>"$OUT/$name-$s-$r.log" || true
  stop_all
}

for r in $(seq "$ROUNDS"); do
  for s in "${SETUPS[@]}"; do
    run "$s" flood "$r" flood -maxClients 100 -window 16 -duration "$DUR"
    run "$s" room "$r" room -maxClients 1000 -room-size 10 -rate 1000 -duration "$DUR"
  done
  # Memory per idle session of server A (the NATS bus adds subscriptions).
  for s in one one-nats; do
    [[ " ${SETUPS[*]} " == *" $s "* ]] || continue
    run "$s" idle "$r" idle -maxClients 5000 -duration 3 -concurrency 200
  done
done

python3 - "$OUT" "$ROUNDS" "${SETUPS[*]}" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_results import Results
out, rounds, setups = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
label = {"one": "ours, one server", "one-nats": "ours, one server + NATS", "two": "ours, two servers + NATS",
         "go2-one": "Go 2.0.2, one server", "go2-two": "Go 2.0.2, two servers + NATS"}
R = Results(out, rounds)
vals, bad, med = R.vals, R.bad, R.med
rows = [
    ("flood", "flood, 100 clients, <= 16 in flight: msgs per CPU-s (all processes)", "server.delivered_per_cpu_s", "{:,.0f}"),
    ("flood", "flood: p99 latency ms", "messages.latency.p99_ms", "{:.1f}"),
    ("room", "room, 1,000 clients in rooms of 10 @1,000 msgs/s: deliveries per CPU-s (all processes)", "server.delivered_per_cpu_s", "{:,.0f}"),
    ("room", "room: p99 latency ms", "messages.latency.p99_ms", "{:.1f}"),
    ("idle", "idle, 5,000 sessions: RSS KiB per session (server A)", "idle.rss_kib_per_session", "{:.1f}"),
]
print(f"| metric (median of {rounds}) | " + " | ".join(label[s] for s in setups) + " |")
print("|---|" + "---:|" * len(setups))
for name, text, path, fmt in rows:
    cells = []
    for s in setups:
        v = med(name, s, path)
        cells.append(fmt.format(v) if v == v else "-")
    print(f"| {text} | " + " | ".join(cells) + " |")
for name, what in [("flood", "flood"), ("room", "room")]:
    one, two = med(name, "one", "server.delivered_per_cpu_s"), med(name, "two", "server.delivered_per_cpu_s")
    if one == one and two == two and one:
        print(f"\n{what}: two servers / one server (ours, per CPU-s of all processes): {two / one:.2f}x", end="")
    if "go2-two" in setups:
        g = med(name, "go2-two", "server.delivered_per_cpu_s")
        if g == g and g:
            print(f"; ours / Go 2.0.2 with two servers: {two / g:.2f}x", end="")
print("\n\nRaw rounds:\n")
for name, text, path, fmt in rows:
    for s in setups:
        v = vals(name, s, path)
        if not v:
            continue
        extra = f"; lost+dup+misdelivered+unknown {bad(name, s)}" if name != "idle" and "per_cpu" in path else ""
        print(f"- {name} {label[s]} {path.split('.')[-1]}: " + ", ".join(fmt.format(x) for x in v) + extra)
PY
