#!/usr/bin/env bash
# example/websocket_chat_browser_test.sh <websocket_chat binary> <work dir>
#
# The browser test of example/websocket_chat (ctest: example.websocket_chat_browser, label
# "browser"). Loopback only. About 10 s (25 s under TSan); under 60 s in all, whatever happens.
#
#  1. Starts the server on 127.0.0.1, port 0, and reads the port it prints.
#  2. Connects a client that completes the WebSocket handshake and then never reads (a stalled
#     browser), from this shell, over /dev/tcp.
#  3. Runs headless Chromium on /?selftest=4x1000: the page opens 4 WebSocket connections that
#     send 1000 messages each (about 3.6 MB in all) and checks, in JavaScript, that every
#     connection receives every message exactly once, whole and in order per sender. It puts
#     "SELFTEST PASS ..." or "SELFTEST FAIL <reason>" in the page (title and #selftest-result).
#     This script reads the title through Chromium's DevTools HTTP endpoint (/json/list).
#     (--dump-dom with --virtual-time-budget cannot be used: virtual time races ahead while the
#     page waits for WebSocket messages, so the page's timers fire early and the DOM is dumped
#     before the test is over.)
#  4. Checks that the server dropped the stalled client, that the client saw its connection
#     closed, and that the server exits with status 0 on SIGTERM (so a sanitizer's report at exit
#     fails the test too).
#
# Fails if the page reports a failure or reports nothing in time. Always stops the server and
# every Chromium process it started.
#
# Environment: CHROMIUM (default /usr/bin/chromium), SELFTEST (default 4x1000).

set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 <websocket_chat binary> <work dir>" >&2
  exit 2
fi
server_bin=$1
work=$2
chromium=${CHROMIUM:-/usr/bin/chromium}
selftest=${SELFTEST:-4x1000}
deadline=50 # seconds until the page must have reported; ctest's TIMEOUT is longer

started=$SECONDS
server_pid=
chromium_pid=
profile=
stalled_fd=

log() { echo "[$((SECONDS - started))s] $*"; }

fail() {
  echo "FAIL: $*" >&2
  for f in "$work/server.log" "$work/chromium.log"; do
    if [[ -s $f ]]; then
      echo "---- last lines of $f" >&2
      # Headless Chromium always complains that there is no D-Bus; that is not the problem.
      grep -v 'dbus' "$f" | tail -n 25 >&2
    fi
  done
  exit 1
}

# The server and Chromium each run in a session of their own (setsid), under timeout(1), so that
# killing the process group <pid> ends timeout, the program and everything the program started.
kill_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for _ in 1 2 3 4 5; do
    sleep 0.2
    kill -0 -- "-$1" 2>/dev/null || return 0
  done
  kill -KILL -- "-$1" 2>/dev/null || true
}

cleanup() {
  if [[ -n $chromium_pid ]]; then
    kill_group "$chromium_pid"
  fi
  if [[ -n $server_pid ]]; then
    kill_group "$server_pid"
  fi
  if [[ -n $stalled_fd ]]; then
    exec {stalled_fd}<&- || true
  fi
  if [[ -n $profile ]]; then
    rm -rf "$profile"
  fi
}
trap cleanup EXIT

time_left() { echo $((deadline - (SECONDS - started))); }

# wait_for_line <file> <extended regex> <seconds>: prints the first matching line.
wait_for_line() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# http_get <port> <path>: the body of GET http://127.0.0.1:<port><path>, read up to its
# Content-Length (Chromium's DevTools server keeps the connection open).
http_get() {
  local fd line length=0
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&"$fd"
  while IFS= read -r -t 5 line <&"$fd"; do
    line=${line%$'\r'}
    [[ -z $line ]] && break
    if [[ ${line,,} =~ ^content-length:\ *([0-9]+) ]]; then
      length=${BASH_REMATCH[1]}
    fi
  done
  timeout 5 head -c "$length" <&"$fd" || true
  exec {fd}<&-
}

[[ -x $server_bin ]] || fail "no server binary at $server_bin"
[[ -x $chromium ]] || fail "no Chromium at $chromium (scripts/setup.sh installs it)"
rm -rf "$work"
mkdir -p "$work"

# ---- 1. the server
# timeout(1): the server goes away even if this script is killed. It passes on SIGTERM and
# returns the server's exit status.
setsid timeout -k 5 $((deadline + 10)) "$server_bin" 127.0.0.1 0 --threads 2 \
  >"$work/server.log" 2>&1 &
server_pid=$!
port_line=$(wait_for_line "$work/server.log" '^listening on [0-9]+$' 10) ||
  fail "the server did not print 'listening on <port>'"
port=${port_line#listening on }
log "server listening on 127.0.0.1:$port"

# ---- 2. a client that stops reading after the handshake
exec {stalled_fd}<>"/dev/tcp/127.0.0.1/$port"
printf '%s\r\n' "GET /ws HTTP/1.1" "Host: 127.0.0.1:$port" "Upgrade: websocket" \
  "Connection: Upgrade" "Sec-WebSocket-Key: c2VycS1zdGFsbGVkLWtleQ==" \
  "Sec-WebSocket-Version: 13" "" >&"$stalled_fd"
IFS= read -r -t 10 status <&"$stalled_fd" || fail "no handshake response for the stalled client"
[[ $status == "HTTP/1.1 101 "* ]] || fail "stalled client: handshake answered with: $status"
while IFS= read -r -t 10 line <&"$stalled_fd" && [[ $line != $'\r' ]]; do :; done
# bash reads the response byte by byte, so nothing after the headers has been consumed.
stalled_line=$(wait_for_line "$work/server.log" '^client [0-9]+ joined' 10) ||
  fail "the stalled client did not join the room"
stalled_id=$(awk '{print $2}' <<<"$stalled_line")
log "stalled client joined as client $stalled_id; it will never read again"

# ---- 3. Chromium runs the page's self-test
profile=$(mktemp -d "${TMPDIR:-/tmp}/serq-chromium.XXXXXX")
url="http://127.0.0.1:$port/?selftest=$selftest"
setsid timeout -k 5 "$(time_left)" "$chromium" --headless --no-sandbox --disable-gpu \
  --disable-quic --no-first-run --disable-background-networking --disable-component-update \
  --disable-sync --user-data-dir="$profile" --remote-debugging-port=0 "$url" \
  >"$work/chromium.log" 2>&1 &
chromium_pid=$!
log "chromium on $url"

devtools_port=
while ((SECONDS - started < deadline)); do
  if [[ -s $profile/DevToolsActivePort ]]; then
    devtools_port=$(head -n1 "$profile/DevToolsActivePort")
    break
  fi
  kill -0 "$chromium_pid" 2>/dev/null || fail "Chromium exited before opening DevTools"
  sleep 0.1
done
[[ -n $devtools_port ]] || fail "Chromium did not open its DevTools port"

result=
while ((SECONDS - started < deadline)); do
  kill -0 "$chromium_pid" 2>/dev/null || fail "Chromium exited before the page reported"
  # The page's title, among those of every target: "title": "SELFTEST PASS ...".
  if result=$(http_get "$devtools_port" /json/list |
    grep -o -m1 '"title": "SELFTEST \(PASS\|FAIL\)[^"]*'); then
    result=${result#\"title\": \"}
    break
  fi
  sleep 0.25
done
[[ -n $result ]] || fail "the page reported nothing within ${deadline}s"
log "page: $result"
kill_group "$chromium_pid"
chromium_pid=
[[ $result == "SELFTEST PASS "* ]] || fail "the browser self-test failed: $result"

# ---- 4. the stalled client was dropped, and only it
drop_line=$(wait_for_line "$work/server.log" "^dropping client $stalled_id:" 5) ||
  fail "the server did not drop the stalled client $stalled_id"
log "server: $drop_line"
drops=$(grep -c '^dropping client' "$work/server.log" || true)
((drops == 1)) || fail "the server dropped $drops clients, expected only the stalled one"
# What the server had handed to the kernel before the drop arrives, then the end of the stream.
set +e
timeout 5 cat <&"$stalled_fd" >/dev/null 2>&1
status=$?
set -e
((status != 124)) || fail "the stalled client's connection was not closed"
exec {stalled_fd}<&-
stalled_fd=
log "stalled client: connection closed by the server"

kill -TERM "$server_pid"
for ((i = 0; i < 50; i++)); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
! kill -0 "$server_pid" 2>/dev/null || fail "the server did not exit within 5 s of SIGTERM"
set +e
wait "$server_pid"
status=$?
set -e
server_pid=
((status == 0)) || fail "the server exited with status $status after SIGTERM"
grep -E '^client [0-9]+ left' "$work/server.log" | sed 's/^/  server: /'
log "PASS"
