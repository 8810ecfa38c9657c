#!/usr/bin/env bash
# Run every test of the workspace. Installs the real peers the tests talk to
# (Debian packages) when they are missing, after saying which (and asking on
# a terminal), without starting or enabling their services; then runs lints
# and tests.
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
# For the script's own test (crates/signaling/tests/dist_configs.rs): a
# directory standing for / and a stop after the install step.
ROOT="${TEST_SH_ROOT:-}"
missing=()
for pkg in "${!PEERS[@]}"; do
  [ -e "$ROOT${PEERS[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "The tests run these programs themselves; not installed yet (Debian packages):"
  printf '  %s\n' "${missing[@]}"
  echo "They will be installed with apt-get --no-install-recommends. Their services"
  echo "are not started (policy-rc.d) and are disabled again after the install."
  # On a terminal, ask first; CI and SIGNALING_TEST_INSTALL=yes do not.
  if [ -t 0 ] && [ -z "${CI:-}" ] && [ "${SIGNALING_TEST_INSTALL:-}" != yes ]; then
    read -r -p "Install them now? [y/N] " answer
    case "$answer" in
      y | Y | yes) ;;
      *) echo "Not installed; the tests that need them will fail." >&2; exit 1 ;;
    esac
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Debian's hook for "do not start services from package scripts", only if
  # the host has none of its own; removed again on exit.
  policy="$ROOT/usr/sbin/policy-rc.d"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/test.sh: no service starts while it installs test peers\nexit 101\n' |
      $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Package scripts enable the units they ship (nginx, nats-server, etcd,
  # janus, ...): disable those of the packages installed here, nothing else.
  for pkg in "${missing[@]}"; do
    for unit in $(dpkg -L "$pkg" 2>/dev/null | grep -E '^(/usr)?/lib/systemd/system/[^/]+\.(service|socket)$' | xargs -rn1 basename); do
      if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
      elif command -v deb-systemd-helper >/dev/null; then
        $SUDO deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
      fi
      echo "disabled $unit (installed for the tests only)"
    done
  done
fi
[ -z "${TEST_SH_INSTALL_ONLY:-}" ] || exit 0

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
