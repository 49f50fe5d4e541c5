#!/usr/bin/env bash
# Runs the browser tests (see README.md): phone-auth's pages in Debian's Chromium, driven by
# puppeteer-core. Each test file starts its own server (helpers.mjs: a free port, a fresh database and
# Redis prefix, the SMS test number) and stops it, dropping the database, at its end.
# Needs: cargo, Node.js >= 20.17 with npm, PostgreSQL and Redis on 127.0.0.1, and Chromium (installed
# here from Debian when missing and running as root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  if [[ "$(id -u)" -eq 0 ]]; then
    echo "run.sh: no Chromium at $chromium; installing Debian's chromium"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    [[ -x "$chromium" ]] || { echo "run.sh: chromium is installed, but $chromium is still missing" >&2; exit 1; }
  else
    echo "run.sh: no Chromium at $chromium. Install Debian's, as root:" >&2
    echo "  apt-get update && apt-get install -y chromium" >&2
    echo "or point CHROMIUM_PATH at a Chromium or Chrome binary." >&2
    exit 1
  fi
fi
export CHROMIUM_PATH="$chromium"

if [[ -z "${PHONE_AUTH_BIN:-}" ]]; then
  (cd "$root" && cargo build --locked)
  export PHONE_AUTH_BIN="$root/target/debug/phone-auth"
fi
# A relative PHONE_AUTH_BIN is relative to the caller's directory, not this one.
case "$PHONE_AUTH_BIN" in /*) ;; *) PHONE_AUTH_BIN="$PWD/$PHONE_AUTH_BIN" ;; esac

cd "$here"
npm ci --no-audit --no-fund
npm test
