"""``python -m cramfast.study optimizer``: steps to lossless under candidate optimizer settings.

Every candidate runs on the same texts, seeds and inits, all in one batched optimization (each
slot carries its own settings), so the comparison costs one run and shares its noise. Learning
rates are given as multiples of std(embedding matrix), so a candidate means the same thing on
models whose embeddings have other scales (the paper's lr 1e-2 is 0.074 std on SmolLM2-135M).

Prints, per (length, n_mem, candidate): lossless rate, median and p90 steps over all texts
(a text that never got lossless counts with the steps it burned), and token-steps spent; writes
the table (markdown, CSV) and a plot of steps per candidate to --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cramfast
from cramfast import sources
from cramfast.cli.flags import add_flags
from cramfast.cli.threads import set_threads
from cramfast.cli.tools import Parser, csv_ints, run
from cramfast.errors import CramfastError
from cramfast.metrics import CAPACITY_THRESHOLD, capacity
from cramfast.presets import PRESETS
from cramfast.report.tables import markdown_table, write_csv
from cramfast.settings import PER_TEXT, TextSettings, parse_settings, preset_settings, split

# The default candidates. A candidate is settings joined by "+", each key=value of the per-text
# settings (settings.PER_TEXT), optionally after a preset's name (else over "paper"); lr may be
# given as a multiple of std(E) ("0.2std").
CANDIDATES = ("paper", "lr=0.2std", "lr=0.5std", "lr=0.5std+decay_steps=300",
              "lr=0.2std+stall_steps=100", "lr=0.5std+decay_steps=300+stall_steps=100")

# a bad setting's error names the flag that sets it: a candidate's, or the study's budget
SETTING_FLAGS = dict(dict.fromkeys(PER_TEXT, "--candidates"),
                     max_steps="--max-steps", patience="--patience")


def parse_candidate(spec: str) -> dict:
    """Every per-text setting of one candidate: settings joined by "+", e.g.
    "lr=0.5std+warmup=10", applied to a preset named first ("fast+stall_steps=150": the
    preset's optimizer with that change) or, with no preset named, to "paper". The study's
    budget (max_steps, patience) applies to every candidate."""
    name, *rest = parts = spec.split("+")
    if name not in PRESETS:
        name, rest = "paper", parts
    changes = parse_settings(rest)
    if set(changes) - set(PER_TEXT):
        raise CramfastError(f"candidate {spec!r}: {', '.join(set(changes) - set(PER_TEXT))} "
                            "is set for the whole study batch, not per candidate")
    full = split(preset_settings(name, **changes))[0].to_dict()
    return {k: full[k] for k in PER_TEXT if k not in ("max_steps", "patience")}


def run_optimizer_study(model, token_lists_by_length: dict, n_mems, candidates: dict,
                        seed: int = 0, texts_out: list | None = None, **optim):
    """Rows of {length, n_mem, candidate, lossless, median_steps, p90_steps, token_steps, ...};
    one record per text and candidate is appended to ``texts_out`` when given."""
    lm = cramfast.load_model(model)
    rows = []
    for length, token_lists in token_lists_by_length.items():
        for n_mem in n_mems:
            texts, per_text, names = [], [], []
            for name, cand in candidates.items():
                for ids in token_lists:
                    texts.append(ids)
                    per_text.append(cand)
                    names.append(name)
            start = time.perf_counter()
            # each candidate's per-text settings apply over "paper"; one attempt per text
            results = cramfast.compress(texts, model=lm, n_mem=n_mem, seed=seed, preset="paper",
                                        per_text=per_text,
                                        **{"max_slots": len(texts), "fill_slots": 0, **optim})
            seconds = time.perf_counter() - start
            for name in candidates:
                mine = [r for r, n in zip(results, names) if n == name]
                rows.append(summarize(length, n_mem, name, mine, seconds))
                if texts_out is not None:
                    texts_out += [dict(length=length, n_mem=n_mem, candidate=name, text=i,
                                       n_tokens=r.n_tokens, steps=r.steps,
                                       stop_reason=r.stop_reason, accuracy=r.accuracy,
                                       exact=r.exact, restarts=r.restarts,
                                       margin=round(r.margin, 4), decode_retries=r.decode_retries)
                                  for i, r in enumerate(mine)]
    return rows


def summarize(length, n_mem, name, results, batch_seconds):
    steps = sorted(r.steps for r in results)
    return dict(length=length, n_mem=n_mem, candidate=name, lr=results[0].settings["lr"],
                texts=len(results), lossless=sum(r.exact for r in results),
                mean_accuracy=round(statistics.mean(r.accuracy for r in results), 4),
                median_steps=statistics.median(steps),
                p90_steps=steps[min(len(steps) - 1, round(0.9 * (len(steps) - 1)))],
                token_steps=sum(r.steps * (r.n_tokens + n_mem) for r in results),
                restarts=sum(r.restarts for r in results),
                decode_retried=sum(r.decode_retries > 0 for r in results),
                batch_seconds=round(batch_seconds, 1))


def markdown(rows) -> str:
    """The study's rows as a markdown table, one column per key of the first row."""
    cols = list(rows[0])
    return markdown_table(cols, [[_fmt(r[c]) for c in cols] for r in rows])


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def capacity_lines(rows) -> list[str]:
    """Per (n_mem, candidate): the paper's capacity (largest L with mean accuracy >= 0.99),
    only over the lengths this study tried and within its step budget: a lower bound."""
    out = []
    for n_mem, name in dict.fromkeys((r["n_mem"], r["candidate"]) for r in rows):
        mine = [r for r in rows if (r["n_mem"], r["candidate"]) == (n_mem, name)]
        cap = capacity((r["length"], r["mean_accuracy"]) for r in mine)
        lengths = [r["length"] for r in mine]
        found = cap if cap else f"< {min(lengths)}"
        out.append(f"capacity, m={n_mem}, {name}: {found} (largest L with mean accuracy >= "
                   f"{CAPACITY_THRESHOLD:g} "
                   f"among L = {','.join(map(str, lengths))}; a lower bound)")
    return out


def plot(rows, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = sorted({(r["length"], r["n_mem"]) for r in rows})
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    width = 0.8 / len(groups)
    for g, (length, n_mem) in enumerate(groups):
        med = [next(r["median_steps"] for r in rows if r["candidate"] == n and
                    (r["length"], r["n_mem"]) == (length, n_mem)) for n in names]
        ax.bar([i + g * width for i in range(len(names))], med, width,
               label=f"L={length}, m={n_mem}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, ha="right")
    ax.set_ylabel("median steps (lossless or stopped)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parser():
    p = Parser(prog="python -m cramfast.study", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["optimizer"])
    published = TextSettings()
    add_flags(p, "--model", "--dtype", "--threads", "--max-steps", "--patience",
              defaults={"--max-steps": published.max_steps, "--patience": published.patience})
    p.add_argument("--file", required=True, help="a UTF-8 text file or folder to sample from")
    p.add_argument("--lengths", type=csv_ints, default="16,32,64")
    p.add_argument("--n-mem", type=csv_ints, default="1,2")
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--candidates", default=",".join(CANDIDATES),
                   help="comma-separated candidates: a preset name, or key=value settings "
                        "joined by '+' (lr may be a multiple of std(E): lr=0.5std)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/study")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run("cramfast.study", lambda: _study_and_write(args), flags=SETTING_FLAGS)


def _study_and_write(args) -> int:
    texts = []
    rows = _sample_texts_and_study(args, texts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    print(table)
    (out / "optimizer.md").write_text(table + "\n")
    write_csv(out / "optimizer.csv", rows)
    write_csv(out / "texts.csv", texts)
    for line in capacity_lines(rows):
        print(line)
    plot(rows, out / "optimizer.png")
    print(f"wrote {out}/optimizer.md, .csv, .png")
    return 0


def _sample_texts_and_study(args, texts_out):
    """The study the flags ask for: passages sampled from --file at each length, every
    candidate run on them."""
    candidates = {n: parse_candidate(n) for n in args.candidates.split(",") if n}
    lm = cramfast.load_model(args.model, dtype=args.dtype)
    text = sources.joined_text(args.file)
    by_length = {L: sources.sample_passages(lm.tokenizer, text, L, args.texts, args.seed)
                 for L in args.lengths}
    set_threads(args.threads, "cramfast.study")     # inputs checked: the work starts
    return run_optimizer_study(lm, by_length, args.n_mem,
                               candidates, seed=args.seed, texts_out=texts_out,
                               max_steps=args.max_steps, patience=args.patience)


if __name__ == "__main__":
    sys.exit(main())
