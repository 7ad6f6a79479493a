#!/usr/bin/env bash
# Starts the server built by `cargo leptos build` on a fresh data directory, for Playwright: the
# debug build, or the release build with HUBBUB_E2E_PROFILE=release.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
"${CARGO_TARGET_DIR:-target}/${HUBBUB_E2E_PROFILE:-debug}/hubbub" \
  --addr "127.0.0.1:${HUBBUB_E2E_PORT:-3100}" --data-dir "$data" --log warn \
  --signups-per-hour 1000 "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid; rm -rf "$data"' EXIT INT TERM
wait $pid
