#!/usr/bin/env bash
# Runs one command of this project on a brand-new minimal Debian 12, the way a
# new machine would: nothing installed beyond Debian's minimal base, the
# project as committed (a fresh clone of HEAD), root, this machine's package
# sources.  Why: a machine that has been worked on hides a missing install
# step (a package installed by hand once keeps every later run green).
#
#   bash scripts/fresh-debian.sh                        # bash scripts/demo.sh
#   bash scripts/fresh-debian.sh bash scripts/test.sh -x -q
#
# Run as root from anywhere inside the clone.  The minimal root is made once
# with debootstrap from this machine's own Debian mirror (about a minute) and
# kept as a tarball in $REMOTEVSS_FRESH_CACHE (default
# /var/cache/remotevss/fresh-debian); each run unpacks a new copy under
# $TMPDIR, runs the command in a mount namespace of its own (its /dev, /proc,
# /sys bound from the host so that loop devices and FUSE work, a tmpfs /tmp)
# and deletes the copy afterwards.  Inside, REMOTEVSS_FRESH_ROOT=1 is set:
# tests that change the machine's own configuration (/etc/samba, systemd
# units) run only there.
# Exit status: the command's; 2 when the fresh root could not be made.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "fresh-debian: run it as root" >&2; exit 2; }
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cmd=("$@")
((${#cmd[@]})) || cmd=(bash scripts/demo.sh)
cache=${REMOTEVSS_FRESH_CACHE:-/var/cache/remotevss/fresh-debian}
base=$cache/bookworm-minbase.tar

mirror_of_host() {
  local m
  m=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  printf '%s' "$m"
}

if [ ! -s "$base" ]; then
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  mirror=$(mirror_of_host)
  [ -n "$mirror" ] || { echo "fresh-debian: no Debian mirror in this machine's apt sources" >&2; exit 2; }
  mkdir -p "$cache"
  build=$(mktemp -d "$cache/build.XXXXXX")
  echo "fresh-debian: making the minimal Debian 12 root once (debootstrap from $mirror)..." >&2
  if ! debootstrap --variant=minbase --include=ca-certificates,git bookworm "$build" "$mirror" \
       >"$cache/debootstrap.log" 2>&1; then
    echo "fresh-debian: debootstrap failed, see $cache/debootstrap.log" >&2
    rm -rf --one-file-system "$build"; exit 2
  fi
  tar -C "$build" -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf --one-file-system "$build"
fi

root=$(mktemp -d "${TMPDIR:-/var/tmp}/remotevss-fresh.XXXXXX")
cleanup() {
  # A process the command left running inside the root would outlive the run: end it.
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill -KILL "$pid" 2>/dev/null
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
chmod 755 "$root"   # it becomes /: every user must be able to walk it

# What every machine here has: package sources, name resolution, certificates, pip settings.
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list /etc/apt/sources.list.d "$root/etc/apt/" 2>/dev/null || true
for f in /etc/resolv.conf /etc/hosts /etc/hostname; do
  [ -e "$f" ] && cp -L "$f" "$root/etc/"
done
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
if [ -d /root/.config/pip ]; then mkdir -p "$root/root/.config" && cp -a /root/.config/pip "$root/root/.config/"; fi
mkdir -p "$root/srv" "$root/opt"
git clone -q "$top" "$root/srv/project"
envs=(HOME=/root LANG=C.UTF-8 REMOTEVSS_FRESH_ROOT=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
[ -n "${CI:-}" ] && envs+=("CI=$CI")
while IFS= read -r v; do envs+=("$v"); done < <(env | grep -E '^PIP_' || true)

echo "fresh-debian: running '${cmd[*]}' in a fresh Debian 12 root ($root)" >&2
start=$(date +%s)
set +e
# The namespace's mounts vanish with it: nothing is left bound on the host.
unshare --mount --propagation private -- bash -c '
  r=$1; shift
  mount --bind "$r" "$r" && mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" \
    && mount --rbind /sys "$r/sys" && mount -t tmpfs -o mode=1777 tmpfs "$r/tmp" || exit 2
  if [ -d /opt ]; then mount --bind -o ro /opt "$r/opt"; fi   # local wheel caches pip may name
  exec chroot "$r" /usr/bin/env -i "$@"' _ "$root" "${envs[@]}" \
  bash -c 'cd /srv/project && exec "$@"' _ "${cmd[@]}"
rc=$?
set -e
echo "fresh-debian: '${cmd[*]}' exited $rc after $(( $(date +%s) - start )) s" >&2
exit $rc
