#!/usr/bin/env bash
# Runs every unit-test executable of a build under valgrind's memcheck; fails on any memory error
# or definite leak. Usage: scripts/memcheck.sh [build-dir]   (default build/dev)
# Valgrind runs a program on one core at a time, so the executables run side by side, one per core
# (MEMCHECK_JOBS, default: nproc): on CI's 2 cores this halves the section's wall time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build/dev}
jobs=${MEMCHECK_JOBS:-$(nproc)}

# memcheck_one <test source>: prints the executable's verdict (and its log when it fails); exits 1
# when it fails.
memcheck_one() {
  local build=$1 source=$2
  local test_exe log start status=0
  test_exe="$build/test/serq_test_$(basename "$source" .cpp)"
  log=$(mktemp)
  start=$SECONDS
  # The writer's seeded scripts run 3000 times in every other build; 300 here (valgrind is ~50x slower).
  if SERQ_SCRIPT_COUNT=300 valgrind -q --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite "$test_exe" >"$log" 2>&1; then
    echo "memcheck: $(basename "$test_exe") clean ($((SECONDS - start)) s)"
  else
    # One write, so that the log of a failure is not interleaved with another executable's verdict.
    printf '%s\nmemcheck: %s FAILED\n' "$(cat "$log")" "$(basename "$test_exe")"
    status=1
  fi
  rm -f "$log"
  return "$status"
}
export -f memcheck_one

# xargs exits non-zero when any invocation failed, after running them all.
printf '%s\0' test/unit/*.cpp | xargs -0 -n1 -P "$jobs" bash -c 'memcheck_one "$0" "$1"' "$build"
