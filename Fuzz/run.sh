#!/usr/bin/env bash
# The ABI fuzzer as a test (issue 3 item 7): build, replay every saved crash and the seed
# corpus, then fuzz for a bounded time. Prints "N passed, N failed": one per regression input
# replayed without a crash, plus one for the timed run if it found nothing.
#
#   Fuzz/run.sh [SECONDS]            default 60 (or $UIOMMUFD_FUZZ_SECONDS)
#
# Environment:
#   UIOMMUFD_FUZZ_SECONDS   fuzzing time when no argument is given (0: replay only)
#   UIOMMUFD_FUZZ_SANITIZE  -sanitize= value (default fuzzer,address; "fuzzer" to drop ASan)
#   UIOMMUFD_FUZZ_JOBS      parallel fuzzing jobs (default 1: the machine has 2 shared cores)
#   UIOMMUFD_FUZZ_FLAGS     more libFuzzer flags for the timed run (e.g. -use_value_profile=1)
#
# A crash found by the timed run is copied to Fuzz/regressions/crash-<sha1> with a note
# (crash-<sha1>.txt: the fuzzer's report and how to reproduce) and the script exits 1. The
# growing working corpus lives in .build-fuzz/work/corpus (the committed seeds stay as they are).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"
cd "$here"

seconds="${1:-${UIOMMUFD_FUZZ_SECONDS:-60}}"
sanitize="${UIOMMUFD_FUZZ_SANITIZE:-fuzzer,address}"
jobs="${UIOMMUFD_FUZZ_JOBS:-1}"
scratch="$(cd "$here/.." && pwd)/.build-fuzz"
bin="$scratch/release/uiommufd-fuzz"
work="$scratch/work"
# ASan without leak checking: the Swift runtime's metadata caches would read as leaks.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:handle_abort=1}"
# The Swift runtime's own crash backtracer reads the stack in ways ASan reports as an error of
# its own; libFuzzer and ASan print the stack instead.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"
[ -x /opt/swift/usr/bin/llvm-symbolizer ] && export ASAN_SYMBOLIZER_PATH="${ASAN_SYMBOLIZER_PATH:-/opt/swift/usr/bin/llvm-symbolizer}"

echo "==> building uiommufd-fuzz (release, -sanitize=$sanitize)"
if ! swift build -c release --scratch-path "$scratch" --product uiommufd-fuzz \
        -Xswiftc -sanitize="$sanitize" -Xswiftc -g; then
    echo "Fuzz/run.sh: build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

passed=0
failed=0
common=(-rss_limit_mb=2048 -timeout=10 -max_len=2048)

mkdir -p "$work/corpus" "$work/artifacts"

echo "==> replaying Fuzz/regressions"
shopt -s nullglob
for f in regressions/*; do
    case "$f" in *.txt|*.md) continue ;; esac
    [ -f "$f" ] || continue
    if "$bin" "${common[@]}" "$f" >"$work/replay.log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $f still crashes:"
        grep -E "Fatal error|FUZZ:|ERROR: AddressSanitizer|SUMMARY|deadly signal|timeout" "$work/replay.log" | head -5
    fi
done
echo "regressions: $passed passed, $failed failed"

rm -f "$work/artifacts"/crash-* "$work/artifacts"/timeout-* "$work/artifacts"/oom-* "$work/artifacts"/leak-*

echo "==> replaying the seed corpus, then fuzzing for ${seconds}s"
log="$work/fuzz.log"
# libFuzzer runs every input of both corpus directories first (a seed that crashes fails
# here), then mutates; new inputs go to the first directory only.
if [ "$seconds" = 0 ]; then
    run=(-runs=0)
else
    run=(-max_total_time="$seconds")
fi
if [ "$jobs" -gt 1 ]; then run+=(-fork="$jobs"); fi
# shellcheck disable=SC2086
"$bin" "${common[@]}" "${run[@]}" ${UIOMMUFD_FUZZ_FLAGS:-} -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "$work/corpus" corpus >"$log" 2>&1
rc=$?
grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "$log" | tail -6

artifacts=("$work/artifacts"/crash-* "$work/artifacts"/timeout-* "$work/artifacts"/oom-* "$work/artifacts"/leak-*)
if [ "$rc" = 0 ] && [ ${#artifacts[@]} = 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAILED: the fuzzer stopped with status $rc"
    grep -E "Fatal error|FUZZ:|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY|deadly signal" "$log" | head -8
    for a in "${artifacts[@]}"; do
        name="$(basename "$a")"
        cp "$a" "regressions/$name"
        {
            echo "Found by Fuzz/run.sh on $(date -u +%Y-%m-%dT%H:%MZ) (-sanitize=$sanitize)."
            echo "From the repository root (SWIFT_BACKTRACE=enable=no keeps ASan's report clean):"
            echo "Reproduce:  .build-fuzz/release/uiommufd-fuzz Fuzz/regressions/$name"
            echo "Decode:     UIOMMUFD_FUZZ_TRACE=1 .build-fuzz/release/uiommufd-fuzz Fuzz/regressions/$name"
            echo "Minimize:   .build-fuzz/release/uiommufd-fuzz -minimize_crash=1 -max_total_time=60 -exact_artifact_path=/tmp/min Fuzz/regressions/$name"
            echo "Then add a test to Tests/ABITests/FuzzRegressionTests.swift (see Fuzz/README.md)."
            echo
            echo "The fuzzer's report:"
            grep -v -E "^#[0-9]+ " "$log" | tail -60
        } >"regressions/$name.txt"
        echo "saved Fuzz/regressions/$name (note: Fuzz/regressions/$name.txt)"
    done
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
