#!/usr/bin/env bash
# Runs the Linux kernel's own iommufd selftest (tools/testing/selftests/iommu/iommufd.c),
# unmodified, under `uiommufd run --selftest-ops`.
#
#   bash tests/kernel-selftest/run.sh [-v] [HARNESS-ARGS...]
#
#   -v             print the harness's whole output (default: the failures and the totals)
#   --shared       keep the iommufd state in a server (`uiommufd run --shared`), so that fork
#                  shares it as on Linux (fork_gone, fork_present)
#   HARNESS-ARGS   passed to the test binary, e.g. `-f iommufd_dirty_tracking` or
#                  `-r iommufd_ioas.mock_domain.access_pin` (kselftest_harness options)
#
# The kernel source is not part of this project: it comes from Debian's linux-source-6.12
# package (installed with apt-get if missing and we are root), and only the selftest and the
# headers it includes are unpacked, into .build-kselftest/. The test is compiled with cc
# against the project's own uAPI header (include/uapi-compat/linux/iommufd.h) plus
# selftest_compat.h, which supplies the two mock constants the 6.12.y test uses but its
# iommufd_test.h lacks. Hugepage variants need a hugetlb pool: vm.nr_hugepages is raised
# for the run (root only) and restored afterwards.
#
# uiommufd is .build/debug/uiommufd (`swift build`) or $UIOMMUFD. The last line is
# "N passed, N failed" (the harness's PASS and FAIL counts; SKIPs are listed before it);
# without the kernel source it prints a SKIP line and "0 passed, 0 failed". Exit status: 0 if
# nothing failed. Known failures (see README.md beside this script): known-failures for the
# in-process run (fork_gone and fork_present need --shared), known-failures-shared for --shared.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/.build-kselftest"
cc=${CC:-cc}
package=linux-source-6.12
tarball=/usr/src/$package.tar.xz
verbose=0
shared=()
args=()
for arg in "$@"; do
  case $arg in
    -v) verbose=1 ;;
    --shared) shared=(--shared) ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$arg") ;;
  esac
done

skip() {   # skip REASON
  echo "SKIP: kernel selftest not run: $1"
  echo "0 passed, 0 failed"
  exit 0
}

uiommufd=${UIOMMUFD:-$root/.build/debug/uiommufd}
if [ ! -x "$uiommufd" ]; then
  echo "run.sh: $uiommufd not found; build it with \`swift build\` (or set UIOMMUFD)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

# 1. The kernel source package.
if [ ! -f "$tarball" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing $package (apt-get)" >&2
    if ! apt-get install -y "$package" >/dev/null 2>&1; then
      apt-get update >/dev/null 2>&1
      apt-get install -y "$package" >/dev/null 2>&1
    fi
  fi
  [ -f "$tarball" ] || skip "Debian package $package is not installed and cannot be installed here"
fi

# 2. Unpack only what the test needs (once per tarball).
src="$out/src"
tree="$src/$package"
stamp="$src/.unpacked-$(stat -c %Y "$tarball")"
if [ ! -f "$stamp" ]; then
  rm -rf "$src" && mkdir -p "$src"
  if ! tar -xf "$tarball" -C "$src" --wildcards \
      "$package/tools/testing/selftests/iommu/*" \
      "$package/tools/testing/selftests/kselftest*.h" \
      "$package/drivers/iommu/iommufd/iommufd_test.h"; then
    echo "run.sh: cannot unpack the selftest from $tarball" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
  touch "$stamp"
fi

# 3. Build it against our uAPI header.
bin="$out/iommufd"
test_src="$tree/tools/testing/selftests/iommu/iommufd.c"
if [ ! -x "$bin" ] || [ "$test_src" -nt "$bin" ] || [ "$root/include/uapi-compat/linux/iommufd.h" -nt "$bin" ] \
   || [ "$here/selftest_compat.h" -nt "$bin" ]; then
  if ! "$cc" -Wall -O2 -Wno-unused-function -D_GNU_SOURCE -pthread \
      -I"$root/include/uapi-compat" -include "$here/selftest_compat.h" \
      -o "$bin" "$test_src"; then
    echo "run.sh: cannot build the kernel selftest" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
fi

# 4. A hugetlb pool for the *_hugepage / *_huge variants (2 MiB pages; dirty128M_huge needs 64;
#    512 leaves room for anything else on the machine using the pool at the same time).
hp=/proc/sys/vm/nr_hugepages
old_hp=
if [ -w "$hp" ]; then
  old_hp=$(cat "$hp")
  [ "$old_hp" -lt 512 ] && echo 512 > "$hp" 2>/dev/null
fi
restore() { [ -n "$old_hp" ] && echo "$old_hp" > "$hp" 2>/dev/null; }
trap restore EXIT

# 5. Run.
log="$out/iommufd${shared[0]:+-shared}.log"
start=$(date +%s)
# global_options sets IOMMU_OPTION_RLIMIT_MODE, which needs CAP_SYS_RESOURCE ("This requires
# root"). Containers (Docker's default set, this CI) drop that capability even for root, so
# the simulated kernel is told to treat the test as holding it, as root in a VM would.
(cd "$out" && timeout 1800 "$uiommufd" run "${shared[@]}" --selftest-ops --grant-cap sys_resource -- "$bin" "${args[@]}") > "$log" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
restore; old_hp=

if [ $verbose = 1 ]; then
  cat "$log"
else
  # The lines of every failing test (from its RUN line to its "not ok" line).
  awk '/^#  RUN /{buf=""} {buf=buf $0 "\n"} /^not ok /{printf "%s", buf; buf=""}' "$log"
fi
totals=$(grep -E '^# Totals: ' "$log" | tail -1)
if [ -z "$totals" ]; then
  tail -20 "$log"
  echo "run.sh: the selftest did not finish (exit status $rc, ${secs}s)"
  echo "0 passed, 1 failed"
  exit 1
fi
count() { grep -oE " $1:[0-9]+" <<<"$totals" | head -1 | cut -d: -f2; }
pass=$(count pass) fail=$(count fail) skipped=$(count skip)
echo "$totals (${secs}s, $(grep -E '^# Starting' "$log" | head -1 | sed 's/^# //'))"
grep -E '^ok [0-9]+ .* # SKIP' "$log" | sed 's/^/skipped: /'
grep -E '^not ok ' "$log" | sed -E 's/^not ok [0-9]+ /failed: /'
echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" = 0 ] && [ $rc = 0 ]
