"""Do stall restarts rescue the passages `fast` without them leaves unsolved? Bench texts 0 and 1
of the end-to-end benchmark's 8 passages (L = 16, seed 0), a 900-step budget, three candidates
in one study batch (study.run_optimizer_study): `fast` without stall restarts, `fast` (a redraw
restart after 10 steps per predicted token without a better accuracy: 150 at L = 16) and
`fast` with perturb restarts. From the repository root:
    .venv/bin/python benchmarks/probes/hard_texts_stall.py

Output quoted in lab/study/stall-restarts/README.md:
lab/study/stall-restarts/hard-texts-stall.txt,
made over `fast` v1 (AdamW at lr = std(E), its lr column; no restarts), where the candidates
were fast, fast+stall_steps=150, fast+stall_steps=150+restart=perturb; the candidates here are
those changes over the `fast` preset.
"""
from __future__ import annotations

from cramfast.errors import CramfastError
from cramfast.models import load_model
from cramfast.study import runner as study

import _probe

CANDIDATES = "fast+stall_steps=0,fast,fast+restart=perturb"


def main(args):
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.sample, seed=0)
    if not args.texts or not all(0 <= i < len(texts) for i in args.texts):
        raise CramfastError(f"--texts {args.texts}: indices of the {len(texts)} passages drawn")
    hard = [texts[i] for i in args.texts]
    candidates = {c: study.parse_candidate(c) for c in args.candidates.split(",") if c}
    per_text = []
    rows = study.run_optimizer_study(lm, {args.length: hard}, [1], candidates,
                                     max_steps=args.steps, patience=args.steps,
                                     texts_out=per_text)
    print(study.markdown(rows))
    for record in per_text:
        print(record)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--sample", type=int, default=8,
                   help="passages drawn as the benchmark draws them (default %(default)s)")
    p.add_argument("--texts", type=_probe.csv_ints, default=[0, 1],
                   help="which of them to run (default 0,1)")
    p.add_argument("--steps", type=int, default=900,
                   help="max_steps and patience (default %(default)s)")
    p.add_argument("--candidates", default=CANDIDATES, help="default %(default)s")
    _probe.run(main, p.parse_args())
