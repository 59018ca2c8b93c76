#!/usr/bin/env bash
# Installs everything remotevss needs on Debian 12 (as root) and builds .venv.
# Idempotent: a second run installs nothing new.
#
#   bash scripts/bootstrap.sh            # what the tests, the demo and the benchmarks need
#   bash scripts/bootstrap.sh --server   # a file server: only what remotevss runs
#
# --server installs no test tools (no KDC, AD provisioning, restic, borg, zfs-fuse,
# smbtorture, debootstrap), no pip test extras, and stops no daemon: the machine's
# Samba is the one the agent serves behind.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=all
case "${1:-}" in
  "") ;;
  --server) mode=server ;;
  *) echo "usage: bash scripts/bootstrap.sh [--server]" >&2; exit 2 ;;
esac

# What the agent, the client and the backup tool run (and the docs tell an admin to run).
SERVER_PACKAGES=(python3 python3-venv python3-btrfsutil btrfs-progs util-linux
                 samba samba-common-bin samba-vfs-modules winbind libnss-winbind smbclient
                 python3-samba python3-gssapi krb5-user fuse3 libfuse3-3)
# Everything: the server's packages plus the tests', the demo's and the benchmarks'.
APT_PACKAGES=(python3 python3-venv systemd python3-btrfsutil btrfs-progs xfsprogs util-linux
              samba samba-common-bin samba-vfs-modules samba-testsuite winbind smbclient restic borgbackup strace procps debootstrap
              python3-samba python3-gssapi krb5-user krb5-kdc krb5-admin-server
              samba-ad-provision samba-dsdb-modules libnss-winbind
              fuse3 libfuse3-3 zfs-fuse)
wanted=("${APT_PACKAGES[@]}")
if [ "$mode" = server ]; then wanted=("${SERVER_PACKAGES[@]}"); fi
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a daemon when its package is installed; the tests and the demo start
# private instances.  Only the daemons of packages installed just now are stopped and
# disabled: a package that was already there is the machine's (a file server's own
# smbd, nmbd and winbind serve its users) and is left as it is.
declare -A DAEMONS=([samba]="smbd nmbd samba-ad-dc" [winbind]=winbind [krb5-kdc]=krb5-kdc
                    [krb5-admin-server]=krb5-admin-server [zfs-fuse]=zfs-fuse)
if [ "$mode" = all ] && command -v systemctl >/dev/null; then
  for p in "${missing[@]}"; do
    for svc in ${DAEMONS[$p]:-}; do
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
  done
fi

# Debian's python3 carries btrfsutil bound to the system libbtrfsutil;
# the PyPI build of btrfsutil does not match Debian 12's library.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
hash=$(sha256sum pyproject.toml | cut -c1-16)
stamp=.venv/.installed-$hash target='.[test]'
if [ "$mode" = server ]; then
  target=.
  [ -e "$stamp" ] || stamp=.venv/.installed-server-$hash  # the full install covers it
fi
if [ ! -e "$stamp" ]; then
  # pip warns about this machine's unreachable extra indexes; keep real errors visible.
  .venv/bin/pip install -q --disable-pip-version-check -e "$target" 2> >(grep -v '^WARNING: Location' >&2)
  touch "$stamp"
fi
