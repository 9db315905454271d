"""Guesses of the next tokens (``codec.drafts``): what they guess, and how many a step checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmpress.codec import drafts


def test_successors_follow_the_longest_known_context_across_rows_and_the_dictionary():
    guesser = drafts.Successors(rows=2, primer=(7, 8, 9, 10))
    for token in (1, 2, 3, 4, 1, 2, 3):
        guesser.add(0, token)
    assert guesser.guess(0, 3) == [4, 1, 2]  # 1 2 3 was followed by 4, then 2 3 4 by 1, 3 4 1 by 2
    assert guesser.guess(0, 0) == []
    assert guesser.guess(1, 3) == []  # a row with nothing decoded has no context
    for token in (8, 9):
        guesser.add(1, token)
    assert guesser.guess(1, 2) == [10]  # the dictionary's 8 9 10; nothing ever followed 9 10
    guesser.add(1, 2)
    guesser.add(1, 3)
    assert guesser.guess(1, 1) == [4]  # row 0's 2 3 4: contexts are shared by every row


def test_the_most_recent_successor_wins():
    guesser = drafts.Successors(rows=1)
    for token in (5, 6, 1, 5, 6, 2, 5, 6):
        guesser.add(0, token)
    assert guesser.guess(0, 1) == [2]


@given(st.floats(0, 1), st.floats(0, 1), st.integers(1, 24), st.integers(0, drafts.MOST))
def test_draft_length_is_within_bounds(first, later, rows, most):
    assert 0 <= drafts.draft_length(first, later, rows, most) <= most


def test_draft_length_checks_more_guesses_the_more_often_they_are_right():
    lengths = [drafts.draft_length(p, p, 1, drafts.MOST) for p in (0.0, 0.2, 0.5, 0.8, 0.95, 1.0)]
    assert lengths == sorted(lengths) and lengths[0] == 0 and lengths[-1] == drafts.MOST
    assert drafts.draft_length(0.9, 0.9, 24, drafts.MOST) < drafts.draft_length(0.9, 0.9, 1, drafts.MOST)
    assert drafts.draft_length(0.5, 0.99, 1, drafts.MOST) > drafts.draft_length(0.5, 0.5, 1, drafts.MOST)
