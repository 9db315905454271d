"""Whether a model learned from another's predictions (``lmpress audit --teacher``).

A student distilled from a teacher inherits the teacher's mistakes. On human text, take the positions where the
teacher's likeliest next token is wrong (not the token the text has) and a reference model, one not suspected and
trained apart on data of the kind, is right: how often is the suspect's likeliest token the teacher's wrong one? A
model taught by the data has no reason to say what the data did not; a model taught by the teacher does. The same
count with the roles swapped (the reference repeating the teacher where the suspect is right) is the baseline.

The finding is the difference of the two shares, with a bootstrap interval over the documents' windows; the suspect
is flagged when the whole interval lies above ``MARGIN``. Counting top choices where the other model is right is
deliberate. The suspect's bits on text the teacher writes, against its bits on human text (each beside the
reference's), also reward a model for being less sure of itself; and a plain share of the teacher's mistakes
repeated rewards a weaker model for guessing the commonest tokens, as an unrelated teacher's mistakes do: both
flagged a student of an unrelated teacher in the tests' setting (docs/ANALYSIS.md has the numbers). Every model must
share the teacher's tokenizer, as distilling from its predictions needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .analysis import percentile_interval
from .float_engine import FloatModel

WINDOW = 256  # tokens a scored window (each its own context, from the start token)
MAX_WINDOWS = 256
MARGIN = 0.05  # how far above zero the whole interval of the difference must lie to flag the suspect


@dataclass
class Lineage:
    """What ``trace`` counted and found."""

    windows: int
    suspect_chances: int  # positions where the teacher is wrong and the reference right
    suspect_repeats: float  # the share of them where the suspect's likeliest token is the teacher's
    reference_chances: int  # positions where the teacher is wrong and the suspect right
    reference_repeats: float
    difference: float  # suspect_repeats − reference_repeats
    interval: tuple[float, float]  # its 95 % bootstrap interval over the windows
    flagged: bool


def windows(teacher: FloatModel, documents: Iterable[bytes], most: int = MAX_WINDOWS) -> list[list[int]]:
    """The documents' tokens (the teacher's tokenizer) in windows of up to ``WINDOW``, at most ``most`` of them
    spread evenly over all there are."""
    out = []
    for data in documents:
        ids = teacher.tokenize(data) or []
        out += [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW) if len(ids[i : i + WINDOW]) > 1]
    if len(out) > most:
        out = [out[i] for i in np.linspace(0, len(out) - 1, most).round().astype(int)]
    return out


def likeliest(model: FloatModel, ids: list[int]) -> torch.Tensor:
    """``model``'s likeliest next token at each position of ``ids`` (after the start token): [len(ids)]."""
    x = torch.tensor([[model.start_token, *ids[:-1]]], device=model.device)
    with torch.inference_mode():
        return model.model(input_ids=x).logits[0].argmax(-1).cpu()


def check_tokenizers(teacher: FloatModel, *models: FloatModel) -> None:
    vocabulary = teacher.tokenizer.get_vocab()
    for m in models:
        if m.tokenizer.get_vocab() != vocabulary:
            raise ValueError(
                f"{m.name} does not share the teacher's tokenizer: tracing compares the models' choices of token, "
                f"and only a model with the teacher's tokenizer can be distilled from its predictions"
            )


def trace(
    teacher: FloatModel,
    suspect: FloatModel,
    reference: FloatModel,
    documents: Iterable[bytes],
    most: int = MAX_WINDOWS,
    progress: Callable[[int, int], None] | None = None,
) -> Lineage:
    """Whether ``suspect`` repeats ``teacher``'s mistakes on ``documents`` more often than ``reference`` does.
    ``progress(done, total)`` is told of each window scored."""
    check_tokenizers(teacher, suspect, reference)
    scored = windows(teacher, documents, most)
    counts = np.zeros((len(scored), 4), np.int64)  # the suspect's chances and repeats, then the reference's
    for i, ids in enumerate(scored):
        if progress is not None:
            progress(i, len(scored))
        actual = torch.tensor(ids)
        wrong, s, r = (likeliest(m, ids) for m in (teacher, suspect, reference))
        mistakes = wrong != actual
        counts[i] = [
            int((mistakes & (r == actual)).sum()),
            int((mistakes & (r == actual) & (s == wrong)).sum()),
            int((mistakes & (s == actual)).sum()),
            int((mistakes & (s == actual) & (r == wrong)).sum()),
        ]
    total = counts.sum(0)
    if len(scored) < 2 or total[0] == 0 or total[2] == 0:
        raise ValueError(
            f"the documents give {len(scored)} windows, {total[0]} positions where the teacher is wrong and the "
            f"reference right, {total[2]} where it is wrong and the suspect right: tracing needs at least 2 windows "
            "and some of each"
        )
    shares = total[[1, 3]] / total[[0, 2]]
    low, high = difference_interval(counts)
    return Lineage(
        len(scored),
        int(total[0]),
        float(shares[0]),
        int(total[2]),
        float(shares[1]),
        float(shares[0] - shares[1]),
        (low, high),
        bool(low > MARGIN),
    )


def difference_interval(counts: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The bootstrap interval of (Σ c1 / Σ c0) − (Σ c3 / Σ c2) over the rows (windows) of ``counts`` [n, 4]."""

    def difference(sums: np.ndarray) -> np.ndarray:
        return sums[:, 1] / np.maximum(sums[:, 0], 1) - sums[:, 3] / np.maximum(sums[:, 2], 1)

    return percentile_interval(counts, difference, level, seed)
