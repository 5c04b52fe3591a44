"""Throughput of the batched cramming step on a CUDA GPU, against the paper's loop on the same
GPU, for models of real shape with random weights.

    python benchmarks/gpu_throughput.py ASSETS [--out FILE.json]

ASSETS is a folder with a tokenizer (tokenizer.json, tokenizer_config.json), e.g. a copy of the
embedded model's cache folder without its weights, or the embedded model's tokenizer that
benchmarks/gpu_prepare.sh carries (gpu_session.sh passes it): a GPU machine here reaches no hub
and the embedded model's 98 MB file may not be there, so the weights are random (seeded) and
only the shapes are real. Random weights change how many steps a text needs, not what a step
costs, so the figures here are seconds per step, not steps to lossless.

Shapes: SmolLM2-135M (the embedded model's config: d 576, 30 layers, V 49152, tied head) and a
Llama-3.2-1B-like one (d 2048, 16 layers, 32/8 heads, V 128256, tied). Each is saved with
save_pretrained and loaded through cramfast.load_model, as a user's folder would be.

Measured, L = 64 tokens per text, m = 1, every slot active:
  * cramfast: engine.step (mem_embed -> backbone -> fused CE -> backward to mem -> stop
    rule -> per-slot update) on B texts at once, both backends, Triton's also replayed as a
    CUDA graph (GraphedSteps), 8 steps between two syncs as the compressor runs them, after 3
    untimed; text-steps/s = B / seconds; MFU = bench_roofline's FLOP count / the bf16 peak
    of a large torch.mm measured here;
  * paper: paper_baseline.cram_one (batch 1, full-vocabulary logits, torch AdamW, a host sync
    per step, bf16 autocast over fp32 weights as the original runs on CUDA): seconds per step
    from two runs of different lengths (their difference, so set-up is excluded).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_roofline import step_flops

from cramfast.engine import BatchSettings, TextSettings, make_stepper, start_batch
from cramfast.models import load_model

import paper_baseline

L, N_MEM = 64, 1
SHAPES = {
    "smollm2-135m-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                               vocab_size=49152, rope_theta=100000.0),
    "llama-1b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                           vocab_size=128256, rope_theta=500000.0),
}
BATCHES = {"smollm2-135m-shape": (1, 8, 32, 128, 256), "llama-1b-shape": (1, 16, 64, 256)}
# fp32 only for the small shape: without tensor cores a 1B step at B = 256 takes seconds
DTYPES = {"smollm2-135m-shape": ("bf16", "fp32"), "llama-1b-shape": ("bf16",)}


def save_random_model(name: str, assets: Path, root: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    config = LlamaConfig(max_position_embeddings=8192, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, **SHAPES[name])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = root / name
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets).save_pretrained(folder)
    return str(folder)


def random_texts(vocab: int, batch: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, L), generator=g).tolist()


def time_cramfast_step(lm, batch: int, backend: str, graphs: bool, steps: int = 8) -> float:
    """Seconds per step of ``steps`` steps run as the compressor runs them between two host
    syncs (GraphedSteps or EagerSteps), after 3 untimed ones (compilation, autotuning, capture)."""
    texts = random_texts(min(lm.vocab_size, len(lm.tokenizer)), batch)
    settings = TextSettings(optimizer="lamb", lr=1e-9)   # nothing stops while timed
    state, rows, ids, targets = start_batch(lm, texts, settings, N_MEM, length=L)
    runner = make_stepper(lm, state, BatchSettings(cuda_graphs=graphs), backend)
    runner.steps(rows, ids, targets, 3)
    torch.cuda.synchronize()
    start = time.perf_counter()
    runner.steps(rows, ids, targets, steps)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def time_paper_step(lm, short: int = 5, long: int = 25) -> float:
    ids = random_texts(min(lm.vocab_size, len(lm.tokenizer)), 1, seed=1)[0]
    run = lambda k: paper_baseline.cram_one(lm, ids, N_MEM, 0, reload=False, max_steps=k,
                                            patience=10 ** 9)
    run(2)
    torch.cuda.synchronize()
    seconds = {}
    for k in (short, long):
        start = time.perf_counter()
        run(k)
        torch.cuda.synchronize()
        seconds[k] = time.perf_counter() - start
    return (seconds[long] - seconds[short]) / (long - short)


def bf16_peak_flops(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assets", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--batches", help="comma-separated; default: per shape (BATCHES)")
    parser.add_argument("--dtypes", help="comma-separated; default: per shape (DTYPES)")
    parser.add_argument("--backends", default="triton,torch")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper loop")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: needs a CUDA GPU")
    peak = bf16_peak_flops()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16 mm peak "
          f"{peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes.split(","):
            path = save_random_model(name, args.assets, Path(tmp))
            paper_lm = load_model(path, device="cuda")
            paper_s = None
            if not args.no_paper:
                paper_s = time_paper_step(paper_lm)
                print(f"\n{name}: paper loop (B=1, bf16 autocast) {paper_s * 1e3:.1f} ms/step "
                      f"= {1 / paper_s:.1f} text-steps/s", flush=True)
                rows.append(dict(model=name, method="paper", batch=1, dtype="fp32+autocast-bf16",
                                 ms_per_step=round(paper_s * 1e3, 2),
                                 text_steps_per_s=round(1 / paper_s, 1)))
            dtypes = args.dtypes.split(",") if args.dtypes else DTYPES[name]
            batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES[name]
            for dtype in dtypes:
                lm = paper_lm if dtype == "fp32" else load_model(path, dtype=dtype, device="cuda")
                for batch in batches:
                    for backend in args.backends.split(","):
                        # CUDA graphs need the Triton ops (the torch twin syncs)
                        for graphs in ((True, False) if backend == "triton" else (False,)):
                            rows.append(measure(lm, name, dtype, batch, backend, graphs,
                                                paper_s, peak))
            del paper_lm, lm
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                            torch=torch.__version__, L=L, n_mem=N_MEM,
                                            bf16_peak_tflops=round(peak / 1e12, 1),
                                            rows=rows), indent=1))


def measure(lm, name, dtype, batch, backend, graphs, paper_s, peak) -> dict:
    method = f"cramfast-{backend}" + ("-graphs" if graphs else "")
    row = dict(model=name, method=method, batch=batch, dtype=dtype)
    try:
        s = time_cramfast_step(lm, batch, backend, graphs)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        print(f"  {dtype} B={batch} {method}: out of memory", flush=True)
        return dict(row, error="out of memory")
    mfu = step_flops(lm, batch, L, N_MEM)["flops"] / s / peak
    row.update(ms_per_step=round(s * 1e3, 2), text_steps_per_s=round(batch / s, 1),
               mfu_bf16_peak=round(mfu, 3))
    if paper_s:
        row["vs_paper"] = round(batch / s * paper_s, 1)
    print(f"  {dtype} B={batch:3d} {method:22s} {row['ms_per_step']:8.2f} ms "
          f"{row['text_steps_per_s']:9.1f} text-steps/s  MFU {mfu:.1%}"
          + (f"  x{row['vs_paper']} vs paper" if paper_s else ""), flush=True)
    return row


if __name__ == "__main__":
    main()
