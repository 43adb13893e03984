#!/usr/bin/env bash
# The interposer's own tests: what is specific to uiommufd rather than to the kernel ABI
# (those are tests/conformance). Two parts:
#   - C programs run under `uiommufd run`: auxiliary descriptors (through the preload
#     library's echo-file test hook), fork/exec semantics, bad pointers, BAR mappings (every
#     instruction form the MMIO emulation decodes, against ordinary memory);
#   - the `uiommufd run` command line: --trace, --leaks, --machine, --selftest-ops, exit
#     statuses, lazy start-up, the preload library's dependencies.
# Last line: "N passed, N failed"; exit status non-zero on any failure.
#
#   tests/interposer/run.sh [-v]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/.build-conformance/interposer"
uiommufd=${UIOMMUFD:-$root/.build/debug/uiommufd}
preload=${UIOMMUFD_PRELOAD:-$(dirname "$uiommufd")/libuiommufd-preload.so}
verbose=0
[ "${1:-}" = -v ] && verbose=1
cc=${CC:-cc}
cflags=(-O2 -Wall -Werror -pthread)
passed=0 failed=0

if [ ! -x "$uiommufd" ]; then
  echo "run.sh: $uiommufd not found; build it with \`swift build\` (or set UIOMMUFD)" >&2
  echo "0 passed, 1 failed"; exit 1
fi
mkdir -p "$out"

ok() { passed=$((passed + 1)); [ $verbose = 1 ] && echo "ok - $1"; return 0; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; shift; [ $# -gt 0 ] && printf '#   %s\n' "$@"; return 0; }

# ---- C programs ----------------------------------------------------------------------------
for t in t_aux t_semantics t_mmio; do
  extra=()
  [ $t = t_mmio ] && extra=(-mno-red-zone)   # its cases read the flags with pushfq
  if ! "$cc" "${cflags[@]}" "${extra[@]}" -o "$out/$t" "$here/$t.c" -ldl; then not_ok "build $t"; continue; fi
  log=$("$uiommufd" run -- "$out/$t" 2>&1); rc=$?
  line=$(printf '%s\n' "$log" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$line" ]; then printf '%s\n' "$log"; not_ok "$t did not finish (status $rc)"; continue; fi
  p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed}
  passed=$((passed + p)); failed=$((failed + f))
  if [ $verbose = 1 ] || [ "$f" != 0 ]; then printf '%s\n' "$log" | grep -vE '^(TAP|1\.\.)' | sed "s/^/$t: /"; fi
  printf '%-14s %s\n' "$t:" "$line"
done

# ---- the command line ----------------------------------------------------------------------
"$cc" "${cflags[@]}" -o "$out/p_probe" "$here/p_probe.c" || { not_ok "build p_probe"; echo "$passed passed, $failed failed"; exit 1; }
probe="$out/p_probe"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The preload library carries the Swift runtime inside: no libswift*.so needed.
if ldd "$preload" | grep -q libswift; then not_ok "preload library needs no libswift*" "$(ldd "$preload" | grep libswift)"
else ok "preload library needs no libswift*"; fi

# Exit statuses pass through; a signal becomes 128+N; a missing program is 127.
"$uiommufd" run -- "$probe" exit 7; rc=$?
[ $rc = 7 ] && ok "exit status passes through" || not_ok "exit status passes through" "got $rc"
"$uiommufd" run -- "$probe" abort 2>/dev/null; rc=$?
[ $rc = 134 ] && ok "death by SIGABRT is 134" || not_ok "death by SIGABRT is 134" "got $rc"
msg=$("$uiommufd" run -- /nonexistent/program 2>&1); rc=$?
[ $rc = 127 ] && [ "$(printf '%s\n' "$msg" | wc -l)" = 1 ] && ok "missing program: one line, 127" || not_ok "missing program: one line, 127" "$rc: $msg"

# Lazy start-up: a program that never opens /dev/iommu runs no Swift code (the trace file,
# created when the emulator starts, never appears).
"$uiommufd" run --trace="$tmp/never.log" -- "$probe" noop
[ ! -e "$tmp/never.log" ] && ok "no emulator start-up without /dev/iommu" || not_ok "no emulator start-up without /dev/iommu"

# --trace=FILE: one decoded line per ioctl, appended.
"$uiommufd" run --trace="$tmp/t.log" -- "$probe" clean >/dev/null
if grep -q 'IOMMU_IOAS_ALLOC' "$tmp/t.log" && grep -q 'IOMMU_IOAS_MAP' "$tmp/t.log"; then ok "--trace=FILE decodes each ioctl"
else not_ok "--trace=FILE decodes each ioctl" "$(cat "$tmp/t.log" 2>&1)"; fi
err=$("$uiommufd" run --trace -- "$probe" clean 2>&1 >/dev/null)
printf '%s\n' "$err" | grep -q 'IOMMU_IOAS_MAP' && ok "--trace writes to stderr" || not_ok "--trace writes to stderr" "$err"

# --leaks: objects alive at exit are listed with the pinned pages.
err=$("$uiommufd" run --leaks -- "$probe" leak 2>&1 >/dev/null)
if printf '%s\n' "$err" | grep -q 'LEAKS' && printf '%s\n' "$err" | grep -q 'IOAS 1'; then ok "--leaks lists what is alive at exit"
else not_ok "--leaks lists what is alive at exit" "$err"; fi
err=$("$uiommufd" run --leaks -- "$probe" clean 2>&1 >/dev/null)
printf '%s\n' "$err" | grep -q 'no leaks' && ok "--leaks after a clean close" || not_ok "--leaks after a clean close" "$err"

# --selftest-ops serves IOMMU_TEST_CMD; without it the kernel's ENOTTY.
out1=$("$uiommufd" run -- "$probe" testcmd)
out2=$("$uiommufd" run --selftest-ops -- "$probe" testcmd)
[ "$out1" = ENOTTY ] && [ "$out2" != ENOTTY ] && ok "--selftest-ops serves IOMMU_TEST_CMD" || not_ok "--selftest-ops serves IOMMU_TEST_CMD" "without: $out1, with: $out2"

# --machine: validated before the program runs, one line naming file:line.
printf 'machine broken\niommu x kind=nonsense\n' > "$tmp/bad.cfg"
msg=$("$uiommufd" run --machine "$tmp/bad.cfg" -- "$probe" exit 0 2>&1); rc=$?
if [ $rc != 0 ] && [ "$(printf '%s\n' "$msg" | wc -l)" = 1 ] && printf '%s' "$msg" | grep -q "bad.cfg:2"; then ok "--machine errors name file:line"
else not_ok "--machine errors name file:line" "$rc: $msg"; fi
msg=$(UIOMMUFD_MACHINE="$tmp/bad.cfg" LD_PRELOAD="$preload" "$probe" open 2>&1)
if printf '%s\n' "$msg" | grep -q '^ENODEV$' && printf '%s\n' "$msg" | grep -q 'bad.cfg:2'; then ok "a bad UIOMMUFD_MACHINE makes /dev/iommu ENODEV, said once"
else not_ok "a bad UIOMMUFD_MACHINE makes /dev/iommu ENODEV, said once" "$msg"; fi
if [ -d "$root/examples" ] && ls "$root"/examples/*.machine >/dev/null 2>&1; then
  m=$(ls "$root"/examples/*.machine | head -1)
  o=$("$uiommufd" run --machine "$m" -- "$probe" open)
  case $o in "fd "*) ok "--machine with an example machine" ;; *) not_ok "--machine with an example machine" "$o" ;; esac
fi

# A missing preload library says how to build it.
msg=$(UIOMMUFD_PRELOAD=/nonexistent.so "$uiommufd" run -- "$probe" exit 0 2>&1); rc=$?
[ $rc != 0 ] && printf '%s' "$msg" | grep -q 'nonexistent.so' && ok "a missing preload library is one clear line" || not_ok "a missing preload library is one clear line" "$msg"

echo "$passed passed, $failed failed"
[ $failed = 0 ]
