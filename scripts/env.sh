# Shared settings for the scripts; sourced, not run.
# shellcheck shell=bash
HUBBUB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HUBBUB_ROOT
# One build directory outside the checkout: fresh clones on this machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hubbub/target}"
# wasm-opt from the project's npm packages (binaryen); cargo tools from ~/.cargo/bin.
export PATH="$HUBBUB_ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"
# The same value cargo-leptos gives the compiler, so that plain cargo commands and cargo-leptos
# share one debug build instead of rebuilding Leptos for each other.
export LEPTOS_OUTPUT_NAME=hubbub
