"""``python -m cramfast compress|decode``: a thin face over the API. Bad input: one line on
stderr, exit code 2."""
from __future__ import annotations

import argparse
import sys
import time

from cramfast.errors import CramfastError

COLUMNS = ["tokens", "n_mem", "steps", "stop", "accuracy", "exact", "ce_no_mem", "ce_mem",
           "gain_bits", "token_gain", "seconds"]


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _quiet_transformers()
    try:
        return args.func(args)
    except CramfastError as exc:
        print(f"cramfast: error: {exc}", file=sys.stderr)
        return 2


def _quiet_transformers():
    # Loading bars and config warnings would bury the one line a user needs to read.
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _parser():
    p = argparse.ArgumentParser(prog="python -m cramfast", description=__doc__)
    sub = p.add_subparsers(required=True)
    c = sub.add_parser("compress", help="cram texts into mem vectors and check them by decoding")
    c.add_argument("--text", action="append", help="a text to compress (repeatable)")
    c.add_argument("--file", help="a UTF-8 text file or a folder of .txt files")
    c.add_argument("--length", type=int, help="cut texts to L tokens; with --file, sample passages")
    c.add_argument("--samples", type=int, default=1, help="passages per file with --length")
    c.add_argument("--model", default=None, help="HF folder, cached HF id, or smollm2-135m-q4")
    c.add_argument("--dtype", default=None, help="fp32 (default), bf16, fp16, fp64")
    c.add_argument("--n-mem", type=int, default=1)
    c.add_argument("--out", help="folder for mem vectors (.safetensors) and metadata (.json)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--preset", default="fast", help="fast (the default: fewer steps, measured "
                   "at least as lossless) or paper (the published settings)")
    c.add_argument("--max-steps", type=int)
    c.add_argument("--patience", type=int)
    c.add_argument("--lr", type=float)
    c.add_argument("--max-slots", type=int)
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting that changes results (the per-text ones and fill_slots), e.g. "
                        "--set stall_steps=100 --set fill_slots=0")
    c.add_argument("--backend", default=None, help="auto | triton | torch")
    c.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, launch every kernel eagerly instead of replaying CUDA graphs")
    c.set_defaults(func=_compress)
    d = sub.add_parser("decode", help="regenerate texts from saved mem vectors")
    d.add_argument("path", help="a folder written by compress --out, or one of its files")
    d.add_argument("--model", default=None, help="override the model stored with the result")
    d.set_defaults(func=_decode)
    return p


def _texts(args, tokenizer):
    from cramfast import sources
    texts = list(args.text or [])
    if args.file:
        for path in sources.text_files(args.file):
            body = sources.read_text_file(path)
            if args.length:
                texts += sources.sample_passages(tokenizer, body, args.length, args.samples, args.seed)
            else:
                texts.append(body)
    return texts or [sources.DEFAULT_PASSAGE]


def _compress(args) -> int:
    import cramfast
    from cramfast.settings import parse_settings
    optim = dict(max_steps=args.max_steps, patience=args.patience, lr=args.lr,
                 max_slots=args.max_slots, cuda_graphs=args.cuda_graphs,
                 **parse_settings(args.set))
    lm = cramfast.load_model(args.model, dtype=args.dtype)
    texts = _texts(args, lm.tokenizer)
    start = time.perf_counter()
    results = cramfast.compress(texts, model=lm, n_mem=args.n_mem, max_length=args.length,
                                seed=args.seed, backend=args.backend, preset=args.preset,
                                **{k: v for k, v in optim.items() if v is not None})
    wall = time.perf_counter() - start
    print(format_table(results))
    lossless = sum(r.exact for r in results)
    tokens = sum(r.n_tokens for r in results if r.exact)
    print(f"\n{lm.name}: {lossless}/{len(results)} texts exact, {tokens} tokens in {wall:.1f} s "
          f"({tokens / wall:.1f} lossless tokens/s)")
    if args.out:
        paths = cramfast.save(results, args.out, tokenizer_path=lm.path)
        print(f"saved {len(paths)} result(s) to {args.out}")
    return 0


def format_table(results) -> str:
    rows = [COLUMNS] + [[
        str(r.n_tokens), str(r.n_mem), str(r.steps), r.stop_reason, f"{r.accuracy:.3f}",
        "yes" if r.exact else "no", f"{r.ce_without_mem:.2f}", f"{r.ce_with_mem:.2f}",
        f"{r.info_gain_bits:.1f}", f"{r.token_gain:.1f}", f"{r.seconds:.1f}"] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def _decode(args) -> int:
    import cramfast
    for res in cramfast.load_results(args.path):
        ids, text = cramfast.decode(res, model=args.model)
        match = ids == res.token_ids
        print(f"--- {res.n_tokens} tokens, {res.model}, matches stored ids: {'yes' if match else 'no'}")
        print(text)
    return 0
