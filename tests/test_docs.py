"""docs/MATH.md carries the numbered sections 0-14, in order, each with content, and quotes the draw-dependent
numbers that docs/math_numbers.py computes."""
import importlib.util
import re
from pathlib import Path

MATH = Path(__file__).resolve().parent.parent / "docs" / "MATH.md"
SECTIONS = ["Notation", "Experts", "Gating", "Load-balancing", "Capacity", "Classic local experts",
            "Optimisers", "Datasets", "gradient-check protocol", "Errata", "Today's MoE blocks", "EM for mixtures",
            "Multi-task mixtures", "Convolutional experts", "Image layers", "tiny Transformer language model"]


def numbered_sections(text):
    """{number: (title, body)} for every level-2 heading of the form '## <digit>. <title>'.

    A body runs to the next level-2 heading; its sub-headings count as content.
    """
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    out = {}
    for part in parts:
        heading, _, body = part.partition("\n")
        match = re.match(r"(\d+)\. (.+)", heading)
        if match:
            out[int(match.group(1))] = (match.group(2), body)
    return out


def test_math_md_has_sections_0_to_14_in_order_and_none_is_empty():
    text = MATH.read_text(encoding="utf-8")
    sections = numbered_sections(text)
    assert list(sections) == list(range(len(SECTIONS))), f"numbered sections found: {list(sections)}"
    for number, (title, body) in sections.items():
        assert SECTIONS[number].lower() in title.lower(), f"section {number} is titled {title!r}"
        words = re.sub(r"^#+ .*$", "", body, flags=re.M).split()
        assert len(words) >= 50, f"section {number} ({title}) has only {len(words)} words of content"


def test_an_empty_section_is_detected():
    sections = numbered_sections("## 0. Notation\ntext\n## 1. Experts\n\n## 2. Gating\nmore\n")
    assert sections[1] == ("Experts", "\n")
    assert sorted(sections) == [0, 1, 2]


def test_math_md_quotes_the_numbers_docs_math_numbers_computes():
    # Each number that depends on a random draw (§3.4, §8, §9 erratum 003-4) is computed over ten seeds by
    # docs/math_numbers.py (about 2 s); the text must quote exactly what it prints, whitespace aside.
    spec = importlib.util.spec_from_file_location("math_numbers", MATH.parent / "math_numbers.py")
    numbers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(numbers)
    text = re.sub(r"\s+", " ", MATH.read_text(encoding="utf-8"))
    for where, fragment in numbers.quoted().items():
        assert re.sub(r"\s+", " ", fragment) in text, f"MATH.md {where} should say: {fragment}"


def test_the_source_posts_are_called_posts_not_seeds():
    # "seed" means a random seed everywhere; the source documents are "post 000" ... "post 004" (issue 19)
    import re
    root = MATH.parent.parent
    files = [root / "README.md", MATH, *sorted((root / "experiments").glob("*.py")),
             *sorted((root / "numpy_moe").rglob("*.py"))]
    # the words may be split over two lines, with a comment's "#" between them
    pattern = re.compile(r"\bseeds?[\s#]+00[0-4]\b|\bseed-00[0-4]\b|\bthe[\s#]+seed's\b", re.IGNORECASE)
    found = [f"{p.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for p in files
             for text in [p.read_text(encoding="utf-8")] for m in pattern.finditer(text)]
    assert not found, "\n".join(found[:20])
