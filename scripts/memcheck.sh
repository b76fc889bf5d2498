#!/usr/bin/env bash
# Runs every unit-test executable of a build under valgrind's memcheck; fails on any memory error
# or definite leak. Usage: scripts/memcheck.sh [build-dir]   (default build/dev)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build/dev}
failed=0
for source in test/unit/*.cpp; do
  test_exe="$build/test/serq_test_$(basename "$source" .cpp)"
  log=$(mktemp)
  start=$SECONDS
  # The writer's seeded scripts run 3000 times in every other build; 300 here (valgrind is ~50x slower).
  if SERQ_SCRIPT_COUNT=300 valgrind -q --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite "$test_exe" >"$log" 2>&1; then
    echo "memcheck: $(basename "$test_exe") clean ($((SECONDS - start)) s)"
  else
    cat "$log"
    echo "memcheck: $(basename "$test_exe") FAILED"
    failed=1
  fi
  rm -f "$log"
done
exit "$failed"
