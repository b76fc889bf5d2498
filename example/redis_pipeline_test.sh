#!/usr/bin/env bash
# example/redis_pipeline_test.sh <redis_pipeline binary> <work dir>
#
# The test of example/redis_pipeline (ctest: example.redis_pipeline). Loopback only.
#
#  1. Starts redis-server on 127.0.0.1 and a free port, without persistence (--save '',
#     --appendonly no), and waits until it answers PING (polled with redis-cli).
#  2. Runs the example against it: 32 coroutines and 2 plain threads on one connection, every
#     reply checked by the example, which exits 0 only if all were right.
#  3. Stops the server (SHUTDOWN NOSAVE, then SIGKILL if it is still there).
#
# Fails, never skips, when redis-server or redis-cli is missing (scripts/setup.sh installs them).
# Environment: REDIS_SERVER, REDIS_CLI (default: found on PATH); EXAMPLE_ARGS (extra arguments).

set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 <redis_pipeline binary> <work dir>" >&2
  exit 2
fi
example_bin=$1
work=$2
redis_server=${REDIS_SERVER:-$(command -v redis-server || true)}
redis_cli=${REDIS_CLI:-$(command -v redis-cli || true)}

server_pid=
port=

fail() {
  echo "FAIL: $*" >&2
  if [[ -s $work/redis.log ]]; then
    echo "---- last lines of $work/redis.log" >&2
    tail -n 20 "$work/redis.log" >&2
  fi
  exit 1
}

cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    "$redis_cli" -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    for _ in $(seq 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

rm -rf "$work"
mkdir -p "$work"
[[ -x $example_bin ]] || fail "no example binary at $example_bin"
[[ -n $redis_server && -x $redis_server ]] ||
  fail "redis-server not found (scripts/setup.sh installs redis-server)"
[[ -n $redis_cli && -x $redis_cli ]] ||
  fail "redis-cli not found (scripts/setup.sh installs redis-tools)"

# ---- 1. the server, on a port nobody listens on. Another process may take the port between the
# check and redis-server's bind: then redis-server exits, and the next port is tried.
for attempt in 1 2 3 4 5 6 7 8; do
  candidate=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
  if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    continue # something listens there
  fi
  port=$candidate
  "$redis_server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" --logfile "$work/redis.log" &
  server_pid=$!
  ready=
  for _ in $(seq 100); do # up to 10 s
    if [[ $("$redis_cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
      ready=1
      break
    fi
    kill -0 "$server_pid" 2>/dev/null || break # it exited: port taken, try another
    sleep 0.1
  done
  if [[ -n $ready ]]; then
    break
  fi
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  echo "redis-server did not come up on port $port (attempt $attempt)" >&2
done
[[ -n $server_pid ]] || fail "could not start redis-server on a free port"
echo "redis-server $("$redis_server" --version | awk '{print $3}') on 127.0.0.1:$port"

# ---- 2. the example
# shellcheck disable=SC2086
"$example_bin" --host 127.0.0.1 --port "$port" ${EXAMPLE_ARGS:-} ||
  fail "the example failed (exit status $?)"

# ---- 3. the server saw the example's commands
processed=$("$redis_cli" -h 127.0.0.1 -p "$port" info stats |
  awk -F: '/^total_commands_processed:/ {print $2+0}')
echo "redis-server processed $processed commands"
echo "PASS"
