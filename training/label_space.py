"""Whether a results file speaks the ground truth's label space (category ids and names).

A results file from a model trained on another dataset scores 0 AP without any error; the
evaluator's callers (``ctvis evaluate``, the dataset evaluation loop) warn or refuse instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.ytvis_json import GroundTruth, Track


@dataclass(frozen=True)
class LabelSpaceMismatch:
    """How the label space of a results file differs from the ground truth's.

    Attributes:
        unknown_ids: Category ids of results entries that the ground truth does not list
            (the evaluator drops those entries, as YTVOSeval does).
        renamed: ``(category id, results' name, ground truth's name)`` for ids whose results
            entries name another class than the ground truth (those entries are scored
            against the ground truth's class of that id), by id.
        affected: Results entries with an unknown id or a different name.
        total: Results entries.
        gt_ids: The ground truth's category ids, sorted.
    """

    unknown_ids: tuple[int, ...]
    renamed: tuple[tuple[int, str, str], ...]
    affected: int
    total: int
    gt_ids: tuple[int, ...]

    def message(self, limit: int = 5) -> str:
        """One line naming the mismatch (at most ``limit`` ids and names of each kind)."""
        parts = []
        if self.unknown_ids:
            parts.append(f"category ids {_listed(self.unknown_ids, limit)}")
        if self.renamed:
            names = [
                f"{cid}: {ours!r} (ground truth: {theirs!r})" for cid, ours, theirs in self.renamed
            ]
            parts.append(f"names {_listed(names, limit)}")
        return (
            f"results use {' / '.join(parts)} not in the ground truth's label space "
            f"({len(self.gt_ids)} categories, ids {_id_span(self.gt_ids)}); "
            f"{self.affected} of {self.total} results entries are dropped or scored against "
            "another class"
        )


def _listed(items: Sequence[object], limit: int) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return "{" + shown + more + "}"


def _id_span(ids: Sequence[int]) -> str:
    if ids and list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}-{ids[-1]}"
    return _listed(ids, 10)


def _same_name(a: str, b: str) -> bool:
    """Class names equal up to case and ``_`` / ``-`` / space: ``giant_panda`` = ``Giant panda``."""

    def norm(name: str) -> str:
        return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()

    return norm(a) == norm(b)


def label_space_mismatch(gt: GroundTruth, results: Sequence[Track]) -> LabelSpaceMismatch | None:
    """Compare the results' label space with the ground truth's; None when they agree.

    Every results ``category_id`` must be one of the ground truth's categories, and where an
    entry gives a ``category_name`` it must be that category's name (compared up to case and
    ``_`` / ``-`` / space). A ground-truth category without a ``name`` (read as its id) is
    checked by id only. Results without names are thus checked by id only: a model whose
    classes happen to reuse the ground truth's ids cannot be told from them.
    """
    unknown: set[int] = set()
    renamed: dict[int, tuple[str, str]] = {}
    affected = 0
    for track in results:
        cid = track.category_id
        theirs = gt.categories.get(cid)
        if theirs is None:
            unknown.add(cid)
            affected += 1
        elif (
            track.category_name is not None
            and theirs != str(cid)  # parse_ground_truth names an unnamed category by its id
            and not _same_name(track.category_name, theirs)
        ):
            renamed.setdefault(cid, (track.category_name, theirs))
            affected += 1
    if not affected:
        return None
    return LabelSpaceMismatch(
        unknown_ids=tuple(sorted(unknown)),
        renamed=tuple((cid, *renamed[cid]) for cid in sorted(renamed)),
        affected=affected,
        total=len(results),
        gt_ids=tuple(sorted(gt.categories)),
    )
