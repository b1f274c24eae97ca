"""Looking through the exception groups that trio nurseries wrap every error in."""

from __future__ import annotations


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (or `exc` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
