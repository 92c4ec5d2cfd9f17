"""Which arm of an online experiment a user is in, decided from the user id alone.

Every scorer replica and every restart must put a user in the same arm without
sharing state, so the arm is a function of (experiment, user): weighted rendezvous
hashing. Each arm draws a uniform number from a hash of (experiment, arm, user); the
arm with the smallest ``-ln(u) / share`` wins, which picks arm *i* with probability
``share_i / sum(shares)``. Its point over a split of ranges: stopping an arm (leaving
it out of ``--arms``) moves only that arm's users, and spread over the others in
proportion to their shares; nobody else changes arm.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from stream import schemas

#: An arm is a policy name on the policies topic (RECSYS_POLICY_NAME's rule).
ARM_NAME = re.compile(schemas.POLICY_NAME)
#: Most arms one experiment may have (each costs a hash per request and a policy follower).
MAX_ARMS = 8


class ArmsError(ValueError):
    """An ``--arms`` value that cannot be served; the message says what to write instead."""


@dataclass(frozen=True)
class Arms:
    """The arms of one experiment and their shares of users (weights; they need not sum to 100)."""

    shares: tuple[tuple[str, float], ...]
    experiment: str = "default"

    def __post_init__(self) -> None:
        if not self.shares:
            raise ArmsError("an experiment needs at least one arm")
        if len(self.shares) > MAX_ARMS:
            raise ArmsError(f"{len(self.shares)} arms; at most {MAX_ARMS}")
        names = [name for name, _ in self.shares]
        for name in names:
            if not ARM_NAME.match(name):
                raise ArmsError(f"arm {name!r} is not a policy name (letters, digits, '.', '_', '-', at most 128)")
        if len(set(names)) != len(names):
            raise ArmsError(f"arm names repeat: {', '.join(names)}")
        for name, share in self.shares:
            if not (math.isfinite(share) and share > 0):
                raise ArmsError(f"arm {name}: share {share} must be a positive number")
        if not ARM_NAME.match(self.experiment):
            raise ArmsError(f"experiment name {self.experiment!r} must be letters, digits, '.', '_' or '-'")

    @classmethod
    def parse(cls, spec: str, experiment: str = "default") -> Arms:
        """``A=50,B=50`` (shares), or ``A,B`` (equal shares)."""
        shares = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                raise ArmsError(f"empty arm in {spec!r}; write NAME=SHARE,NAME=SHARE (e.g. A=50,B=50)")
            name, sep, share = part.partition("=")
            try:
                value = float(share) if sep else 1.0
            except ValueError:
                raise ArmsError(f"arm {name}: share {share!r} is not a number") from None
            shares.append((name.strip(), value))
        return cls(tuple(shares), experiment)

    @classmethod
    def single(cls, name: str) -> Arms:
        """No experiment: every user in the one arm (what a scorer without ``--arms`` serves)."""
        return cls(((name, 1.0),))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.shares]

    def share_of(self, name: str) -> float:
        """The arm's fraction of users."""
        total = sum(share for _, share in self.shares)
        return dict(self.shares)[name] / total

    def assign(self, user_id: str) -> str:
        """The user's arm: the same in every process and on every restart while the arms stay."""
        if len(self.shares) == 1:
            return self.shares[0][0]
        best, best_key = self.shares[0][0], math.inf
        for name, share in self.shares:
            key = -math.log(_uniform(self.experiment, name, user_id)) / share
            if key < best_key:
                best, best_key = name, key
        return best

    def describe(self) -> str:
        total = sum(share for _, share in self.shares)
        return ", ".join(f"{name} {share / total:.0%}" for name, share in self.shares)


def _uniform(experiment: str, arm: str, user_id: str) -> float:
    """A number in (0, 1) from the hash of (experiment, arm, user): never 0, so its logarithm is finite."""
    digest = hashlib.blake2b(f"{experiment}\x00{arm}\x00{user_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64
