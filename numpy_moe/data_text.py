"""Synthetic character-level "languages" for the language-model study (MATH.md §15.6); an edge module
(it imports NumPy and returns NumPy arrays; the models move them to the backend).

Four sources, each a small formal language whose next character is partly predictable, mixed in one
stream with every sequence labelled by its source, so that what an expert specialises in can be
measured (by source, "topic", or by the type of the token it routes):

- ``arithmetic``: ``12+7=19``, ``40-13=27`` (operands 0-99, the difference never negative): the digits
  after ``=`` follow from the ones before.
- ``brackets``: balanced ``()[]{}`` strings, depth at most 4, a letter after an opening bracket one time
  in four: ``([a]{})``; every closing bracket is determined by the stack.
- ``copy``: 1-8 letters and digits, ``>``, the same again: ``a3kb>a3kb``.
- ``reverse``: 1-8 letters and digits, ``<``, the same reversed: ``a3kb<bk3a``.

Token types are shared across sources: digits occur in arithmetic, copy and reverse, letters in
brackets, copy and reverse, the boundaries ``^`` (start) and ``$`` (end) everywhere; only the operators,
brackets and separators belong to one source each. Id 0 is the padding ``_``.
"""
import numpy as np

from .backend import default_rng
from .validation import check_positive_int

PAD, BOS, EOS = "_", "^", "$"
LETTERS = "abcdefghjk"
VOCAB = PAD + BOS + EOS + "0123456789" + "+-=" + "()[]{}" + LETTERS + "><"
SOURCES = ("arithmetic", "brackets", "copy", "reverse")
TOKEN_TYPES = ("boundary", "digit", "operator", "bracket", "letter", "separator")
_TYPE_OF = {BOS: 0, EOS: 0, **{c: 1 for c in "0123456789"}, **{c: 2 for c in "+-="},
            **{c: 3 for c in "()[]{}"}, **{c: 4 for c in LETTERS}, ">": 5, "<": 5}
MAX_LEN = 19  # the longest sequence any source makes, boundaries included (copy / reverse of 8)
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def encode(text):
    """Characters -> ids (int64 array); every character must be in VOCAB."""
    bad = sorted(set(text) - set(VOCAB))
    if bad:
        raise ValueError(f"text has characters {bad} outside the vocabulary {VOCAB!r}")
    return np.array([VOCAB.index(c) for c in text], dtype=np.int64)


def decode(ids):
    """Ids -> characters, padding dropped; every id must be an integer in [0, len(VOCAB))."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":  # 1.7 would be truncated to 1, True read as 1
        raise TypeError(f"ids has dtype {ids.dtype}; expected integer token ids")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(VOCAB)):  # -1 would read VOCAB from the end
        raise ValueError(f"ids has values in [{int(ids.min())}, {int(ids.max())}]; expected ids in "
                         f"[0, {len(VOCAB) - 1}]")
    return "".join(VOCAB[int(i)] for i in ids.ravel() if int(i) != 0)


def token_types():
    """(V,) int: the index in TOKEN_TYPES of each id's type (-1 for the padding)."""
    return np.array([_TYPE_OF.get(c, -1) for c in VOCAB], dtype=np.int64)


def _brackets(rng):
    out, stack = [], []
    target = int(rng.integers(1, 6))  # pairs to open
    opened = 0
    while opened < target or stack:
        if opened < target and len(stack) < 4 and (not stack or rng.random() < 0.5):
            b = "([{"[int(rng.integers(3))]
            out.append(b)
            stack.append(b)
            opened += 1
            if rng.random() < 0.25:
                out.append(LETTERS[int(rng.integers(len(LETTERS)))])
        else:
            out.append(_PAIRS[stack.pop()])
    return "".join(out)


def make_sequence(source, rng):
    """One sequence of ``source`` (a name in SOURCES) as text, boundaries included: ``^12+7=19$``."""
    if source == "arithmetic":
        a, b = int(rng.integers(100)), int(rng.integers(100))
        body = f"{a}+{b}={a + b}" if rng.random() < 0.5 else f"{max(a, b)}-{min(a, b)}={abs(a - b)}"
    elif source == "brackets":
        body = _brackets(rng)
    elif source in ("copy", "reverse"):
        chars = LETTERS + "0123456789"
        s = "".join(chars[int(i)] for i in rng.integers(len(chars), size=int(rng.integers(1, 9))))
        body = f"{s}>{s}" if source == "copy" else f"{s}<{s[::-1]}"
    else:
        raise ValueError(f"source={source!r} must be one of {SOURCES}")
    return BOS + body + EOS


def synthetic_languages(n_sequences, seed=None, length=MAX_LEN):
    """``n_sequences`` sequences, each from a source drawn uniformly, right-padded to ``length``.

    Returns
    -------
    tokens : (n, length) int64 ids, 0 after each sequence's end. lengths : (n,) real tokens per sequence
    (boundaries included). source : (n,) int64 index in SOURCES.
    """
    n = check_positive_int(n_sequences, "n_sequences")
    length = check_positive_int(length, "length")
    if length < MAX_LEN:
        raise ValueError(f"length={length} must be at least {MAX_LEN}, the longest sequence the sources make")
    rng = default_rng(seed)
    source = rng.integers(len(SOURCES), size=n)
    tokens = np.zeros((n, length), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i, s in enumerate(source):
        ids = encode(make_sequence(SOURCES[s], rng))
        tokens[i, :len(ids)] = ids
        lengths[i] = len(ids)
    return tokens, lengths, source.astype(np.int64)
