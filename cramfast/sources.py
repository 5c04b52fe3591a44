"""Where texts come from: the embedded passage, text files (Gutenberg boilerplate stripped),
seeded passages of exactly L tokens cut from them, the paper's random-word texts, and the sources
of a sweep (``open_source``), whose sample i is one text whatever the lengths asked of it."""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from cramfast.errors import CramfastError

# Jane Austen, Pride and Prejudice (1813), opening lines; public domain.
DEFAULT_PASSAGE = ("It is a truth universally acknowledged, that a single man in possession "
                   "of a good fortune, must be in want of a wife.")
# What `python -m cramfast compress` crams when given no text (make demo): opening lines of
# public-domain books. Famous lines, which the LM partly knows already (see ce_no_mem), so
# the demo finishes in well under a minute on two cores.
DEMO_PASSAGES = (
    DEFAULT_PASSAGE,
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness.",                                   # Dickens, 1859
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    # Tolstoy, Anna Karenina, tr. Constance Garnett (1901)
    "In the beginning God created the heaven and the earth.",   # Genesis 1:1, King James Version
)

# a sweep passage starts where at least this much of its book follows, if it can
TAIL_CHARS = 16_000
CHUNKINGS = ("prefix", "paper")   # how FileSource cuts a sweep passage (its docstring)
TOKEN_MARGIN = 8      # tokens beyond L that a window must yield, so that the cut is stable

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
        raise CramfastError(f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, "
                            "latin-1)") from None
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


def joined_text(path, encoding: str = "utf-8") -> str:
    """The text of a file, or of a directory's .txt files joined by blank lines: what the
    optimizer study and the probes sample their passages from."""
    return "\n\n".join(read_text_file(f, encoding) for f in text_files(path))


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
        vocab = _wordfreq_vocab("random-word text needs the wordfreq package (pip install "
                                "wordfreq), or a word list (one word a line) as vocab")
    if not vocab:
        raise CramfastError("random-word text: the vocabulary is empty")
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def _wordfreq_vocab(missing: str) -> list[str]:
    """wordfreq's 100,000 most frequent English words; ``missing``: the error without wordfreq."""
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise CramfastError(missing) from None
    return top_n_list("en", 100_000)


# ---------------------------------------------------------------------------------------------
# sweep sources: sample i of a source is one text whatever the grid, so its lengths are prefixes


class FileSource:
    """Texts from books (files, a folder, or PG-19 records). Sample i is the token stream from the
    i-th start of a seeded shuffle of the paragraph starts (those with at least TAIL_CHARS of
    their book after them, where there are any; the stream wraps at its book's end); a text of
    length L is its first L tokens (``chunking = "prefix"``), or, with ``chunking = "paper"``, the
    paper's chunking: a span from that start is split into sentences, its second half is kept and
    its first L tokens are used."""

    def __init__(self, canonical: str, label: str, books: list[str], chunking: str,
                 sample_seed: int):
        self.canonical, self.label, self.chunking = canonical, label, chunking
        self.books = [paragraphs(b) for b in books]
        starts, fallback = [], []
        for b, paras in enumerate(self.books):
            tail = 0
            for p in range(len(paras) - 1, -1, -1):
                tail += len(paras[p]) + 2
                (starts if tail >= TAIL_CHARS else fallback).append((b, p))
        self.starts = sorted(starts) or sorted(fallback)
        random.Random(f"passages:{sample_seed}").shuffle(self.starts)

    def check(self, samples: int):
        if samples > len(self.starts):
            raise CramfastError(f"{self.label}: yields {len(self.starts)} distinct passages, "
                                f"{samples} samples asked for")

    def stream(self, sample: int, chars: int) -> str:
        """At least ``chars`` characters of sample ``sample``'s text (wrapping at its book's
        end)."""
        b, p = self.starts[sample]
        paras, parts, n = self.books[b], [], 0
        while n < chars:
            parts.append(paras[p])
            n += len(paras[p]) + 2
            p = (p + 1) % len(paras)
        return "\n\n".join(parts)

    def tokens(self, tokenizer, sample: int, length: int) -> list[int]:
        chars = 6 * length + 64
        while True:
            if self.chunking == "paper":
                ids = _paper_chunk(tokenizer, self.stream(sample, max(chars, 24_000)))
            else:
                ids = tokenizer(self.stream(sample, chars))["input_ids"]
            if len(ids) >= length + TOKEN_MARGIN:
                return ids[:length]
            chars *= 2


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]*\s+")


def _paper_chunk(tokenizer, span: str) -> list[int]:
    """The paper's chunking: sentence-split a span, keep its second half."""
    sentences = [s for s in _SENTENCE_END.split(span.replace("\n\n", " ")) if s.strip()]
    return tokenizer(" ".join(sentences[len(sentences) // 2:]))["input_ids"]


class RandomSource:
    """The paper's random-word texts: 5 L words, uniform over the vocabulary, cut to L tokens; the
    words of sample i come from a generator seeded with (sample seed, i)."""

    def __init__(self, vocab: list[str], vocab_id: str, sample_seed: int):
        self.vocab, self.sample_seed = vocab, sample_seed
        self.canonical = f"random:{vocab_id}?sample_seed={sample_seed}"
        self.label = "random"

    def check(self, samples: int):
        pass

    def tokens(self, tokenizer, sample: int, length: int) -> list[int]:
        text = random_word_text(5 * length, f"{self.sample_seed}:{sample}", self.vocab)
        return tokenizer(text)["input_ids"][:length]


def open_source(spec: str, chunking: str = "prefix", sample_seed: int = 0, vocab_file=None):
    """A sweep's source: a text file, a folder of .txt files, "random" or "pg19[:split]". Its
    ``canonical`` name (the store's column ``source``) holds what its texts depend on: the path,
    the chunking and sampling seed, the vocabulary's content hash."""
    opts = f"?chunking={chunking}&sample_seed={sample_seed}"
    if spec == "random":
        if vocab_file:
            try:
                lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
                vocab = [w.strip() for w in lines]
            except (OSError, UnicodeDecodeError) as exc:
                raise CramfastError(f"{vocab_file}: cannot read the word list ({exc})") from None
            vocab, name = [w for w in vocab if w], "vocab"
        else:
            vocab, name = _wordfreq_vocab("source 'random' needs the wordfreq package (pip install "
                                          "wordfreq) or --vocab-file"), "wordfreq-en-100k"
        if not vocab:
            raise CramfastError(f"{vocab_file}: the word list is empty")
        digest = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]
        return RandomSource(vocab, f"{name}-{digest}", sample_seed)
    if spec == "pg19" or spec.startswith("pg19:"):
        split = spec.partition(":")[2] or "test"
        return FileSource(f"pg19:{split}{opts}", "pg19", _pg19_books(split), chunking, sample_seed)
    path = Path(spec)
    if not path.exists():
        raise CramfastError(f"{spec}: no such file or directory (a source is a text file, a folder "
                            "of .txt files, 'random' or 'pg19[:split]')")
    books = [read_text_file(f) for f in text_files(path)]
    kind = "dir" if path.is_dir() else "file"
    return FileSource(f"{kind}:{path.resolve()}{opts}", path.name, books, chunking, sample_seed)


def _pg19_books(split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise CramfastError("source 'pg19' needs the datasets package (pip install datasets) and "
                            "a reachable hub or its cache; or pass a local copy as a folder of "
                            ".txt files") from None
    try:
        records = datasets.load_dataset("deepmind/pg19", split=split)
        return [r["text"] for r in records]
    except Exception as exc:
        raise CramfastError(f"cannot load PG-19 ({split}) through datasets: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
