#!/usr/bin/env bash
# Builds the C conformance tests and runs each one under `uiommufd run`.
#
#   tests/conformance/run.sh [-v] [--kernel | --shared] [TEST-NAME-FILTER]
#
#   -v         print every test line (default: a summary per binary, details of failures)
#   --kernel   run the binaries directly, against the running kernel's /dev/iommu (the same
#              tests must pass there: they use no project header and no emulator hook)
#   --shared   run them all with the iommufd and the VFIO cdevs served by a server
#              (`uiommufd run --shared`): the same tests must pass there too
#
# Binaries go to .build-conformance/ (cc -O2 -Wall -Werror -pthread; t_fd and t_passthrough also
# with -D_FILE_OFFSET_BITS=64 -D_FORTIFY_SOURCE=2). uiommufd is .build/debug/uiommufd (build it
# with `swift build`) or $UIOMMUFD. The last line is "N passed, N failed" over all binaries; the
# exit status is non-zero if any test failed or any binary did not finish.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/.build-conformance"
cc=${CC:-cc}
cflags=(-O2 -Wall -Werror -pthread)
verbose=0 kernel=0 shared=0 filter=
for arg in "$@"; do
  case $arg in
    -v) verbose=1 ;;
    --kernel) kernel=1 ;;
    --shared) shared=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) filter=$arg ;;
  esac
done

uiommufd=${UIOMMUFD:-$root/.build/debug/uiommufd}
if [ $kernel = 0 ] && [ ! -x "$uiommufd" ]; then
  echo "run.sh: $uiommufd not found; build it with \`swift build\` (or set UIOMMUFD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

mkdir -p "$out"
binaries=()
build() {   # build NAME SOURCE [EXTRA FLAGS...]
  local name=$1 src=$2; shift 2
  if ! "$cc" "${cflags[@]}" "$@" -o "$out/$name" "$src"; then
    echo "run.sh: cannot build $name" >&2
    return 1
  fi
  binaries+=("$name")
}
build_failed=0
for src in "$here"/t_*.c; do
  name=$(basename "$src" .c)
  build "$name" "$src" || build_failed=$((build_failed + 1))
  case $name in
    t_fd|t_passthrough)
      build "${name}_lfs" "$src" -D_FILE_OFFSET_BITS=64 -D_FORTIFY_SOURCE=2 || build_failed=$((build_failed + 1)) ;;
  esac
done

total_pass=0 total_fail=$build_failed status=0
[ $build_failed = 0 ] || status=1
for name in "${binaries[@]}"; do
  if [ $kernel = 1 ]; then
    cmd=("$out/$name")
  elif [ $shared = 1 ]; then
    cmd=("$uiommufd" run --shared --selftest-ops -- "$out/$name")
  elif [ "$name" = t_shared ]; then
    # Several processes share one iommufd: the state lives in a server (--shared), the mock
    # device and access objects come from the selftest ops, and the server's leak check
    # after the run must find nothing left.
    cmd=("$uiommufd" run --shared --selftest-ops --leaks -- "$out/$name")
  elif [ "$name" = t_nested ] || [ "$name" = t_viommu ]; then
    # The mock device, its nested domain, TRIGGER_IOPF / TRIGGER_VEVENT and DEV_CHECK_CACHE
    # are selftest ops.
    cmd=("$uiommufd" run --selftest-ops -- "$out/$name")
  else
    cmd=("$uiommufd" run -- "$out/$name")
  fi
  [ -n "$filter" ] && cmd+=("$filter")
  log=$(timeout 900 "${cmd[@]}" 2>&1)
  rc=$?
  summary=$(printf '%s\n' "$log" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$summary" ]; then
    printf '%s\n' "$log"
    echo "$name: did not finish (exit status $rc)"
    total_fail=$((total_fail + 1)); status=1
    continue
  fi
  p=${summary%% passed*}; f=${summary#*passed, }; f=${f%% failed}
  if [ $kernel = 0 ] && [ $shared = 0 ] && [ "$name" = t_shared ] && [ -z "$filter" ]; then
    if printf '%s\n' "$log" | grep -q 'leak check of the shared server: no leaks'; then
      p=$((p + 1))
    else
      printf '%s\n' "$log" | grep 'uiommufd:' | sed "s/^/$name: /"
      echo "$name: the server still holds objects or pins after every process closed"
      f=$((f + 1)); rc=1
    fi
    summary="$p passed, $f failed"
  fi
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  if [ $verbose = 1 ] || [ "$f" != 0 ] || [ $rc != 0 ]; then
    printf '%s\n' "$log" | grep -vE '^(ok |TAP version|1\.\.)' | grep -vE '^[0-9]+ passed' | sed "s/^/$name: /"
  fi
  [ $verbose = 1 ] && printf '%s\n' "$log" | grep -E '^ok ' | sed "s/^/$name: /"
  skipped=$(printf '%s\n' "$log" | grep -cE '^ok .* # SKIP' || true)
  printf '%-22s %s%s\n' "$name:" "$summary" "$([ "$skipped" != 0 ] && echo " ($skipped skipped)")"
  [ "$f" = 0 ] && [ $rc = 0 ] || status=1
done
echo "$total_pass passed, $total_fail failed"
exit $status
