#!/usr/bin/env bash
# Run every test of the workspace. Installs the real peers the tests talk to
# (Debian packages) when they are missing, then runs lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a file it installs.
declare -A PEERS=(
  [nats-server]=/usr/sbin/nats-server
  [janus]=/usr/bin/janus
  [gcc]=/usr/bin/gcc
  [nextcloud-spreed-signaling]=/usr/bin/nextcloud-spreed-signaling-server
  [openssl]=/usr/bin/openssl
  [curl]=/usr/bin/curl
  [nginx]=/usr/sbin/nginx
  [etcd-server]=/usr/bin/etcd
  [chromium]=/usr/bin/chromium
)
missing=()
for pkg in "${!PEERS[@]}"; do
  [ -e "${PEERS[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
