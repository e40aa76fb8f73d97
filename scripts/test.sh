#!/usr/bin/env bash
# Runs every test of the repository, installing what it needs on a fresh machine:
#   formatting and lints, unit and integration tests (cargo nextest), doc tests,
#   interop tests against Python websockets (pytest), the hostile-input suite (pytest,
#   tests/hostile), the chat demo in headless Chromium
#   (node --test, playwright-core), and the Autobahn TestSuite
#   through kosoku in both roles, diffed against conformance/autobahn/expected-*.json, and
#   every fuzz target for a few seconds (fuzz/smoke.sh; FUZZ_SMOKE_SECONDS, default 10).
#
# Usage: scripts/test.sh [--quick]   (--quick skips the Autobahn runs and the fuzz smoke)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[[ "${1:-}" == "--quick" ]] && quick=true

step() { printf '\n==> %s\n' "$*"; }

# --- what the tests need ------------------------------------------------------------------
if ! command -v openssl >/dev/null 2>&1; then
  step "installing openssl (test certificates)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  step "installing python3-venv"
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum conformance/requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  step "creating .venv with conformance/requirements.txt"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r conformance/requirements.txt
  echo "$want" > "$stamp"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (cluster and Redis store tests)"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  step "installing chromium (browser test of the chat demo)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  step "installing the browser test's npm packages"
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install --locked -q cargo-nextest
fi

# --- Rust ---------------------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -q -- -D warnings
step "cargo nextest: unit and integration tests"
cargo nextest run --workspace --no-fail-fast
step "doc tests"
cargo test --workspace --doc -q

# --- interop and conformance against real peers -------------------------------------------
step "building release binaries for the peer tests"
cargo build --release -q -p roost-cli -p roost --bin roost --example autobahn_client
# Cargo may be told to build elsewhere (CARGO_TARGET_DIR, .cargo/config.toml): ask it where.
target_dir=$(cargo metadata --format-version 1 --no-deps --offline \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export ROOST_BIN="$target_dir/release/roost"
autobahn_client="$target_dir/release/examples/autobahn_client"
for binary in "$ROOST_BIN" "$autobahn_client"; do
  [[ -x "$binary" ]] || { echo "error: $binary was not built" >&2; exit 1; }
done
step "interop with Python websockets (pytest)"
.venv/bin/python -m pytest tests/interop -q -p no:cacheprovider
step "hostile input against roost serve (pytest; results in target/hostile/results.json)"
.venv/bin/python -m pytest tests/hostile -q -p no:cacheprovider
step "browser: two people chat in the demo page, one reloads and resumes (headless Chromium)"
node --test tests/browser/

if ! $quick; then
  kosoku=.venv/bin/kosoku
  step "Autobahn TestSuite, roost as the server"
  .venv/bin/python conformance/autobahn/run.py server --kosoku "$kosoku" --parallelism 4 \
    --cmd "$ROOST_BIN serve --app echo --listen 127.0.0.1:{port}"
  step "Autobahn TestSuite, roost as the client"
  .venv/bin/python conformance/autobahn/run.py client --kosoku "$kosoku" \
    --cmd "$autobahn_client {url}"
fi
if ! $quick; then
  step "fuzzing: every cargo-fuzz target for a short smoke time over its corpus (fuzz/smoke.sh)"
  FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-10} fuzz/smoke.sh
fi
step "all tests passed"
