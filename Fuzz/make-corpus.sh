#!/usr/bin/env bash
# Regenerates Fuzz/corpus/ from the seed programs in Sources/uiommufd-fuzz/Seeds.swift
# (the encoder of the input format). Builds the fuzzer as Fuzz/run.sh does.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"
cd "$here"
sanitize="${UIOMMUFD_FUZZ_SANITIZE:-fuzzer,address}"
swift build -c release --scratch-path ../.build-fuzz --product uiommufd-fuzz \
    -Xswiftc -sanitize="$sanitize" -Xswiftc -g >&2
rm -rf corpus
mkdir corpus
UIOMMUFD_FUZZ_WRITE_CORPUS="$here/corpus" ../.build-fuzz/release/uiommufd-fuzz
ls corpus | wc -l
