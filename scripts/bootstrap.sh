#!/usr/bin/env bash
# Installs everything remotevss needs on Debian 12 (as root) and builds .venv.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv systemd python3-btrfsutil btrfs-progs xfsprogs util-linux
              samba samba-common-bin samba-vfs-modules samba-testsuite winbind smbclient restic borgbackup strace procps debootstrap
              python3-samba python3-gssapi krb5-user krb5-kdc krb5-admin-server
              samba-ad-provision samba-dsdb-modules libnss-winbind
              fuse3 libfuse3-3 zfs-fuse)
missing=()
for p in "${APT_PACKAGES[@]}"; do
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
if command -v systemctl >/dev/null; then
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
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  # pip warns about this machine's unreachable extra indexes; keep real errors visible.
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v '^WARNING: Location' >&2)
  touch "$stamp"
fi
