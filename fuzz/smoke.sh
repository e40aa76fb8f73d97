#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time over its committed corpus and its kept
# regression inputs; fails if any target crashes. Part of the test command.
#
#   fuzz/smoke.sh                      # 15 s per target
#   FUZZ_SMOKE_SECONDS=60 fuzz/smoke.sh
#
# Needs the Rust toolchain and a C++ compiler (libfuzzer-sys builds libFuzzer from source).
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags; AddressSanitizer
# is used when the platform supports it, otherwise the targets are built without a sanitizer.
# The committed corpus is copied first, so a smoke run never changes the repository; crash
# inputs land in fuzz/artifacts/<target>/ (ignored by git), see docs/fuzzing.md.

set -u -o pipefail

cd "$(dirname "$0")/.."
seconds=${FUZZ_SMOKE_SECONDS:-15}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || {
        echo "fuzz-smoke: could not install cargo-fuzz"
        exit 1
    }
fi

sanitizer=address
if ! cargo fuzz build -s "$sanitizer" >/dev/null 2>fuzz/target-build.log; then
    echo "fuzz-smoke: no AddressSanitizer build here, building without a sanitizer"
    sanitizer=none
    if ! cargo fuzz build -s "$sanitizer" 2>fuzz/target-build.log; then
        cat fuzz/target-build.log
        rm -f fuzz/target-build.log
        echo "fuzz-smoke: the fuzz targets do not build"
        exit 1
    fi
fi
rm -f fuzz/target-build.log

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
failures=()
for target in $(cargo fuzz list); do
    corpus="$work/$target"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    inputs=("$corpus")
    if [ -d "fuzz/regressions/$target" ]; then
        inputs+=("fuzz/regressions/$target")
    fi
    options=(-max_total_time="$seconds" -timeout=10)
    case "$target" in
        handshake_*) options+=(-dict=fuzz/dict/http.dict) ;;
        extensions) options+=(-dict=fuzz/dict/extensions.dict) ;;
    esac
    log="$work/$target.log"
    if cargo fuzz run -s "$sanitizer" "$target" "${inputs[@]}" -- "${options[@]}" >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "fuzz-smoke: $target ok ($(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1))"
    else
        failed=$((failed + 1))
        failures+=("$target")
        echo "fuzz-smoke: $target FAILED"
        grep -E -A4 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written' "$log" |
            head -30
    fi
done

if [ "$failed" -gt 0 ]; then
    echo "fuzz-smoke: failing targets: ${failures[*]}"
fi
echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
