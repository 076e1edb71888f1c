#!/usr/bin/env bash
# Installs what building and testing paymux needs on a fresh Debian machine with a Rust
# toolchain: cmake (pingora builds zlib-ng with it) and a Python venv with the providers'
# official SDKs and the Prometheus client, used as test peers.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake (needed by pingora's zlib-ng build)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi

# `scripts/setup.sh demo` installs only what running the demo needs.
if [ "${1:-}" != "demo" ]; then
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import stripe, prometheus_client, com.alipay.ams.api" 2>/dev/null; then
    echo "setup: creating .venv with the provider SDKs (test peers)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
  fi
fi
