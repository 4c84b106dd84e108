"""Errors that reach the user as one clear message (exit status 2) instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: data, config or arguments. The message names the file or option and the fix."""


class DataError(UserError):
    """A problem with the dataset on disk. Carries every problem found, not only the first."""

    def __init__(self, problems: list[str] | str, hint: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        lines = self.problems[:50]
        more = len(self.problems) - len(lines)
        text = "\n".join(f"  - {p}" for p in lines)
        if more > 0:
            text += f"\n  ... and {more} more"
        header = "dataset problem:" if len(self.problems) == 1 else f"{len(self.problems)} dataset problems:"
        super().__init__(f"{header}\n{text}" + (f"\n{hint}" if hint else ""))
