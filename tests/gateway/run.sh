#!/usr/bin/env bash
# Runs phone-auth behind a real Apollo Federation gateway (see README.md).
# Needs: the server built (`cargo build`), Node.js >= 20.17 with npm, PostgreSQL and Redis on 127.0.0.1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${PHONE_AUTH_BIN:-$here/../../target/debug/phone-auth}"
# A relative PHONE_AUTH_BIN is relative to the caller's directory, not this one.
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
if [[ ! -x "$bin" ]]; then
  echo "run.sh: no phone-auth binary at $bin; run \`cargo build\` first or set PHONE_AUTH_BIN" >&2
  exit 1
fi
export PHONE_AUTH_BIN="$bin"

cd "$here"
npm ci --no-audit --no-fund
npm test
