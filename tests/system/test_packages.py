"""Every program, Samba module and Debian-only Python module we use comes from a
package that scripts/bootstrap.sh installs.

Why: a machine that has been worked on has packages nobody remembers
installing.  Once, Samba's VFS modules (samba-vfs-modules, only a Recommends
of samba) were missing on fresh machines: every ``vfs objects = btrfs`` share
failed to connect while CI, on a worked-on machine, stayed green.  These tests
make that class of defect fail here, naming the package:

* the manifest below says which Debian package provides each thing; dpkg
  confirms it wherever the thing is installed (so the manifest cannot lie);
* each package is in bootstrap's ``APT_PACKAGES`` or is part of Debian's
  minimal base (Essential or Priority: required, what debootstrap installs);
* the source tree is scanned for programs it runs: one missing from the
  manifest fails the test, so the manifest cannot fall behind the code.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Programs the code, the tests, the demo, the benchmarks and the docs' shell
#: examples run -> Debian package.
PROGRAMS = {
    # Samba
    "smbd": "samba", "samba": "samba", "sharesec": "samba", "smbcontrol": "samba",
    "net": "samba-common-bin", "testparm": "samba-common-bin", "smbpasswd": "samba-common-bin",
    "samba-tool": "samba-common-bin",
    "winbindd": "winbind", "ntlm_auth": "winbind", "wbinfo": "winbind",
    "smbclient": "smbclient", "rpcclient": "smbclient",
    "smbtorture": "samba-testsuite", "ndrdump": "samba-testsuite",
    # filesystems and mounts
    "btrfs": "btrfs-progs", "mkfs.btrfs": "btrfs-progs",
    "mkfs.xfs": "xfsprogs", "mkfs.ext4": "e2fsprogs", "filefrag": "e2fsprogs",
    "mount": "mount", "umount": "mount", "losetup": "mount",
    "findmnt": "util-linux", "unshare": "util-linux", "fallocate": "util-linux",
    # Kerberos (private MIT KDC in the tests)
    "krb5kdc": "krb5-kdc", "kdb5_util": "krb5-kdc", "kadmin.local": "krb5-admin-server",
    "kinit": "krb5-user", "kvno": "krb5-user",
    # the rest
    "restic": "restic", "borg": "borgbackup", "strace": "strace", "pgrep": "procps",
    "pkill": "procps", "systemd-analyze": "systemd",
    "zfs": "zfs-fuse", "zpool": "zfs-fuse", "zfs-fuse": "zfs-fuse",
    "useradd": "passwd", "userdel": "passwd", "groupadd": "passwd", "groupdel": "passwd",
    "rm": "coreutils", "mkdir": "coreutils", "bash": "bash", "dpkg-divert": "dpkg",
    "debootstrap": "debootstrap",
}  # fmt: skip

#: Files outside PATH: Samba's RPC daemons, VFS modules, NSS module (globs) -> package.
FILES = {
    "/usr/libexec/samba/samba-dcerpcd": "samba-common-bin",
    "/usr/libexec/samba/rpcd_fsrvp": "samba-common-bin",
    "/usr/libexec/samba/rpcd_classic": "samba-common-bin",
    "/usr/libexec/samba/rpcd_winreg": "samba-common-bin",
    "/usr/libexec/samba/rpcd_lsad": "samba-common-bin",
    "/usr/lib/*/samba/vfs/btrfs.so": "samba-vfs-modules",
    "/usr/lib/*/samba/vfs/shadow_copy2.so": "samba-vfs-modules",
    "/usr/lib/*/libnss_winbind.so.2": "libnss-winbind",
    "/usr/lib/*/libfuse3.so.3": "libfuse3-3",  # mfusepy loads it (backup mount)
    "/usr/bin/fusermount3": "fuse3",
}

#: Python modules only Debian provides (bound to its C libraries) -> package.
PYTHON_MODULES = {"btrfsutil": "python3-btrfsutil", "gssapi": "python3-gssapi",
                  "samba": "python3-samba"}

#: Programs used only where they already are: systemctl (bootstrap disables Debian's
#: Samba and Kerberos units on a systemd machine), git (fresh-debian.sh clones the
#: checkout it runs in, so git is there).
OPTIONAL = {"systemctl", "git"}

#: Words that are programs on this machine but appear in the code as data.
NOT_PROGRAMS = {"host", "id", "init", "yes", "ls", "true", "false", "test", "write", "read",
                "size"}
#: Code blocks in the docs whose lines are shell commands.
SHELL_FENCES = {"sh", "bash", "console", "shell"}


def _bootstrap_packages(name: str = "APT_PACKAGES") -> set[str]:
    text = (REPO / "scripts" / "bootstrap.sh").read_text()
    m = re.search(rf"\b{name}=\(([^)]*)\)", text)
    assert m, f"scripts/bootstrap.sh has no {name}=(...)"
    return set(m.group(1).split())


@cache
def _base_package(package: str) -> bool:
    """Part of Debian's minimal base: Essential, or Priority: required."""
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                         capture_output=True, text=True, check=False).stdout
    if not out:
        out = subprocess.run(["dpkg-query", "-s", package], capture_output=True, text=True,
                             check=False).stdout
    return bool(re.search(r"^(Essential: yes|Priority: required)$", out, re.M))


@cache
def _owner(path: str) -> str | None:
    """The package dpkg says installed ``path`` (trying /bin <-> /usr/bin aliases)."""
    real = str(Path(path).resolve())
    candidates = [path, real]
    for p in (path, real):
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")):
            if p.startswith(a):
                candidates.append(b + p[len(a):])
            elif p.startswith(b):
                candidates.append(a + p[len(b):])
    for c in dict.fromkeys(candidates):
        proc = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def _needs_dpkg() -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("not a Debian system (no dpkg)")


def _all_packages() -> dict[str, str]:
    return {**{f"program {k}": v for k, v in PROGRAMS.items()},
            **{f"file {k}": v for k, v in FILES.items()},
            **{f"python module {k}": v for k, v in PYTHON_MODULES.items()}}


def test_bootstrap_installs_every_package() -> None:
    """The check that would have caught samba-vfs-modules: it needs nothing installed."""
    _needs_dpkg()
    listed = _bootstrap_packages()
    missing = sorted({f"{pkg} (for {what})" for what, pkg in _all_packages().items()
                      if pkg not in listed and not _base_package(pkg)})
    assert not missing, "scripts/bootstrap.sh does not install: " + ", ".join(missing)


def test_every_program_and_module_is_installed_from_its_package() -> None:
    """After bootstrap, each thing is present and dpkg names the package we declared."""
    _needs_dpkg()
    wrong = []
    for name, pkg in PROGRAMS.items():
        path = shutil.which(name)
        owner = _owner(path) if path else None
        if owner != pkg:
            wrong.append(f"program {name}: " + (f"from {owner}, manifest says {pkg}" if path
                                                  else f"not installed (package {pkg})"))
    for pattern, pkg in FILES.items():
        paths = glob.glob(pattern)
        owner = _owner(paths[0]) if paths else None
        if owner != pkg:
            wrong.append(f"{pattern}: " + (f"from {owner}, manifest says {pkg}" if paths
                                            else f"not installed (package {pkg})"))
    for mod, pkg in PYTHON_MODULES.items():
        spec = importlib.util.find_spec(mod)
        origin = spec.origin if spec and spec.origin else None
        owner = _owner(origin) if origin else None
        if owner != pkg:
            wrong.append(f"python module {mod}: " + (f"from {owner}, manifest says {pkg}"
                                                      if origin else f"not importable ({pkg})"))
    assert not wrong, "; ".join(wrong)


def _programs_in_source(dirs: tuple[str, ...] = ("src", "tests", "bench"),
                        skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Names the code runs: first items of argv-like list/tuple literals, ``which()`` and
    ``missing_tools()`` arguments, ``TOOLS`` tuples; -> first file that names each
    (files in ``skip``, paths relative to the repository, not read)."""
    found: dict[str, str] = {}
    files = [p for d in dirs for p in (REPO / d).rglob("*.py")
             if str(p.relative_to(REPO)) not in skip]
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[ast.expr] = []
            if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) > 1:
                names = node.elts[:1]
            elif isinstance(node, ast.Call):
                f = node.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if fname in ("which", "missing_tools"):
                    names = list(node.args)
            elif (isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple))
                  and any(isinstance(t, ast.Name) and t.id.endswith("TOOLS")
                          for t in node.targets)):
                names = list(node.value.elts)
            for n in names:
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    found.setdefault(n.value, str(path.relative_to(REPO)))
    shell = "\n".join(p.read_text() for p in (REPO / "scripts").glob("*.sh"))
    for word in set(re.findall(r"^\s*([a-z][\w.+-]*)\s", shell, re.M)):
        found.setdefault(word, "scripts/")
    for doc in [*REPO.glob("*.md"), *(REPO / "docs").glob("*.md")]:
        for word in _documented_commands(doc.read_text()):
            found.setdefault(word, str(doc.relative_to(REPO)))
    return {name: where for name, where in found.items()
            if re.fullmatch(r"[\w.+-]+", name) and name not in NOT_PROGRAMS
            and (w := shutil.which(name)) and w.startswith(("/usr/", "/bin/", "/sbin/"))
            and not w.startswith("/usr/local/") and _owner(w) is not None}


def _documented_commands(text: str) -> set[str]:
    """Programs the docs tell an admin to run: the first word of each command in
    ``sh``/``bash`` code blocks (pipes and ``&&`` split, continuations and comments
    skipped)."""
    out: set[str] = set()
    in_shell = continued = False
    fence = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None
            in_shell, continued = fence in SHELL_FENCES, False
            continue
        if not in_shell:
            continue
        command, was_continued = line.strip(), continued
        continued = command.endswith("\\")
        if was_continued or not command or command.startswith("#"):
            continue
        for part in re.split(r"\|\||&&|\||;", command.split(" #")[0]):
            words = [w for w in part.split() if not re.match(r"^[A-Z_]+=", w)]
            if words and words[0] == "sudo":
                words = words[1:]
            if words:
                out.add(words[0])
    return out


def test_manifest_lists_every_program_the_code_runs() -> None:
    _needs_dpkg()
    unlisted = {n: w for n, w in _programs_in_source().items() if n not in {*PROGRAMS, *OPTIONAL}}
    unlisted = {n: w for n, w in unlisted.items() if not _base_package(_owner(shutil.which(n) or "") or "")}
    assert not unlisted, ("programs run by the code but missing from PROGRAMS in "
                          f"tests/system/test_packages.py: {unlisted}")


#: What a file server's install (``bootstrap.sh --server``) may leave out: the demo's
#: and the tests' modules in the package (``remotevss demo``: private Samba on a loop
#: btrfs), and the zfs backend's tools, which come with the machine's own ZFS.
SERVER_SKIPS_FILES = frozenset({"src/remotevss/demo.py", "src/remotevss/loopfs.py"})
SERVER_OPTIONAL = {"zfs", "zpool"}
#: Test tools the docs show how to point at the agent (package named there).
SERVER_DOC_TEST_TOOLS = {"smbtorture"}
#: Modules and files the agent, the client and the backup tool load at run time.
SERVER_FILES = {"/usr/libexec/samba/samba-dcerpcd", "/usr/lib/*/samba/vfs/btrfs.so",
                "/usr/lib/*/samba/vfs/shadow_copy2.so", "/usr/lib/*/libnss_winbind.so.2",
                "/usr/lib/*/libfuse3.so.3", "/usr/bin/fusermount3"}


def test_server_install_has_everything_remotevss_runs() -> None:
    """``bootstrap.sh --server`` installs no test tools; it must still install every
    package the agent, the client and the backup tool (and the docs' commands for
    admins) need, or a file server set up that way fails where CI cannot see it."""
    _needs_dpkg()
    server = _bootstrap_packages("SERVER_PACKAGES")
    assert server <= _bootstrap_packages(), "APT_PACKAGES covers SERVER_PACKAGES"
    runs = _programs_in_source(("src",), SERVER_SKIPS_FILES)
    missing = set()
    for name, where in runs.items():
        if name in SERVER_OPTIONAL | OPTIONAL | SERVER_DOC_TEST_TOOLS:
            continue
        pkg = PROGRAMS.get(name) or _owner(shutil.which(name) or "") or "?"
        if pkg not in server and not _base_package(pkg):
            missing.add(f"{pkg} (for {name}, run by {where})")
    for doc in [*(REPO / "docs").glob("*.md")]:
        for name in _documented_commands(doc.read_text()):
            pkg = PROGRAMS.get(name)
            if (pkg and name not in SERVER_DOC_TEST_TOOLS and pkg not in server
                    and not _base_package(pkg)):
                missing.add(f"{pkg} (for {name}, in {doc.name})")
    for mod, pkg in PYTHON_MODULES.items():
        if pkg not in server:
            missing.add(f"{pkg} (python module {mod})")
    for pattern in SERVER_FILES:
        if FILES[pattern] not in server and not _base_package(FILES[pattern]):
            missing.add(f"{FILES[pattern]} (for {pattern})")
    assert not missing, "bootstrap.sh --server does not install: " + ", ".join(sorted(missing))
