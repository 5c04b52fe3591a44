"""Where texts come from: the embedded passage, text files (Gutenberg boilerplate stripped) and
seeded passages of exactly L tokens cut from them."""
from __future__ import annotations

import random
import re
from pathlib import Path

from cramfast.errors import CramfastError

# Jane Austen, Pride and Prejudice (1813), opening lines; public domain.
DEFAULT_PASSAGE = ("It is a truth universally acknowledged, that a single man in possession "
                   "of a good fortune, must be in want of a wife.")
# What `python -m cramfast compress` crams when given no text (make demo): opening lines of
# public-domain novels. Famous lines, which the LM partly knows already (see ce_no_mem).
DEMO_PASSAGES = (
    DEFAULT_PASSAGE,
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness.",                                   # Dickens, 1859
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    # Tolstoy, Anna Karenina, tr. Constance Garnett (1901)
    "You will rejoice to hear that no disaster has accompanied the commencement of an "
    "enterprise which you have regarded with such evil forebodings.",  # Shelley, 1818
)

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def read_text_file(path, encoding: str = "utf-8") -> str:
    """A text file's body, without a Project Gutenberg header and footer if present."""
    path = Path(path)
    if not path.is_file():
        raise CramfastError(f"{path}: no such file")
    try:
        text = path.read_text(encoding=encoding)
    except LookupError:
        raise CramfastError(f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)") from None
    except UnicodeDecodeError as exc:
        hint = "; old Gutenberg files are often cp1252 (--encoding cp1252)" \
            if encoding.lower().replace("-", "") == "utf8" else ""
        raise CramfastError(f"{path}: not {encoding.upper()} text ({exc.reason} at byte "
                            f"{exc.start}){hint}") from None
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    if not text.strip():
        raise CramfastError(f"{path}: empty text")
    return text.strip()


def text_files(path) -> list[Path]:
    """A file, or the *.txt files of a directory (sorted), that hold text to compress."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if not p.name.upper().startswith("LICENSE"))
        if not files:
            raise CramfastError(f"{path}: directory holds no .txt files")
        return files
    if not path.exists():
        raise CramfastError(f"{path}: no such file or directory")
    return [path]


def paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def sample_passages(tokenizer, text: str, length: int, k: int, seed: int) -> list[list[int]]:
    """``k`` passages of exactly ``length`` tokens, each starting at a paragraph start picked with
    ``seed`` (paragraphs joined until long enough), distinct starts where the text allows; a
    text with too few paragraphs (e.g. no blank lines) gives the rest from seeded, disjoint
    windows of its tokens."""
    if k < 1 or length < 2:
        raise CramfastError(f"passages: need k >= 1 of length >= 2 tokens, got {k} of {length}")
    paras = paragraphs(text)
    rng = random.Random(seed)
    starts = list(range(len(paras)))
    rng.shuffle(starts)
    passages = []
    for start in starts:
        ids = _tokens_from(tokenizer, paras, start, length)
        if ids is not None:
            passages.append(ids)
        if len(passages) == k:
            return passages
    ids = tokenizer(" ".join(paras))["input_ids"]
    windows = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)]
    rng.shuffle(windows)
    passages += [w for w in windows if w not in passages][:k - len(passages)]
    if len(passages) < k:
        raise CramfastError(f"the text ({len(ids)} tokens) yields {len(passages)} distinct "
                            f"passages of {length} tokens, {k} asked for: ask for fewer or "
                            "shorter passages")
    return passages


def _tokens_from(tokenizer, paras, start, length):
    chunk = ""
    for p in paras[start:]:
        chunk = f"{chunk}\n\n{p}" if chunk else p
        ids = tokenizer(chunk)["input_ids"]
        if len(ids) >= length:
            return ids[:length]
        if len(chunk) > 40 * length:  # runaway: tokens per char is far below this
            return None
    return None


def random_word_text(n_words: int, seed, vocab: list[str] | None = None) -> str:
    """The paper's random-word text: ``n_words`` words drawn uniformly, with replacement, from
    ``vocab`` (default: wordfreq's 100,000 most frequent English words), joined by spaces. The
    draws are sequential from ``random.Random(seed)``, so the text for n words is a prefix of the
    text for more words with the same seed (tokenize and cut to L tokens, from 5 * L words)."""
    if vocab is None:
        try:
            from wordfreq import top_n_list
        except ImportError:
            raise CramfastError("random-word text needs the wordfreq package (pip install "
                                "wordfreq), or a word list (one word a line) as vocab") from None
        vocab = top_n_list("en", 100_000)
    if not vocab:
        raise CramfastError("random-word text: the vocabulary is empty")
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) for _ in range(n_words))
