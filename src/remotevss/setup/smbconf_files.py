"""smb.conf and the files it includes, read and edited as Samba's loadparm reads them.

Why: many servers keep their shares, or part of ``[global]``, in a file that
smb.conf includes (``include = /etc/samba/shares.conf``).  Read alone, smb.conf
misleads both commands: doctor calls such a share missing, and setup adds a
``[global]`` line that the included file overrides, or a second ``[data]``
section in smb.conf.  So this module follows includes the way Samba 4.17's
``lp_include`` does (checked against ``testparm``):

* an included file is read at the point of its ``include`` line, and its
  section headers change the current section for the rest of the including
  file too (a parameter after the include line belongs to the included file's
  last section);
* a relative path is opened relative to the reading process's working
  directory: ``/`` for smbd under systemd, which is what is used here;
* a file that does not exist is skipped (Samba logs it at level 2 and goes on);
* ``%`` substitutions (``include = /etc/samba/%m.conf``) are per client or per
  user: smbd resolves them per connection, so such a file is not followed here
  and is reported;
* ``include = registry`` is not a file (registry globals: samba/conf.py);
* a cycle makes Samba give up (``Maximum include depth (100) exceeded``) and
  refuse the whole configuration: :class:`IncludeError`;
* ``copy = SHARE`` copies that share's parameters at that point;
* a share section opened again (``[data]`` twice, maybe in two files) keeps
  its parameters but loses its parametric options (``shadow:snapdir``), as
  Samba's ``add_a_service`` frees them.

An edit goes to the file that holds the parameter's effective line; a new
parameter goes into the file of the section's last header (smb.conf for
``[global]``), after a line of that section, never after an ``include`` line
(which may end in another section).  Rules: no I/O but the ``read`` callable.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from remotevss.setup.smbconf_text import line_end, logical_lines, norm_key

MAX_INCLUDE_DEPTH = 100  # Samba's, source3/param/loadparm.c
GLOBAL_NAMES = ("global", "globals")  # Samba's GLOBAL_NAME and GLOBAL_NAME2
#: Where smbd opens a relative include: its working directory, / under systemd.
SMBD_CWD = "/"


class IncludeError(ValueError):
    """The includes make Samba refuse the whole configuration (a cycle, too deep)."""


class EditError(ValueError):
    """An edit that cannot be placed safely in the files (nothing was changed)."""


@dataclass(frozen=True)
class Include:
    """One ``include =`` line and what became of it."""

    file: str  # the file holding the line
    line: int  # its index there
    value: str  # as written
    path: str  # the file it names, resolved ("" for registry and % substitutions)
    status: str  # "followed", "missing", "per-client", "registry"

    @property
    def relative(self) -> bool:
        return bool(self.path) and not self.value.strip().startswith("/")

    @property
    def worth_a_note(self) -> bool:
        """Not followed, or followed where testparm and smbd may disagree."""
        return self.status in ("missing", "per-client") or self.relative

    def describe(self) -> str:
        where = f"{self.file}:{self.line + 1}: include = {self.value}"
        rel = (f"relative: smbd under systemd (working directory /) opens {self.path}, "
               "testparm the file in your directory; better an absolute path")
        if self.status == "missing":
            what = rel if self.relative else self.path
            return f"{where}: {what}: no such file (Samba skips it too)"
        if self.status == "per-client":
            return (f"{where}: %-substitution, resolved by smbd per client or user: "
                    "not followed, the shares and settings in it are not seen here")
        return f"{where}: {rel}" if self.relative else where


@dataclass
class _Param:
    value: str
    file: str
    start: int
    end: int
    own: bool = True  # written in this section (not brought in by copy =)


@dataclass
class _Section:
    name: str  # as first written
    params: dict[str, _Param] = field(default_factory=dict)
    #: (file, line) after which a new parameter of this section can go, in load order
    anchors: list[tuple[str, int]] = field(default_factory=list)
    home: str = ""  # file of the last header


class SmbConfFiles:
    """smb.conf with its includes (see the module doc).

    ``read(path)`` returns a file's text or None when it does not exist; paths
    are as smbd sees them (absolute).  Raises :class:`IncludeError`."""

    def __init__(self, main: str, read: Callable[[str], str | None]) -> None:
        self.main = main
        text = read(main)
        if text is None:
            raise FileNotFoundError(main)
        self._original: dict[str, str] = {}
        self._lines: dict[str, list[str]] = {}
        self._trailing: dict[str, bool] = {}
        self._eol: dict[str, str] = {}
        self._keep(main, text)
        self._read = read
        self._index()

    # ------------------------------------------------------------ reading

    def _index(self) -> None:
        self.sections: dict[str, _Section] = {}
        self.includes: list[Include] = []
        self.loads: dict[str, int] = {}  # file -> times read
        self.registry_include = False  # include = registry in [global]
        self._load(self.main, [], "global")

    def _section(self, name: str) -> _Section:
        key = "global" if name.casefold() in GLOBAL_NAMES else name.casefold()
        return self.sections.setdefault(key, _Section("global" if key == "global" else name))

    def _load(self, path: str, stack: list[str], current: str) -> str:
        """Read ``path`` in section ``current``; returns the section it ends in."""
        self.loads[path] = self.loads.get(path, 0) + 1
        for item in logical_lines(self._lines[path]):
            if item.key is None:
                current = item.name
                again = current.casefold() in self.sections
                sec = self._section(current)
                if again and sec.name != "global":  # Samba's add_a_service: a share
                    # opened again loses its parametric options (shadow:snapdir ...)
                    sec.params = {k: p for k, p in sec.params.items() if ":" not in k}
                sec.anchors.append((path, item.start))
                sec.home = path
                continue
            sec = self._section(current)
            if item.key == "include":
                current = self._include(path, item.start, item.value, [*stack, path], current)
            elif item.key == "copy":
                source = self.sections.get(item.value.casefold())
                if source is not None and source is not sec:
                    for k, p in source.params.items():
                        sec.params[k] = _Param(p.value, p.file, p.start, p.end, own=False)
                sec.anchors.append((path, item.end))
            else:
                sec.params[item.key] = _Param(item.value, path, item.start, item.end)
                sec.anchors.append((path, item.end))
        return current

    def _include(self, path: str, line: int, value: str, stack: list[str], current: str) -> str:
        if value.strip().lower() == "registry":
            self.registry_include |= current.casefold() in GLOBAL_NAMES
            self.includes.append(Include(path, line, value, "", "registry"))
            return current
        if "%" in value:
            self.includes.append(Include(path, line, value, "", "per-client"))
            return current
        target = posixpath.normpath(posixpath.join(SMBD_CWD, value))
        if target in stack:
            chain = " -> ".join([*stack[stack.index(target):], target])
            raise IncludeError(f"include cycle {chain}: Samba stops at include depth "
                               f"{MAX_INCLUDE_DEPTH} and refuses the whole configuration")
        if len(stack) >= MAX_INCLUDE_DEPTH:
            raise IncludeError(f"includes nested deeper than {MAX_INCLUDE_DEPTH} at {path}: "
                               "Samba refuses the whole configuration")
        if target not in self._lines:
            text = self._read(target)
            if text is None:
                self.includes.append(Include(path, line, value, target, "missing"))
                return current
            self._keep(target, text)
        self.includes.append(Include(path, line, value, target, "followed"))
        return self._load(target, stack, current)

    def _keep(self, path: str, text: str) -> None:
        self._original[path] = text
        self._lines[path] = text.splitlines()
        self._trailing[path] = text.endswith("\n") or not text
        self._eol[path] = line_end(text)

    def files(self) -> list[str]:
        """smb.conf, then every included file that exists, in reading order."""
        return list(self._lines)

    def share_names(self) -> list[str]:
        return [s.name for k, s in self.sections.items() if k != "global"]

    def get(self, section: str, key: str) -> str | None:
        """The value Samba ends up with, as written (None: not set)."""
        name = "global" if section.casefold() in GLOBAL_NAMES else section.casefold()
        sec = self.sections.get(name)
        hit = sec.params.get(norm_key(key)) if sec else None
        return hit.value if hit else None

    # ------------------------------------------------------------ editing

    def set(self, section: str, key: str, value: str) -> str | None:
        """Set ``key = value`` in ``section``; returns the file edited (None: it had
        that value).  Raises KeyError for an unknown section, EditError when the
        line would land in a file that is read more than once."""
        name = "global" if section.casefold() in GLOBAL_NAMES else section.casefold()
        sec = self.sections.get(name)
        if sec is None and name != "global":
            raise KeyError(f"no [{section}] section")
        hit = sec.params.get(norm_key(key)) if sec else None
        if hit is not None and hit.value == value:
            return None
        if hit is not None and hit.own:
            self._check_once(hit.file, section, key)
            lines = self._lines[hit.file]
            indent = lines[hit.start][: len(lines[hit.start]) - len(lines[hit.start].lstrip())]
            lines[hit.start:hit.end + 1] = [f"{indent}{key} = {value}"]
            self._index()
            return hit.file
        file, after = self._anchor(sec)
        self._check_once(file, section, key)
        lines = self._lines[file]
        if after == -1:  # no [global] line anywhere: start smb.conf with one
            lines[0:0] = ["[global]", f"   {key} = {value}"]
        else:
            lines.insert(after + 1, f"   {key} = {value}")
        self._index()
        return file

    def _anchor(self, sec: _Section | None) -> tuple[str, int]:
        """(file, line) to insert after; line -1: no place in this section yet."""
        if sec is None or not sec.anchors:
            return self.main, -1
        home = self.main if sec.name == "global" else sec.home
        return ([a for a in sec.anchors if a[0] == home] or sec.anchors)[-1]

    def _check_once(self, file: str, section: str, key: str) -> None:
        if self.loads.get(file, 0) > 1:
            raise EditError(f"{file} is included more than once, so a line there would count "
                            f"more than once: set [{section}] {key} by hand")

    def text(self, path: str) -> str:
        eol = self._eol[path]
        return eol.join(self._lines[path]) + (eol if self._trailing[path] else "")

    def original(self, path: str) -> str:
        return self._original[path]

    def changed(self) -> list[str]:
        """The files whose text an edit changed, in reading order."""
        return [p for p in self._lines if self.text(p) != self._original[p]]
