"""Do mems travel? Passages are crammed with the model in one precision (preset fast, settings
given as key=value on top), then every lossless mem is greedy-decoded again with the model in
other precisions and batch sizes on this machine; prints how many come back exactly.

A mem is checked (decode-verified) in the precision and batch it was made in; a lower
precision rounds the logits differently, and a mem's smallest margin must cover that. The run
quoted in lab/study/margin/README.md, from the repository root:
    .venv/bin/python benchmarks/probes/travel_probe.py --made fp32 --decode bf16:1,bf16:24,fp32:1
    .venv/bin/python benchmarks/probes/travel_probe.py --made fp32 --decode bf16:1,bf16:24 margin=1
"""
from __future__ import annotations

import cramfast
from cramfast import engine
from cramfast.settings import parse_settings

import _probe


def main(args):
    made = cramfast.load_model(args.model, dtype=args.made)
    texts = _probe.study_passages(made.tokenizer, args.file, args.length, args.texts)
    results = cramfast.compress(texts, model=made, max_steps=args.steps,
                                **parse_settings(args.settings))
    lossless = [r for r in results if r.stop_reason == "lossless"]
    smallest = min((r.margin for r in lossless), default=float("nan"))
    print(f"made in {args.made}: {len(lossless)}/{len(results)} lossless, smallest margin "
          f"{smallest:.3g}, settings {args.settings}")
    models = {args.made: made}                  # each precision loaded once
    for combo in args.decode.split(","):
        dtype, batch = combo.split(":")
        lm = models.get(dtype) or models.setdefault(dtype, cramfast.load_model(args.model,
                                                                               dtype=dtype))
        exact = sum(engine.decodes_back(lm, lossless, int(batch)))
        print(f"decoded in {dtype}, batch {batch}: {exact}/{len(lossless)} exact", flush=True)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "study")
    p.add_argument("--made", default="fp32", help="the precision the mems are crammed in")
    p.add_argument("--decode", default="bf16:1,bf16:24,fp32:1",
                   help="precision:batch size pairs to decode the lossless mems with")
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("settings", nargs="*", help="key=value settings on top of fast")
    _probe.run(main, p.parse_args())
