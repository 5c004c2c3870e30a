#!/bin/bash
# Plain CONNECT tunnels (hosts not hijacked) carry bytes both ways intact,
# at once, and end the way the ends end them, whether the kernel moves the
# bytes (proxy.spliceTunnels: true, the default: splice(2)) or Shoal's own
# buffers (false):
#   48 MiB each way at the same time, then the client half-closes: the
#   origin sees EOF only after every byte, answers with the SHA-256 of what
#   it got, and closes; the client sees that answer and then EOF;
#   the origin resets mid-stream: the client's tunnel breaks (reset or EOF,
#   never a hang) and the connect log names an error;
#   the connect log says which relay moved the bytes and counts them.
. "$(dirname "$0")/lib.sh"

need_cmd python3 jq

# A TCP origin on loopback: each connection streams SEND pseudo-random bytes
# (seed 7) while reading, and after the client's EOF writes
# "sha256-hex count\n" of what it read and closes; with RESET set it resets
# the connection after 1 MiB instead.
cat >"$TEST_TMP/origin.py" <<'EOF'
import hashlib, os, random, socket, struct, sys, threading
SEND = int(sys.argv[2]); RESET = sys.argv[3] == "reset"
def stream(n):
    rng = random.Random(7)
    while n > 0:
        k = min(n, 1 << 16)
        yield rng.randbytes(k)
        n -= k
def serve(c):
    h, got = hashlib.sha256(), 0
    def reader():
        nonlocal got
        while True:
            b = c.recv(1 << 16)
            if not b:
                return
            h.update(b); got += len(b)
    t = threading.Thread(target=reader); t.start()
    sent = 0
    for chunk in stream(SEND):
        c.sendall(chunk); sent += len(chunk)
        if RESET and sent >= 1 << 20:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close(); return
    t.join()
    c.sendall(("%s %d\n" % (h.hexdigest(), got)).encode()); c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(8)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

# The client: CONNECT through the proxy, then send SEND bytes (seed 9) while
# reading, half-close, read to EOF. Prints "sha256-of-stream bytes|answer"
# or the way the tunnel ended ("reset" / "eof after N").
cat >"$TEST_TMP/client.py" <<'EOF'
import hashlib, random, socket, sys, threading
proxy, target, send, expect = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
h, p = proxy.rsplit(":", 1)
c = socket.create_connection((h, int(p)), timeout=30)
c.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
head = b""
while b"\r\n\r\n" not in head:
    b = c.recv(1)
    if not b: print("no answer"); sys.exit(1)
    head += b
if not head.startswith(b"HTTP/1.1 200"): print("refused", head.split(b"\r\n")[0].decode()); sys.exit(1)
def writer():
    rng = random.Random(9); n = send
    try:
        while n > 0:
            k = min(n, 1 << 16); c.sendall(rng.randbytes(k)); n -= k
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
t = threading.Thread(target=writer); t.start()
data = bytearray()
try:
    while True:
        b = c.recv(1 << 20)
        if not b: break
        data += b
except ConnectionResetError:
    print("reset after", len(data)); sys.exit(0)
except socket.timeout:
    print("timeout after", len(data)); sys.exit(0)
t.join()
if len(data) < expect: print("eof after", len(data)); sys.exit(0)
print("%s %d|%s" % (hashlib.sha256(data[:expect]).hexdigest(), expect, data[expect:].decode().strip()))
EOF

SIZE=$((48 << 20))
python3 "$TEST_TMP/origin.py" "$TEST_TMP/port" "$SIZE" ok >"$TEST_TMP/origin.log" 2>&1 &
ORIGIN_PID=$!
on_exit stop_pid "$ORIGIN_PID"
python3 "$TEST_TMP/origin.py" "$TEST_TMP/rport" "$SIZE" reset >"$TEST_TMP/rorigin.log" 2>&1 &
RORIGIN_PID=$!
on_exit stop_pid "$RORIGIN_PID"
for f in port rport; do
  for _ in $(seq 50); do [ -s "$TEST_TMP/$f" ] && break; sleep 0.1; done
done
PORT=$(cat "$TEST_TMP/port")
RPORT=$(cat "$TEST_TMP/rport")

# What the two ends should see.
want=$(python3 - "$SIZE" <<'EOF'
import hashlib, random, sys
n = int(sys.argv[1])
def digest(seed):
    rng, h, left = random.Random(seed), hashlib.sha256(), n
    while left > 0:
        k = min(left, 1 << 16); h.update(rng.randbytes(k)); left -= k
    return h.hexdigest()
print("%s %d|%s %d" % (digest(7), n, digest(9), n))
EOF
)

for relay in splice buffers; do
  splice=true
  [ "$relay" = buffers ] && splice=false
  cat >"$TEST_TMP/shoald-$relay.yaml" <<EOF
proxy:
  connectPorts: [$PORT, $RPORT]
  spliceTunnels: $splice
EOF
  start_shoald "$TEST_TMP/shoald-$relay.yaml"
  mark=$(log_mark "$(shoal_log)")

  info "$relay: $((SIZE >> 20)) MiB each way at once, then the client half-closes"
  got=$(timeout 60 python3 "$TEST_TMP/client.py" "127.0.0.1:$SHOALD_PROXY_PORT" "127.0.0.1:$PORT" "$SIZE" "$SIZE") ||
    fail "$relay: client failed: $got"
  assert_eq "$got" "$want" "$relay: what each end received (stream digest|origin's digest of the upload)"

  info "$relay: the origin resets mid-stream"
  got=$(timeout 60 python3 "$TEST_TMP/client.py" "127.0.0.1:$SHOALD_PROXY_PORT" "127.0.0.1:$RPORT" "$SIZE" "$SIZE") ||
    fail "$relay: client failed after the reset: $got"
  case "$got" in
    "reset after "* | "eof after "*) ;;
    *) fail "$relay: a reset origin should break the tunnel, client saw: $got" ;;
  esac

  for _ in $(seq 50); do
    [ "$(log_since "$(shoal_log)" "$mark" | jq -c 'select(.msg == "connect")' | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  lines=$(log_since "$(shoal_log)" "$mark" | jq -c 'select(.msg == "connect")')
  ok=$(jq -c "select(.host == \"127.0.0.1:$PORT\")" <<<"$lines")
  assert_eq "$(jq -r .relay <<<"$ok")" "$relay" "$relay: relay named in the connect log"
  assert_eq "$(jq -r .route <<<"$ok")" tunnel "$relay: route"
  # Up: the CONNECT request and the client's bytes; down: the stream and
  # the answer.
  up=$(jq -r .bytes_up <<<"$ok")
  if [ "$up" -lt "$SIZE" ] || [ "$up" -ge $((SIZE + 512)) ]; then
    fail "$relay: bytes_up $up, want $SIZE + the CONNECT request"
  fi
  [ "$(jq -r .bytes_down <<<"$ok")" -gt "$SIZE" ] || fail "$relay: bytes_down $(jq -r .bytes_down <<<"$ok") <= $SIZE"
  [ "$(jq -r '.error // ""' <<<"$ok")" = "" ] || fail "$relay: a clean tunnel logged an error: $ok"
  bad=$(jq -c "select(.host == \"127.0.0.1:$RPORT\")" <<<"$lines")
  [ -n "$bad" ] || fail "$relay: no connect line for the reset tunnel"
  [ -n "$(jq -r '.error // ""' <<<"$bad")" ] || fail "$relay: the reset tunnel's connect line has no error: $bad"
  shoald_alive "$relay tunnels"
  stop_shoald "$SHOALD_PID"
done
info "PASS"
