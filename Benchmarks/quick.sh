#!/usr/bin/env bash
# Quick mode of the uiommufd benchmark suite (issue 5): small sizes, 3 interleaved repetitions,
# a few seconds of measuring. It keeps the benchmarks compiling and running; it asserts no time
# (every goal is a ratio, and even those are only reported). Exits non-zero only if the build
# or the benchmark code itself fails.
#
#   Benchmarks/quick.sh            # from anywhere
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH="/opt/swift/usr/bin:$PATH"
cd "$here"
swift build -c release --scratch-path ../.build-bench --product uiommufd-bench >&2
# B14 (server mode) runs when the root package's uiommufd is built (scripts/check builds it
# first); a debug build, so only the plumbing is exercised here, not the speed.
extra=()
[[ -x ../.build/debug/uiommufd && -f ../.build/debug/libuiommufd-preload.so ]] && extra=(--uiommufd ../.build/debug/uiommufd)
exec ../.build-bench/release/uiommufd-bench --quick "${extra[@]}" "$@"
