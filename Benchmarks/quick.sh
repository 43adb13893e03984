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
exec ../.build-bench/release/uiommufd-bench --quick "$@"
