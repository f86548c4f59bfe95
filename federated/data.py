"""Clients' data: disjoint identities of one face set, equal or unequal shares.

A site (client) holds all images of the people assigned to it and none of anyone else's, so no identity is
seen by two clients. The identity of an image file is its stem matched against ``identity_pattern``
(group 1, or the whole match): the default ``^(.*)$`` makes every file its own person, which is right for the
embedded NBA set (one photo per player). For a folder named ``<person>_<k>.png`` use ``^(.*)_\\d+$``.

Shares: equal (identities dealt out as evenly as possible) or unequal (client ``c`` gets a share proportional
to ``c + 1``, i.e. 1 : 2 : ... : N, at least one identity each). The assignment is a function of
(the sorted identity list, number of clients, mode, seed), so the server and every client compute the same one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_IDENTITY_PATTERN = r"^(.*)$"


def identity_of(path: str | Path, pattern: str = DEFAULT_IDENTITY_PATTERN) -> str:
    """Identity of an image file: group 1 (or the whole match) of ``pattern`` on the file stem.

    Raises:
        ValueError: the stem does not match (names the file and the pattern).
    """
    stem = Path(path).stem
    match = re.search(pattern, stem)
    if match is None:
        raise ValueError(f"{path}: file name does not match --identity_pattern {pattern!r}")
    return match.group(1) if match.groups() else match.group(0)


def client_shares(num_identities: int, num_clients: int, unequal: bool = False) -> list[int]:
    """Number of identities per client (sums to ``num_identities``; every client >= 1).

    Raises:
        ValueError: fewer identities than clients, or fewer than 1 client.
    """
    if num_clients < 1:
        raise ValueError(f"--num_clients must be >= 1, got {num_clients}")
    if num_identities < num_clients:
        raise ValueError(f"{num_identities} identities cannot be split over {num_clients} clients "
                         "(each needs at least one person)")
    weights = np.arange(1, num_clients + 1, dtype=np.float64) if unequal else np.ones(num_clients)
    spare = num_identities - num_clients  # one each first, the rest by weight (largest remainders)
    exact = spare * weights / weights.sum()
    shares = np.floor(exact).astype(int)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: spare - int(shares.sum())]] += 1
    return [int(s) + 1 for s in shares]


def partition_identities(files: Sequence[str | Path], num_clients: int, unequal: bool = False, seed: int = 0,
                         identity_pattern: str = DEFAULT_IDENTITY_PATTERN) -> list[list[int]]:
    """Indices into ``files`` per client, with disjoint identities.

    Args:
        files: image paths (their order defines the indices).
        num_clients: N >= 1.
        unequal: shares 1 : 2 : ... : N instead of equal.
        seed: seed of the shuffle of identities.
        identity_pattern: see :func:`identity_of`.

    Returns:
        N sorted lists of indices; together they cover every file exactly once.
    """
    ids: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        ids.setdefault(identity_of(f, identity_pattern), []).append(i)
    names = sorted(ids)
    order = np.random.default_rng([int(seed), 16]).permutation(len(names))
    shares = client_shares(len(names), num_clients, unequal)
    out, start = [], 0
    for share in shares:
        chosen = [names[k] for k in order[start:start + share]]
        out.append(sorted(i for n in chosen for i in ids[n]))
        start += share
    return out


class SubsetDataset:
    """The items ``indices`` of a dataset (``len`` and ``[i]`` only; what FaceLandmarkSet needs)."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        files = getattr(dataset, "files", None)
        self.files = [files[i] for i in self.indices] if files is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def client_face_set(face_set, indices: Sequence[int]):
    """The :class:`anonymizer.stage1.trainer.FaceLandmarkSet` of one client (images, teacher landmarks)."""
    from anonymizer.stage1.trainer import FaceLandmarkSet

    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("a client without images")
    return FaceLandmarkSet(SubsetDataset(face_set.dataset, idx), face_set.landmarks[idx].numpy(),
                           face_set.found[idx].numpy())
