#!/usr/bin/env bash
# The full benchmark run (issue 5): builds in release, runs every benchmark at full size, prints
# the table and writes RESULTS.md, results/*.csv and results/scaling.svg next to this script.
# About a minute of measuring, up to ~9 GiB of RAM (4 GiB populated for B2; 4 GiB of hugetlb
# pages for B3 when a pool can be configured, restored afterwards).
#
# B7 through the interposer needs libuiommufd-preload.so, and B14 (server mode) the uiommufd
# executable next to it: this script builds the root package's preload and uiommufd products
# into ../.build-bench-preload (skip with NO_PRELOAD=1, or point UIOMMUFD_PRELOAD
# at an existing library). If that build fails, B7 falls back to what can be measured without it.
# Extra arguments go to uiommufd-bench (e.g. --only B4,B5 --reps 21).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH="/opt/swift/usr/bin:$PATH"
cd "$here"
swift build -c release --scratch-path ../.build-bench --product uiommufd-bench >&2
preload_args=()
if [[ -n "${UIOMMUFD_PRELOAD:-}" ]]; then
    preload_args=(--preload "$UIOMMUFD_PRELOAD")
elif [[ -z "${NO_PRELOAD:-}" ]]; then
    if (cd .. && swift build -c release --product uiommufd-preload --scratch-path .build-bench-preload \
          && swift build -c release --product uiommufd --scratch-path .build-bench-preload) >&2; then
        preload_args=(--preload "$here/../.build-bench-preload/release/libuiommufd-preload.so"
                      --uiommufd "$here/../.build-bench-preload/release/uiommufd")
    else
        echo "full.sh: the preload library did not build; B7 is measured without the interposer" >&2
    fi
fi
exec ../.build-bench/release/uiommufd-bench --csv results --svg results/scaling.svg --markdown RESULTS.md \
    "${preload_args[@]}" "$@"
