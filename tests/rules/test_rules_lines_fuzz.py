"""The line scanner against random TOML documents written in every style.

Documents are generated as text together with the line each key and table
header was written on: bare, basic (with escapes) and literal keys, dotted
keys, [tables], [[arrays of tables]], inline tables, multi-line arrays, and
multi-line strings and comments holding text that looks like headers and
keys. tomllib must accept each document (or the generator is wrong) and the
scanner must find every key on its line, never raising: it runs while a
policy's problems are reported, where a crash would be a traceback.
"""

from __future__ import annotations

import tomllib

from hypothesis import given, settings, strategies as st

from rules.lines import key_lines

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"),
               max_size=8)
LURES = ["[pea.fake]", "x = 1", "[[pod.mount]]", '"/" = "r"', "# not a comment", "'''", '"']


def basic(s: str) -> str:
    out = []
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class Writer:
    def __init__(self, draw):
        self.draw = draw
        self.counter = 0
        self.lines: list[str] = []
        self.expect: dict[tuple, int] = {}

    def unique(self) -> int:
        self.counter += 1
        return self.counter

    def key(self) -> tuple[str, str]:
        """(name, how it is written)."""
        n = self.unique()
        style = self.draw(st.sampled_from(["bare", "basic", "literal"]))
        if style == "bare":
            return f"k{n}", f"k{n}"
        name = self.draw(TEXT) + f"#{n}"
        if style == "literal" and "'" not in name and not any(ord(c) < 0x20 and c != "\t" for c in name):
            return name, f"'{name}'"
        return name, basic(name)

    def scalar(self) -> str:
        kind = self.draw(st.sampled_from(["int", "float", "bool", "date", "basic", "literal",
                                          "ml-basic", "ml-literal"]))
        if kind == "int":
            return self.draw(st.sampled_from(["0", "-17", "1_000", "0x1F", "+3"]))
        if kind == "float":
            return self.draw(st.sampled_from(["1.5", "-0.01", "inf", "6e-3"]))
        if kind == "bool":
            return self.draw(st.sampled_from(["true", "false"]))
        if kind == "date":
            return self.draw(st.sampled_from(["1979-05-27", "1979-05-27T07:32:00Z",
                                              "1979-05-27 07:32:00", "07:32:00"]))
        if kind == "basic":
            return basic(self.draw(TEXT) + self.draw(st.sampled_from(LURES)))
        if kind == "literal":
            return "'" + self.draw(st.sampled_from(LURES[:5])) + "'"
        body = "\n".join(self.draw(st.lists(st.sampled_from(LURES[:5] + ["", "a\\", "b"]),
                                            max_size=3)))
        if kind == "ml-basic":
            body = body.replace("\\", "\\\\")
            return '"""' + body + '"""'
        return "'''" + body + "'''"

    def value(self, path: tuple, line: int, written: str, depth: int) -> str:
        """A value for *path*; *written* is the statement so far (for lines)."""
        kind = self.draw(st.sampled_from(["scalar", "scalar", "array", "inline"] if depth < 2
                                         else ["scalar"]))
        if kind == "scalar":
            return self.scalar()
        if kind == "array":
            items = self.draw(st.integers(0, 3))
            sep = self.draw(st.sampled_from([", ", ",\n  ", ", # c\n"]))
            if self.draw(st.booleans()) and depth < 1:
                # array of inline tables, one per line
                text = "["
                for i in range(items):
                    text += "\n  "
                    here = line + (written + text).count("\n")
                    self.expect[path + (i,)] = here
                    text += self.inline(path + (i,), line, written + text, depth + 1)
                    text += ","
                return text + "\n]"
            return "[" + sep.join(self.scalar() for _ in range(items)) + "]"
        return self.inline(path, line, written, depth + 1)

    def inline(self, path: tuple, line: int, written: str, depth: int) -> str:
        text = "{"
        for i in range(self.draw(st.integers(0, 3))):
            name, shown = self.key()
            text += (", " if i else " ")
            self.expect[path + (name,)] = line + (written + text).count("\n")
            text += shown + " = "
            text += self.value(path + (name,), line, written + text, depth)
        return text + " }"

    def pairs(self, table: tuple) -> None:
        for _ in range(self.draw(st.integers(0, 3))):
            self.filler()
            line = len(self.lines) + 1
            name, shown = self.key()
            path = table + (name,)
            if self.draw(st.integers(0, 4)) == 0:
                sub, sub_shown = self.key()
                self.expect.setdefault(path, line)
                path += (sub,)
                shown = f"{shown} . {sub_shown}"
            self.expect[path] = line
            text = f"{shown} = "
            text += self.value(path, line, text, 0)
            if self.draw(st.booleans()):
                text += "  # trailing [x] = comment"
            self.lines.extend(text.split("\n"))

    def filler(self) -> None:
        for _ in range(self.draw(st.integers(0, 2))):
            self.lines.append(self.draw(st.sampled_from(["", "   ", "# [fake.header]", "\t# x = 1"])))

    def header(self, keys: list[tuple[str, str]], array: bool, index: int | None) -> tuple:
        self.filler()
        shown = " . ".join(s for _, s in keys) if self.draw(st.booleans()) else ".".join(s for _, s in keys)
        path = tuple(k for k, _ in keys)
        self.lines.append(f"[[{shown}]]" if array else f"[ {shown} ]")
        line = len(self.lines)
        if array:
            self.expect.setdefault(path, line)
            path += (index,)
        self.expect[path] = line
        return path


@st.composite
def documents(draw):
    w = Writer(draw)
    w.pairs(())
    for _ in range(draw(st.integers(0, 3))):
        parent = w.key()
        w.header([parent], False, None)  # an explicit parent table, keys below
        w.pairs((parent[0],))
        for _ in range(draw(st.integers(0, 2))):
            child = w.key()
            w.pairs(w.header([parent, child], False, None))
        if draw(st.booleans()):
            aot = w.key()
            for i in range(draw(st.integers(1, 3))):
                w.pairs(w.header([parent, aot], True, i))
                if draw(st.booleans()):
                    # a sub-table of the array's latest element
                    sub = w.key()
                    w.filler()
                    w.lines.append(f"[{parent[1]}.{aot[1]}.{sub[1]}]")
                    path = (parent[0], aot[0], i, sub[0])
                    w.expect[path] = len(w.lines)
                    w.pairs(path)
    return "\n".join(w.lines) + "\n", w.expect


@settings(max_examples=400, deadline=None)
@given(documents())
def test_scanner_finds_every_key_in_random_documents(doc):
    text, expect = doc
    tomllib.loads(text)  # the generator writes valid TOML only
    got = key_lines(text)
    for path, line in expect.items():
        assert got.get(path) == line, (path, line, text)
