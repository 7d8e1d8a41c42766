"""Version policies: which of a model's complete versions it wants loaded.

The three of TensorFlow Serving's `ServableVersionPolicy`: the `latest` n,
`all`, or `specific` version numbers. A policy is a pure function of the
version numbers found on disk, so the source and the tests agree by
construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Latest:
    """The `n` highest version numbers (TF Serving's default, with n = 1)."""

    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"latest needs at least 1 version, got {self.n}")

    def select(self, versions: Iterable[int]) -> list[int]:
        return sorted(versions, reverse=True)[: self.n]

    def __str__(self) -> str:
        return f"latest{{{self.n}}}"


@dataclass(frozen=True)
class All:
    """Every version found."""

    def select(self, versions: Iterable[int]) -> list[int]:
        return sorted(versions, reverse=True)

    def __str__(self) -> str:
        return "all{}"


@dataclass(frozen=True)
class Specific:
    """The listed versions that exist; listed ones not on disk are simply not aspired."""

    versions: frozenset[int]

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("specific needs at least one version")
        bad = sorted(v for v in self.versions if v <= 0)
        if bad:
            raise ValueError(f"specific versions must be positive, got {bad}")

    def select(self, versions: Iterable[int]) -> list[int]:
        return sorted((v for v in versions if v in self.versions), reverse=True)

    def __str__(self) -> str:
        return f"specific{{{sorted(self.versions)}}}"


VersionPolicy = Latest | All | Specific
