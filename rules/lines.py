"""Where each key and table of a TOML document is written (tomllib says not).

``key_lines(text)`` maps key paths to 1-based line numbers:

* ``("pod",)`` -> the line of ``[pod]`` (or of the first key that made the
  table implicitly, e.g. ``pod.name = ...``, if there is no header),
* ``("pod", "name")`` -> the line of the ``name = ...`` key,
* ``("pod", "mount", 0)`` -> the line of the first ``[[pod.mount]]`` header,
* keys of inline tables (``{host = "/usr"}``) at their own line, and an
  inline table inside an array at the line of its ``{``.

Other array elements are not recorded: an error about one points at its key
(``line_of`` falls back to the closest recorded ancestor, and to line 1).

The scanner only runs on text tomllib has already accepted, so it need not
diagnose anything; it must only never lose track of where a string, comment
or bracket ends. It runs only when a policy has problems, keeping ``load``
of a large valid policy a single tomllib pass.
"""

from __future__ import annotations

import re

_BARE = re.compile(r"[A-Za-z0-9_-]+")
# A bare value (number, boolean, date-time with a space before the time).
_SCALAR = re.compile(r"[^,\]}\s#]*(?:[ T][0-9][^,\]}\s#]*)?")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[tuple, int] = {}
        self.explicit: set[tuple] = set()
        self.aot_index: dict[tuple, int] = {}   # array of tables -> current index

    # -- recording ---------------------------------------------------------

    def record(self, path: tuple, line: int) -> None:
        """*path* is defined here; its parents at the latest here."""
        for i in range(1, len(path)):
            prefix = path[:i]
            if prefix not in self.explicit and prefix not in self.lines:
                self.lines[prefix] = line
        if path not in self.explicit:
            self.lines[path] = line
            self.explicit.add(path)

    # -- low level -----------------------------------------------------------

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs, comments (and newlines if *newlines*)."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r":
                self.pos += 1
            elif c == "\n" and newlines:
                self.pos += 1
                self.line += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    # -- strings and keys --------------------------------------------------

    def string(self) -> str:
        """Read a string at pos; return its value (escapes decoded)."""
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, self.pos):
                start = self.pos + 3
                i = start
                while True:
                    if quote == '"""' and text[i] == "\\":
                        i += 2
                        continue
                    if text.startswith(quote, i):
                        # Up to two quotes may end the content: """a""""" .
                        while text.startswith(quote, i + 1):
                            i += 1
                        break
                    i += 1
                raw = text[start:i]
                self.advance(i + 3 - self.pos)
                return _unescape(raw) if quote == '"""' else raw
        quote = text[self.pos]
        i = self.pos + 1
        while text[i] != quote:
            i += 2 if (quote == '"' and text[i] == "\\") else 1
        raw = text[self.pos + 1:i]
        self.pos = i + 1
        return _unescape(raw) if quote == '"' else raw

    def key(self) -> tuple[str, ...]:
        """Read a dotted key at pos."""
        parts = []
        while True:
            self.skip_blank(False)
            c = self.peek()
            if c in "\"'":
                parts.append(self.string())
            else:
                m = _BARE.match(self.text, self.pos)
                parts.append(m.group())
                self.pos = m.end()
            self.skip_blank(False)
            if self.peek() == ".":
                self.pos += 1
                continue
            return tuple(parts)

    # -- values ------------------------------------------------------------

    def value(self, path: tuple) -> None:
        c = self.peek()
        if c in "\"'":
            self.string()
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_blank(True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                if self.peek() == "{":
                    self.lines.setdefault(path + (index,), self.line)
                    self.explicit.add(path + (index,))
                self.value(path + (index,))
                index += 1
                self.skip_blank(True)
                if self.peek() == ",":
                    self.pos += 1
        elif c == "{":
            self.pos += 1
            while True:
                self.skip_blank(True)
                if self.peek() == "}":
                    self.pos += 1
                    return
                line = self.line
                sub = path + self.key()
                self.record(sub, line)
                self.skip_blank(False)
                self.pos += 1          # "="
                self.skip_blank(False)
                self.value(sub)
                self.skip_blank(True)
                if self.peek() == ",":
                    self.pos += 1
        else:
            # Number, boolean, date: ends at a separator.
            m = _SCALAR.match(self.text, self.pos)
            self.pos = max(m.end(), self.pos + 1)

    # -- statements --------------------------------------------------------

    def resolve(self, keys: tuple[str, ...]) -> tuple:
        """Insert the current index after each array of tables in *keys*."""
        path: tuple = ()
        for k in keys:
            path += (k,)
            if path in self.aot_index:
                path += (self.aot_index[path],)
        return path

    def run(self) -> dict[tuple, int]:
        table: tuple = ()
        text = self.text
        while True:
            self.skip_blank(True)
            if self.pos >= len(text):
                return self.lines
            line = self.line
            if text.startswith("[[", self.pos):
                self.pos += 2
                keys = self.key()
                self.pos += 2
                base = self.resolve(keys[:-1]) + (keys[-1],)
                index = self.aot_index.get(base, -1) + 1
                self.aot_index[base] = index
                table = base + (index,)
                self.record(base, line)
                self.record(table, line)
            elif text.startswith("[", self.pos):
                self.pos += 1
                table = self.resolve(self.key())
                self.pos += 1
                self.record(table, line)
            else:
                path = table + self.key()
                self.record(path, line)
                self.skip_blank(False)
                self.pos += 1          # "="
                self.skip_blank(False)
                self.value(path)


def _unescape(raw: str) -> str:
    out = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = raw[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "uU":
            n = 4 if e == "u" else 8
            out.append(chr(int(raw[i + 2:i + 2 + n], 16)))
            i += 2 + n
        else:
            # Line-ending backslash in a multi-line string: skip the
            # newline and the white space after it.
            j = i + 1
            while j < len(raw) and raw[j] in " \t\r\n":
                j += 1
            i = j
    return "".join(out)


def key_lines(text: str) -> dict[tuple, int]:
    """Key path -> line, for TOML *text* that tomllib accepted."""
    return _Scanner(text).run()


def line_of(lines: dict[tuple, int], path: tuple) -> int:
    """The line of *path*, or of its closest recorded ancestor, or 1."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return 1
