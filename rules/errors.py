"""What a policy that cannot be used looks like to its caller.

Every problem found in a policy file is a :class:`Problem` (file, line,
message); :class:`PolicyError` carries all of them at once, so a user fixes a
file in one round instead of one error per run.
"""

from __future__ import annotations

from typing import NamedTuple


class Problem(NamedTuple):
    """One thing wrong with a policy file.

    ``line`` is 1-based. Line 0 means "the file as a whole" (it cannot be read,
    or is too large to be parsed): ``str()`` then omits the line number.
    """

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """A policy file that must not be used; ``errors`` lists every problem."""

    def __init__(self, errors: list[Problem]):
        self.errors = list(errors)
        super().__init__("\n".join(str(p) for p in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.errors)
