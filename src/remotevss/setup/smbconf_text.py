"""smb.conf as text, edited in place: comments, order and layout kept.

Why not Samba's own parser here (as samba/conf.py uses for reading): `remotevss
setup samba` changes an admin's file, and the admin must recognise it
afterwards.  libsmbconf's text backend can read but not write, and writing a
file back from loadparm would drop every comment and reorder everything.  So
this module knows just enough of the syntax to change single parameters:
``[section]`` headers, ``name = value`` lines, comments (``#``, ``;``) and
backslash continuations.  Parameter names compare as Samba compares them:
case-insensitive, blanks ignored (``vfs objects`` == ``vfsobjects``).
:func:`logical_lines` is the line syntax; setup/smbconf_files.py follows
``include =`` across files with it (setup and doctor read through that).

Rules of this module: no I/O; every edit is a pure function of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
_PARAM = re.compile(r"^\s*(?P<key>[^=#;\[][^=]*?)\s*=\s*(?P<value>.*?)\s*$")


def norm_key(key: str) -> str:
    return "".join(key.split()).lower()


#: How smb.conf files are decoded: bytes that are not UTF-8 (a Latin-1 comment on
#: an old server; Samba reads them fine) are kept as they are, so a rewrite and
#: --undo give back the same bytes.
ERRORS = "surrogateescape"


def shown(text: str) -> str:
    """``text`` safe to print: bytes that are not UTF-8 as U+FFFD."""
    return text.encode("utf-8", ERRORS).decode("utf-8", "replace")


def line_end(text: str) -> str:
    """The file's line end, kept on rewrite (a file edited on Windows has CRLF)."""
    return "\r\n" if "\r\n" in text else "\n"


@dataclass(frozen=True)
class Line:
    """One logical line that matters: a section header (``key`` None, ``name`` the
    section) or a parameter (``key`` normalized, ``name`` as written)."""

    start: int  # index of its first physical line
    end: int  # index of its last physical line (backslash continuations)
    name: str
    key: str | None
    value: str


def logical_lines(lines: list[str]) -> list[Line]:
    """Headers and parameters of a file's lines, in order (comments and blanks left out)."""
    out: list[Line] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i
        while line.endswith("\\") and i + 1 < len(lines):  # continuation
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        stripped = line.strip()
        if m := _SECTION.match(line):
            out.append(Line(start, i, m["name"].strip(), None, ""))
        elif stripped and stripped[0] not in "#;" and (m := _PARAM.match(line)):
            out.append(Line(start, i, m["key"], norm_key(m["key"]), m["value"]))
        i += 1
    return out


@dataclass
class Section:
    name: str
    header: int  # line index of "[name]" (-1: the implicit global part before any header)
    params: dict[str, tuple[int, str]] = field(default_factory=dict)  # norm key -> (line, value)
    last: int = -1  # last line index that belongs to the section's parameters


class SmbConfText:
    """One smb.conf file's lines, with the parameters located."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.trailing_newline = text.endswith("\n") or not text
        self.eol = line_end(text)
        self._index()

    def _index(self) -> None:
        self.sections: list[Section] = [Section("global", -1)]
        for item in logical_lines(self.lines):
            if item.key is None:
                self.sections.append(Section(item.name, item.start, last=item.start))
            else:
                sec = self.sections[-1]
                sec.params[item.key] = (item.start, item.value)
                sec.last = item.end

    def section(self, name: str) -> Section | None:
        """The last section of that name (Samba merges repeats; [global] may repeat too)."""
        found = [s for s in self.sections if s.name.lower() == name.lower()]
        if name.lower() == "global":
            merged = Section("global", found[-1].header, last=found[-1].last)
            for s in found:
                merged.params.update(s.params)
            return merged
        return found[-1] if found else None

    def share_names(self) -> list[str]:
        seen: dict[str, str] = {}
        for s in self.sections:
            if s.name.lower() != "global":
                seen.setdefault(s.name.lower(), s.name)
        return list(seen.values())

    def get(self, section: str, key: str) -> str | None:
        sec = self.section(section)
        if sec is None:
            return None
        hit = sec.params.get(norm_key(key))
        return hit[1] if hit else None

    def set(self, section: str, key: str, value: str) -> bool:
        """Set ``key = value`` in ``section``; False when it already had that value."""
        sec = self.section(section)
        if sec is None:
            raise KeyError(f"no [{section}] section")
        hit = sec.params.get(norm_key(key))
        if hit is not None:
            if hit[1] == value:
                return False
            line = hit[0]
            end = line
            while self.lines[end].endswith("\\"):
                end += 1
            indent = re.match(r"\s*", self.lines[line])
            self.lines[line:end + 1] = [f"{indent.group(0) if indent else ''}{key} = {value}"]
        else:
            at = sec.last + 1 if sec.last >= 0 else 0
            if sec.header == -1 and sec.last < 0:
                self.lines[0:0] = ["[global]"]
                at = 1
            self.lines.insert(at, f"   {key} = {value}")
        self._index()
        return True

    def text(self) -> str:
        return self.eol.join(self.lines) + (self.eol if self.trailing_newline else "")
