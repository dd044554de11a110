"""Tests for numpy_moe.data_text: every sequence is a correct sentence of its source's language, the
padding and lengths agree, token types cover the vocabulary, the draw is seeded, bad input is refused."""
import re

import numpy as np
import pytest

from numpy_moe.data_text import (MAX_LEN, SOURCES, TOKEN_TYPES, VOCAB, decode, encode, make_sequence,
                                 synthetic_languages, token_types)


def well_formed(source, text):
    """The definition of each language, checked independently of the generator."""
    assert text[0] == "^" and text[-1] == "$", text
    body = text[1:-1]
    if source == "arithmetic":
        a, op, b, c = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", body).groups()
        return int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) and int(a) < 100 and int(b) < 100
    if source == "brackets":
        stack = []
        for ch in body:
            if ch in "([{":
                stack.append(ch)
            elif ch in ")]}":
                if not stack or "([{".index(stack.pop()) != ")]}".index(ch):
                    return False
            elif not ch.isalpha():
                return False
        return not stack
    sep = ">" if source == "copy" else "<"
    left, right = body.split(sep)
    return 1 <= len(left) <= 8 and right == (left if source == "copy" else left[::-1])


def test_every_sequence_belongs_to_its_source_and_padding_follows_its_end():
    tokens, lengths, source = synthetic_languages(400, seed=3)
    assert tokens.shape == (400, MAX_LEN) and lengths.max() <= MAX_LEN
    assert set(np.unique(source)) == set(range(len(SOURCES)))
    for row, n, s in zip(tokens, lengths, source):
        assert np.all(row[n:] == 0) and np.all(row[:n] != 0)
        assert well_formed(SOURCES[s], decode(row)), (SOURCES[s], decode(row))


def test_seeded_and_types_cover_the_vocabulary():
    a, b = synthetic_languages(20, seed=1), synthetic_languages(20, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], synthetic_languages(20, seed=2)[0])
    kinds = token_types()
    assert kinds[0] == -1 and set(kinds[1:]) == set(range(len(TOKEN_TYPES)))
    assert TOKEN_TYPES[kinds[VOCAB.index("7")]] == "digit" and TOKEN_TYPES[kinds[VOCAB.index("{")]] == "bracket"
    assert decode(encode("^12+7=19$")) == "^12+7=19$"


def test_shared_token_types_occur_in_several_sources():
    # what lets a source specialist be told from a token-type specialist: digits and letters are not owned
    # by one source
    tokens, _, source = synthetic_languages(400, seed=0)
    kinds = token_types()[tokens]
    for kind, owners in [("digit", {"arithmetic", "copy", "reverse"}), ("letter", {"brackets", "copy", "reverse"})]:
        seen = {SOURCES[s] for s in np.unique(np.broadcast_to(source[:, None], kinds.shape)[kinds ==
                                                                                         TOKEN_TYPES.index(kind)])}
        assert seen == owners, kind


def test_bad_input():
    with pytest.raises(ValueError, match="source='poetry'"):
        make_sequence("poetry", np.random.default_rng(0))
    with pytest.raises(ValueError, match=f"length=5 must be at least {MAX_LEN}"):
        synthetic_languages(3, length=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode("hello world")
