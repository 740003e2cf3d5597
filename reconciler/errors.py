"""One error tree for everything ray-gitops raises on purpose.

Every such error derives from `RayGitopsError`, whose message is one line a person can act on
(the CLI prints it as is, with its documented exit code). Messages start with the file or object
they are about. `TemporaryError` is retried with backoff, `PermanentError` waits for a new revision
(or a fixed setting), `ValidationError` pinpoints bad input in Git.
"""
from __future__ import annotations

from dataclasses import dataclass


class RayGitopsError(Exception):
    """Base of every error ray-gitops raises on purpose."""


class ConfigError(RayGitopsError):
    """A setting (flag, RAY_GITOPS_* variable, config file) is wrong; names the setting."""


class TemporaryError(RayGitopsError):
    """A failure that may pass by itself (network, a target still starting)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TemporaryError):
    """The target itself cannot be reached (connection refused, timed out): the environment's remaining
    changes are not tried this cycle (each would fail the same way and say so in the log)."""


class PermanentError(RayGitopsError):
    """A failure that only a change in Git (or on the target) can fix."""


@dataclass(frozen=True)
class ValidationError:
    """One precise problem in the Git content: where it is and what is wrong."""

    file: str
    reason: str
    document: int | None = None
    object: str = ""
    path: str = ""

    def __str__(self) -> str:
        where = self.file if self.document is None else f"{self.file}#{self.document}"
        parts = [_cut(where)] + [_cut(p) for p in (self.object, self.path) if p]
        return f"{': '.join(parts)}: {self.reason}"


def _cut(text: str, most: int = 256) -> str:
    """A name or path from Git as printed in an error: a key or a name can be a megabyte long."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


class InvalidEnvironment(PermanentError):
    """An environment whose content failed to render or validate; nothing of it is applied."""

    def __init__(self, environment: str, errors: list[ValidationError]) -> None:
        self.environment = environment
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"environment {environment}: {len(errors)} validation error(s)\n{lines}")
