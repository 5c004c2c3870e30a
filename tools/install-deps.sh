#!/bin/bash
# Installs the Debian 12 packages Shoal needs, quietly and only when missing.
#   tools/install-deps.sh build   compilers and libraries (make, make run)
#   tools/install-deps.sh test    build + real servers and clients the tests drive
#   tools/install-deps.sh bench   test + competitors and load tools for make bench
# Package scripts are forbidden from starting services (policy-rc.d exits 101):
# nginx, squid and docker-registry would otherwise listen on public ports.
set -euo pipefail

build_pkgs=(
  g++ make pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  libuv1-dev libmbedtls-dev libhyperscan-dev libcjson-dev libyaml-dev
  libssl-dev libhttp-parser-dev libcmocka-dev openssl ca-certificates
  dpkg-dev fakeroot
)
test_pkgs=(
  curl docker-registry skopeo golang-go golang-oras-oras-go-dev siftool nginx-light
  python3 iproute2 iptables systemd procps jq util-linux tinyproxy libclang-rt-14-dev
  groff-base
)
bench_pkgs=(squid-openssl nginx-light wrk gnuplot-nox)

want=("${build_pkgs[@]}")
case "${1:-build}" in
  build) ;;
  test) want+=("${test_pkgs[@]}") ;;
  bench) want+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2

policy=/usr/sbin/policy-rc.d
restore=""
if [ -e "$policy" ]; then
  restore=$(mktemp); cp -p "$policy" "$restore"
fi
cleanup() {
  if [ -n "$restore" ]; then mv -f "$restore" "$policy"; else rm -f "$policy"; fi
}
trap cleanup EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy"
chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-deps: apt-get failed installing: ${missing[*]}" >&2
  rm -f "$log"; exit 1
fi
rm -f "$log"
