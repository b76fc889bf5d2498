#!/usr/bin/env bash
# Regenerates doc/websocket_chat.png: example/websocket_chat's page in use, rendered by headless
# Chromium at 1000x700. The page's ?demo mode plays a short conversation between four
# connections through a real server on a loopback port.
#
# Usage: scripts/screenshot_chat.sh [build dir]     (default build/dev, configured beforehand,
#                                                    e.g. with `cmake --preset dev`)
# Needs Chromium (scripts/setup.sh installs it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build/dev}
output=doc/websocket_chat.png
chromium=${CHROMIUM:-/usr/bin/chromium}

[[ -f $build/CMakeCache.txt ]] || {
  echo "screenshot: $build is not a configured build directory (try: cmake --preset dev)" >&2
  exit 1
}
cmake --build "$build" -j1 --target websocket_chat

tmp=$(mktemp -d "${TMPDIR:-/tmp}/serq-screenshot.XXXXXX")
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$build/example/websocket_chat" 127.0.0.1 0 --threads 2 >"$tmp/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 50); do
  port=$(sed -n 's/^listening on \([0-9]*\)$/\1/p' "$tmp/server.log")
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n $port ]] || {
  echo "screenshot: the server did not start" >&2
  exit 1
}

# The screenshot is taken when the virtual time budget runs out. Virtual time does not wait for
# WebSocket traffic, so now and then it runs out before the conversation has arrived: the same
# run dumps the DOM, and the shot is kept only if the page says the conversation is complete.
for attempt in $(seq 10); do
  rm -rf "$tmp/profile" "$tmp/shot.png"
  timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/profile" --hide-scrollbars --window-size=1000,700 \
    --virtual-time-budget=5000 --dump-dom --screenshot="$tmp/shot.png" \
    "http://127.0.0.1:$port/?demo" >"$tmp/dom.html" 2>"$tmp/chromium.log" || true
  if grep -q '<title>DEMO DONE</title>' "$tmp/dom.html" && [[ -s $tmp/shot.png ]]; then
    mkdir -p "$(dirname "$output")"
    cp "$tmp/shot.png" "$output"
    echo "screenshot: wrote $output (attempt $attempt)"
    exit 0
  fi
done
echo "screenshot: the page never finished its demo conversation" >&2
exit 1
