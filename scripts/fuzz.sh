#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; first
# argument overrides). Needs a nightly toolchain and cargo-fuzz
# (cargo install cargo-fuzz). Corpora stay in fuzz/corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
for t in client_message backend_request proxy_message janus_event config session_id; do
  echo "== $t ($secs s)"
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -3
done
