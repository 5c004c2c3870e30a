#!/bin/bash
# The Debian package: tools/build-deb.sh (what `make deb` runs) builds it from
# this build; dpkg -i installs it on this machine (PID 1 is not systemd, so
# nothing may start by itself); the installed shoald, started by hand on test
# ports with a test configuration, hijacks the registry fixture and a curl
# blob GET and an ORAS pull through it work; dpkg -r keeps the conffiles and
# dpkg -P removes everything: no file of the package in /usr, no /etc/shoal,
# no data or log directory, no unit enablement link.
#
# Skips (touching nothing) when a shoal package, /etc/shoal, /var/lib/shoal
# or /var/log/shoal already exists here: those belong to someone else.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd dpkg dpkg-deb dpkg-shlibdeps fakeroot curl jq groff
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
if dpkg-query -W -f='${Status}' shoal 2>/dev/null | grep -qv 'not-installed'; then
  skip "a shoal package is already on this machine; not touching it"
fi
for d in /etc/shoal /var/lib/shoal /var/log/shoal; do
  [ ! -e "$d" ] || skip "$d exists here already; the purge check would remove it"
done
fixture_up

info "build the package"
deb=$("$SHOAL_ROOT/tools/build-deb.sh" "$BUILD" "$TEST_TMP") || fail "tools/build-deb.sh failed"
version=$(cat "$SHOAL_ROOT/VERSION")
assert_eq "$(dpkg-deb -f "$deb" Package)" shoal "package name"
assert_eq "$(dpkg-deb -f "$deb" Version)" "$version" "package version"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libuv1 libmbedtls14 libhyperscan5 libyaml-0-2 libbpf1; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$TEST_TMP/conffiles"
assert_eq "$(sort "$TEST_TMP/conffiles" | tr '\n' ' ')" "/etc/logrotate.d/shoald /etc/shoal/shoald.yaml " "conffiles"

had_group=0
getent group shoal >/dev/null && had_group=1
# Whatever happens below, leave the machine as it was.
on_exit "dpkg --purge shoal >/dev/null 2>&1 || true"
[ "$had_group" = 1 ] || on_exit "getent group shoal >/dev/null && groupdel shoal || true"

# dpkg_run ARGS: dpkg, retried while another dpkg or apt holds the lock.
dpkg_run() {
  local deadline=$((SECONDS + 120)) out
  until out=$(dpkg "$@" 2>&1); do
    if grep -q 'lock' <<<"$out" && [ "$SECONDS" -lt "$deadline" ]; then
      sleep 2
      continue
    fi
    echo "$out" >&2
    return 1
  done
  echo "$out" >&2
}

# installed_shoald_pids: PIDs running /usr/sbin/shoald (by executable path).
installed_shoald_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/sbin/shoald ] && echo "${p#/proc/}"
  done
  return 0
}

info "dpkg -i"
dpkg_run -i "$deb" || fail "dpkg -i failed"
dpkg-query -L shoal | sort >"$TEST_TMP/files"
assert_eq "$(/usr/sbin/shoald --version | head -n 1 | grep -c "$version")" 1 "installed shoald --version"
/usr/bin/shoalctl --version >/dev/null || fail "installed shoalctl does not run"
/usr/sbin/shoald --check-config -c /etc/shoal/shoald.yaml >&2 || fail "the packaged default configuration is invalid"
grep -q '^ExecStart=/usr/sbin/shoald -c /etc/shoal/shoald.yaml$' /lib/systemd/system/shoald.service ||
  fail "the packaged unit does not start /usr/sbin/shoald"
for m in shoald shoalctl; do
  out=$(zcat "/usr/share/man/man8/$m.8.gz" | groff -man -ww -z 2>&1) || fail "man page $m.8 does not format"
  [ -z "$out" ] || fail "groff warns about $m.8: $out"
  zcat "/usr/share/man/man8/$m.8.gz" | grep -q "Shoal $version" || fail "$m.8 lacks the version"
done
getent group shoal >/dev/null || fail "postinst did not create the shoal group"
if [ ! -d /var/lib/shoal ] || [ ! -d /var/log/shoal ]; then fail "postinst did not create /var/lib/shoal and /var/log/shoal"; fi
[ -z "$(installed_shoald_pids)" ] || fail "installing started shoald although PID 1 is not systemd"

info "the installed shoald, started by hand, proxies a pull"
site=$TEST_TMP/site-ca
/usr/share/shoal/gen-ca.sh "$site" >&2 || fail "the packaged gen-ca.sh failed"
config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"
mkdir -p "$TEST_TMP/installed"
ln -s /usr/sbin/shoald "$TEST_TMP/installed/shoald"
build_dir=$BUILD
BUILD=$TEST_TMP/installed
start_shoald "$config"
BUILD=$build_dir
[ "$(readlink "/proc/$SHOALD_PID/exe")" = /usr/sbin/shoald ] || fail "the daemon under test is not the installed one"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
proxied() { HTTPS_PROXY=$SHOALD_PROXY https_proxy=$SHOALD_PROXY "$@"; }
token=$(registry_token)
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
code=$(proxied curl -sS -L --cacert "$bundle" -o "$TEST_TMP/blob" -w '%{http_code}' \
  -H "Authorization: Bearer $token" "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob") ||
  fail "curl of the blob through the installed shoald failed"
assert_eq "$code" 200 "blob GET status"
assert_eq "$(sha256_of "$TEST_TMP/blob")" "$blob" "blob digest"
proxied env SSL_CERT_FILE="$bundle" "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TEST_TMP/oras" >/dev/null ||
  fail "ORAS pull through the installed shoald failed"
assert_same_file "$TEST_TMP/oras/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" "SIF pulled through the installed shoald"
assert_log_has '(.msg | startswith("peer task done"))'
/usr/bin/shoalctl --socket "$SHOALD_ADMIN_SOCKET" status >&2 || fail "installed shoalctl status failed"
stop_shoald "$SHOALD_PID"

info "dpkg -r keeps the configuration, dpkg -P removes everything"
dpkg_run -r shoal || fail "dpkg -r failed"
[ ! -e /usr/sbin/shoald ] || fail "dpkg -r left /usr/sbin/shoald"
[ -f /etc/shoal/shoald.yaml ] || fail "dpkg -r removed the conffile /etc/shoal/shoald.yaml"
dpkg_run -P shoal || fail "dpkg -P failed"
left=()
while read -r f; do
  [ -d "$f" ] && continue  # shared directories (/usr/bin, /etc/logrotate.d) stay
  if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done <"$TEST_TMP/files"
[ ${#left[@]} -eq 0 ] || fail "files left after purge: ${left[*]}"
for d in /etc/shoal /usr/share/shoal /usr/share/doc/shoal /var/lib/shoal /var/log/shoal \
  /etc/systemd/system/multi-user.target.wants/shoald.service; do
  if [ -e "$d" ] || [ -L "$d" ]; then fail "$d left after purge"; fi
done
if dpkg-query -W -f='${Status}' shoal 2>/dev/null | grep -qv 'not-installed'; then
  fail "dpkg still knows shoal after purge: $(dpkg-query -W -f='${Status}' shoal)"
fi
info "ok"
