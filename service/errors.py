"""Domain errors the application raises for bad input, each naming the fields concerned.
The API maps them to 404/422/429 (service/api/errors.py); the CLI to one line and exit 2."""

from __future__ import annotations

from collections.abc import Sequence


class DomainError(Exception):
    def __init__(self, message: str, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields)

    def __str__(self) -> str:
        return self.message


class NotFound(DomainError, KeyError):
    """An id that is not stored (a product, user, copy text, job or conversation)."""

    def __init__(self, message: str = "not found", fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message, fields)


class Invalid(DomainError, ValueError):
    """Input that cannot be used as given (every item of a batch bad, a failing edit, …)."""


class TooBusy(DomainError):
    """A limit on concurrent work is reached; retry later."""

    retry_after_s = 60
