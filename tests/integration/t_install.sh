#!/bin/bash
# The admin's install path: `make install` lays out the binaries, default
# configuration, systemd unit and logrotate file; the unit passes
# `systemd-analyze verify`; the installed default configuration is valid;
# tools/gen-ca.sh makes a CA exactly as the Dragonfly guide's openssl steps
# do (RSA 2048, CA:TRUE, key 0600) and refuses to overwrite one.
. "$(dirname "$0")/lib.sh"

need_cmd systemd-analyze openssl
[ -x "$BUILD/shoald" ] || fail "$BUILD/shoald not built"
root=$TEST_TMP/root

info "make install into a staging root"
make -C "$SHOAL_ROOT" --no-print-directory -s BUILD="$BUILD" DESTDIR="$root" PREFIX=/usr/local install >&2 ||
  fail "make install failed"
for f in usr/local/sbin/shoald usr/local/bin/shoalctl etc/shoal/shoald.yaml \
  lib/systemd/system/shoald.service lib/systemd/system/shoal.slice etc/logrotate.d/shoald; do
  [ -f "$root/$f" ] || fail "make install did not install /$f"
done
[ -x "$root/usr/local/sbin/shoald" ] || fail "installed shoald is not executable"
grep -q '^ExecStart=/usr/local/sbin/shoald -c /etc/shoal/shoald.yaml$' "$root/lib/systemd/system/shoald.service" ||
  fail "unit's ExecStart does not name the installed binary"
"$root/usr/local/sbin/shoald" --version >/dev/null || fail "installed shoald does not run"
"$BUILD/shoald" --check-config -c "$root/etc/shoal/shoald.yaml" >&2 || fail "installed default configuration is invalid"

info "systemd-analyze verify (unit pointed at this build's binary, which exists here)"
sed "s|@SBINDIR@|$BUILD|g; s|@BINDIR@|$BUILD|g" "$SHOAL_ROOT/systemd/shoald.service.in" >"$TEST_TMP/shoald.service"
grep -q "^ExecStopPost=-$BUILD/shoalctl cleanup\$" "$TEST_TMP/shoald.service" ||
  fail "unit does not clean up iptables rules on stop (ExecStopPost)"
cp "$SHOAL_ROOT/systemd/shoal-jobs.slice" "$TEST_TMP/shoal.slice"
out=$(systemd-analyze verify "$TEST_TMP/shoald.service" "$TEST_TMP/shoal.slice" 2>&1) ||
  fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warned: $out"

info "a second install keeps an edited configuration"
echo "# edited" >>"$root/etc/shoal/shoald.yaml"
make -C "$SHOAL_ROOT" --no-print-directory -s BUILD="$BUILD" DESTDIR="$root" PREFIX=/usr/local install >&2
grep -q '^# edited$' "$root/etc/shoal/shoald.yaml" || fail "make install overwrote /etc/shoal/shoald.yaml"

info "tools/gen-ca.sh"
"$SHOAL_ROOT/tools/gen-ca.sh" "$TEST_TMP/ca" >&2 </dev/null || fail "gen-ca.sh failed"
assert_eq "$(stat -c %a "$TEST_TMP/ca/ca.key")" 600 "ca.key mode"
openssl x509 -in "$TEST_TMP/ca/ca.crt" -noout -text >"$TEST_TMP/ca.txt"
grep -q 'CA:TRUE' "$TEST_TMP/ca.txt" || fail "ca.crt lacks basicConstraints CA:TRUE"
grep -q 'Public-Key: (2048 bit)' "$TEST_TMP/ca.txt" || fail "ca.crt is not RSA 2048"
[ "$(openssl x509 -in "$TEST_TMP/ca/ca.crt" -noout -modulus)" = "$(openssl rsa -in "$TEST_TMP/ca/ca.key" -noout -modulus 2>/dev/null)" ] ||
  fail "ca.key does not match ca.crt"
if "$SHOAL_ROOT/tools/gen-ca.sh" "$TEST_TMP/ca" >/dev/null 2>&1; then fail "gen-ca.sh overwrote an existing CA"; fi
info "ok"
