"""Reading a policy file: size limit, text checks, tomllib.

Everything that can go wrong before the document's meaning is looked at
becomes a Problem here: a file too large (refused before reading it whole,
so a policy cannot exhaust the daemon's memory), a binary file, bytes that
are not UTF-8, and TOML syntax errors, with tomllib's line number.
"""

from __future__ import annotations

import os
import re
import tomllib

from .errors import PolicyError, Problem

MAX_BYTES = 16 * 1024 * 1024
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\Z")
_TOML_END = re.compile(r"\s*\(at end of document\)\Z")


def read_bytes(path: os.PathLike | str, shown: str) -> bytes:
    """The file's bytes, or PolicyError if it cannot be read or is too large."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BYTES:
                raise PolicyError([too_large(shown, size)])
            # The size may change between fstat and read (or the file may not
            # be regular): read one byte past the limit to know.
            data = f.read(MAX_BYTES + 1)
    except PolicyError:
        raise
    except IsADirectoryError:
        raise PolicyError([Problem(shown, 0, "is a directory, not a policy file")]) from None
    except OSError as e:
        raise PolicyError([Problem(shown, 0, f"cannot read the policy: {e.strerror}")]) from None
    if len(data) > MAX_BYTES:
        raise PolicyError([too_large(shown, len(data))])
    return data


def too_large(shown: str, size: int) -> Problem:
    return Problem(shown, 0, f"policy file is too large ({size} bytes; the limit is 16 MiB)")


def line_at(data, offset: int) -> int:
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


def decode(data: bytes | str, shown: str) -> str:
    """UTF-8 text of a policy, or PolicyError."""
    if isinstance(data, str):
        if len(data) > MAX_BYTES:  # a cheap bound first: chars <= bytes
            raise PolicyError([too_large(shown, len(data))])
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PolicyError([Problem(shown, line_at(data, e.start),
                                       "is not UTF-8 text (a lone surrogate character)")]) from None
        if len(raw) > MAX_BYTES:
            raise PolicyError([too_large(shown, len(raw))])
        data = raw
    elif len(data) > MAX_BYTES:
        raise PolicyError([too_large(shown, len(data))])
    nul = data.find(b"\0")
    if nul >= 0:
        raise PolicyError([Problem(shown, line_at(data, nul),
                                   "is a binary file (NUL byte), not a policy")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError([Problem(shown, line_at(data, e.start),
                                   f"is not UTF-8 text (byte 0x{data[e.start]:02x})")]) from None
    # A byte-order mark is what some editors put first; TOML does not allow it.
    return text[1:] if text.startswith("\ufeff") else text


def parse(text: str, shown: str) -> dict:
    """tomllib's dict, or PolicyError with the syntax error's line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = 1
        m = _TOML_AT.search(message)
        if m:
            line = int(m.group(1))
            message = message[:m.start()] + f" (column {m.group(2)})"
        else:
            m = _TOML_END.search(message)
            if m:
                line = text.count("\n") + (0 if text.endswith("\n") else 1)
                message = message[:m.start()] + " (at the end of the file)"
        raise PolicyError([Problem(shown, max(line, 1), f"not valid TOML: {message}")]) from None
