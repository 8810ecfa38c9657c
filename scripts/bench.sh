#!/usr/bin/env bash
# Side-by-side benchmark of our `signaling` against upstream's Go server:
# Debian 12's 0.4.1 (package nextcloud-spreed-signaling) and current upstream
# (2.0.2 from Debian sid, its package unpacked with dpkg-deb -x into
# /opt/go-signaling), driven by our `client`.
#
#   scripts/bench.sh [ROUNDS] [OUTDIR]
#
# Every run gets a fresh server pinned to CPU 0; the client runs on CPU 1.
# The rounds interleave the servers (round 1 of each, then round 2, ...), so
# a change in the machine's load touches all of them alike. Printed: the
# unbatched table first (every client message in its own write, as Talk
# clients send), then the batched one (`-batch`: a client's due messages in
# one write), each with the median of ROUNDS (default 3) and the raw rounds.
# Raw JSON reports go to OUTDIR (default target/bench). Loopback only.
#
# Environment: SKIP_BUILD=1 uses the binaries in target/release as they are;
# GO_SIGNALING_SERVER / GO2_SIGNALING_SERVER point at the Go servers (a
# server that is not installed is skipped); SCENARIOS="room1k flood ..."
# runs a subset; DURATION (default 5) is the seconds of each measured phase.
# A/B runs of two builds of ours: OURS_BASE=/path/to/signaling adds that
# binary as server "base" (interleaved with the others like any server);
# BENCH_SERVERS="ours base" runs only the servers named.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${2:-target/bench}
GO1=${GO_SIGNALING_SERVER:-/usr/bin/nextcloud-spreed-signaling-server}
GO2=${GO2_SIGNALING_SERVER:-/opt/go-signaling/nextcloud-spreed-signaling-server}
PORT=${BENCH_PORT:-28080}
DUR=${DURATION:-5}
SCENARIOS=${SCENARIOS:-room1k room4k flood connect idle room4k-batch flood-batch}
mkdir -p "$OUT"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p signaling -p client
TARGET=${CARGO_TARGET_DIR:-target}
OURS=$TARGET/release/signaling
CLIENT=$TARGET/release/client
ulimit -n "$(ulimit -Hn)"

SERVERS=(ours)
if [ -n "${OURS_BASE:-}" ]; then SERVERS+=(base); fi
if [ -x "$GO1" ]; then SERVERS+=(go041); else echo "skipping Go 0.4.1: no $GO1" >&2; fi
if [ -x "$GO2" ]; then SERVERS+=(go202); else echo "skipping Go 2.0.2: no $GO2 (put Debian sid's nextcloud-spreed-signaling 2.0.2 server binary there, or set GO2_SIGNALING_SERVER)" >&2; fi
if [ -n "${BENCH_SERVERS:-}" ]; then
  wanted=()
  for s in "${SERVERS[@]}"; do
    case " $BENCH_SERVERS " in *" $s "*) wanted+=("$s") ;; esac
  done
  SERVERS=("${wanted[@]}")
fi

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

SPID=
start_server() { # $1 = ours|go041|go202
  case $1 in
    ours) taskset -c 0 "$OURS" --config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 & ;;
    base) taskset -c 0 "$OURS_BASE" --config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 & ;;
    go041) taskset -c 0 "$GO1" -config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 & ;;
    go202) taskset -c 0 "$GO2" -config "$OUT/server.conf" >"$OUT/server-$1.log" 2>&1 & ;;
  esac
  SPID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/api/v1/welcome" >/dev/null && return 0
    sleep 0.1
  done
  echo "server $1 did not start"; cat "$OUT/server-$1.log"; exit 1
}
stop_server() {
  [ -n "$SPID" ] || return 0
  kill "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=
}
trap stop_server EXIT

args_of() { # $1 = scenario name -> client arguments
  case $1 in
    room1k) echo room -maxClients 1000 -room-size 10 -rate 1000 -duration "$DUR" ;;
    room4k) echo room -maxClients 1000 -room-size 10 -rate 4000 -duration "$DUR" ;;
    flood) echo flood -maxClients 100 -window 16 -duration "$DUR" ;;
    connect) echo connect -maxClients 2000 ;;
    idle) echo idle -maxClients 5000 -duration 3 -concurrency 200 ;;
    room4k-batch) echo room -batch -maxClients 200 -room-size 10 -rate 4000 -duration "$DUR" ;;
    flood-batch) echo flood -batch -maxClients 100 -window 32 -duration "$DUR" ;;
    *) echo "unknown scenario $1" >&2; exit 64 ;;
  esac
}

for r in $(seq "$ROUNDS"); do
  for name in $SCENARIOS; do
    read -r -a a <<<"$(args_of "$name")"
    for server in "${SERVERS[@]}"; do
      start_server "$server"
      # Bounded: a hung run must not stall the whole benchmark.
      timeout 300 taskset -c 1 "$CLIENT" "${a[@]}" -addr "127.0.0.1:$PORT" -secret bench-secret \
        -config "$OUT/server.conf" -server-pid "$SPID" -json -no-progress \
        >"$OUT/$name-$server-$r.json" 2>"$OUT/$name-$server-$r.log" || true
      stop_server
    done
  done
done

python3 - "$OUT" "$ROUNDS" "${SERVERS[*]}" "$SCENARIOS" <<'PY'
import statistics, sys
sys.path.insert(0, "scripts")
from bench_results import Results
out, rounds, servers, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
label = {"ours": "ours", "base": "ours (base)", "go041": "Go 0.4.1", "go202": "Go 2.0.2"}
R = Results(out, rounds)
vals, bad, med = R.vals, R.bad, R.med
PER_CPU = "server.delivered_per_cpu_s"
P99 = "messages.latency.p99_ms"
unbatched = [
    ("room1k", "room: 1,000 clients in rooms of 10, 1,000 msgs/s — deliveries per server CPU-s", PER_CPU, "{:,.0f}", ">= 3x"),
    ("room1k", "room @1,000 msgs/s — p99 latency ms", P99, "{:.1f}", "a few ms"),
    ("room4k", "room @4,000 msgs/s (36k deliveries/s) — deliveries per server CPU-s", PER_CPU, "{:,.0f}", ">= 3x"),
    ("room4k", "room @4,000 msgs/s — p99 latency ms", P99, "{:.1f}", ""),
    ("flood", "flood: 100 clients, <= 16 in flight each — msgs per server CPU-s", PER_CPU, "{:,.0f}", ">= 3x"),
    ("flood", "flood — p99 latency ms", P99, "{:.1f}", ""),
    ("connect", "connect: server CPU ms per hello (backend auth)", "setup.server_cpu_ms_per_hello", "{:.3f}", "<= 0.5x"),
    ("idle", "idle: 5,000 sessions, RSS KiB per session", "idle.rss_kib_per_session", "{:.1f}", "<= 8 KiB"),
]
batched = [
    ("flood-batch", "flood, batched, window 32 — msgs per server CPU-s", PER_CPU, "{:,.0f}", ""),
    ("flood-batch", "flood, batched — p99 latency ms", P99, "{:.1f}", ""),
    ("room4k-batch", "room, batched, 200 clients @4,000 msgs/s — deliveries per server CPU-s", PER_CPU, "{:,.0f}", ""),
    ("room4k-batch", "room, batched — p99 latency ms", P99, "{:.1f}", ""),
]
def table(title, rows):
    rows = [r for r in rows if r[0] in scenarios]
    if not rows:
        return
    print(f"\n{title} (median of {rounds} rounds)\n")
    cols = [label[s] for s in servers]
    ratio = "go202" in servers
    ab = "base" in servers
    print("| metric | " + " | ".join(cols) + (" | ours / Go 2.0.2" if ratio else "") + (" | ours / base" if ab else "") + " | target |")
    print("|---|" + "---:|" * len(cols) + ("---:|" if ratio else "") + ("---:|" if ab else "") + "---|")
    for name, text, path, fmt, target in rows:
        med = {s: (statistics.median(v) if (v := vals(name, s, path)) else float("nan")) for s in servers}
        cells = [fmt.format(med[s]) for s in servers]
        r = ""
        if ratio:
            a, b = med["ours"], med["go202"]
            r = " | " + (f"{a / b:.2f}x" if a == a and b == b and b else "-")
        if ab:
            a, b = med["ours"], med["base"]
            r += " | " + (f"{a / b:.2f}x" if a == a and b == b and b else "-")
        print(f"| {text} | " + " | ".join(cells) + r + f" | {target} |")
    print("\nRaw rounds:\n")
    for name, text, path, fmt, _ in rows:
        for s in servers:
            v = vals(name, s, path)
            extra = f"; lost+dup+misdelivered+unknown {bad(name, s)}" if path == PER_CPU else ""
            print(f"- {name} {label[s]} {path.split('.')[-1]}: " + ", ".join(fmt.format(x) for x in v) + extra)
table("Unbatched: every client message in its own write", unbatched)
table("Batched (-batch): a client's due messages share one write", batched)
PY
