"""Peak memory and step time of a cramming step with and without recompute_activations, on a
random model of TinyLlama-1.1B's shape (d 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632,
V 32000), fp32, one text of L tokens, m = 1: what the setting buys for long texts on large
models. Each (L, setting) runs in a process of its own, so each peak is its own.

    .venv/bin/python benchmarks/recompute_memory.py --lengths 512,1568 --out FILE.json

Figures per run: ``weights_gib`` (resident set after the model is built), ``peak_gib`` (the
process's peak resident set over the steps), ``step_activations_gib`` = peak - weights (what a
step holds beyond the weights), ``step_seconds`` (the median of the timed steps, after one
untimed step). CPU only: the resident set is the measure (torch's CPU allocator has no peak
counter).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

SHAPE = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
             tie_word_embeddings=False)
GIB = 1 << 30


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def one_run(length: int, recompute: bool, steps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cramfast.engine import BatchSettings, SlotState, TextSettings, make_stepper, pad_batch
    from cramfast.models import LoadedModel
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval().requires_grad_(False)
    lm = LoadedModel("tinyllama-1.1b-shape (random)", "", model, tokenizer=None)
    weights = _rss_gib()
    ids = torch.randint(0, SHAPE["vocab_size"], (length,)).tolist()
    state = SlotState(1, 1, lm.hidden_size, torch.float32, lm.device)
    state.start(0, torch.randn(1, lm.hidden_size), length - 1,
                TextSettings(max_steps=10 * steps).for_model(lm.embedding_std()))
    stepper = make_stepper(lm, state, BatchSettings(recompute_activations=recompute))
    batch_ids, targets = pad_batch([ids], length, lm.device)
    rows = torch.arange(1)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        stepper.steps(rows, batch_ids, targets, 1)
        times.append(time.perf_counter() - start)
    peak = _rss_gib()
    return dict(length=length, recompute_activations=recompute, steps_timed=steps,
                weights_gib=round(weights, 2), peak_gib=round(peak, 2),
                step_activations_gib=round(peak - weights, 2),
                step_seconds=round(statistics.median(times[1:]), 2),
                threads=torch.get_num_threads())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="512,1568")
    p.add_argument("--steps", type=int, default=2, help="timed steps per run (after one)")
    p.add_argument("--out", help="write the runs as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)       # L,recompute: a child's own run
    args = p.parse_args(argv)
    if args.one:
        length, recompute = args.one.split(",")
        print(json.dumps(one_run(int(length), recompute == "1", args.steps)))
        return 0
    runs = []
    for length in (int(x) for x in args.lengths.split(",")):
        for recompute in (False, True):
            done = subprocess.run([sys.executable, __file__, "--one", f"{length},{int(recompute)}",
                                   "--steps", str(args.steps)], capture_output=True, text=True,
                                  check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    record = dict(machine=f"{platform.processor() or platform.machine()}", shape=SHAPE,
                  runs=runs, date=time.strftime("%Y-%m-%d"))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(record, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
