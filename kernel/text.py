"""Text from a pod, made safe for the administrator's terminal.

Here, in the kernel package (standard library only, nothing imported), so
that `pod exec` and the other commands escape what a pod wrote without
importing PeaFS; peafs.audit uses the same function.
"""

from __future__ import annotations


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal could act on written as an
    escape: C0 controls but newline, DEL, C1 controls (U+0080-U+009F: CSI,
    OSC...) and lone surrogates (bytes that were not UTF-8). Strings a pod
    controls (paths, command lines) reach the administrator's terminal
    only through this: an OSC 52 sequence writes the clipboard, others set
    the title or rewrite what is on the screen."""
    out = []
    for ch in text:
        o = ord(ch)
        if (o < 0x20 and ch != "\n") or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:           # surrogateescape'd byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: str) -> str:
    """``text`` for one line of output: every control escaped, newline too,
    so that a string a pod chose (a command line, a path) can neither act on
    the administrator's terminal nor forge a line of its own."""
    return escape_controls(text).replace("\n", "\\n")


def shown(text: str) -> str:
    """``text`` quoted for a message, by one_line."""
    return f'"{one_line(text)}"'
