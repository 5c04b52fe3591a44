"""step: the fused loss against full logits, the focal objective's step, CUDA graphs and the
few batch shapes they are captured for."""
import os

import pytest
import torch

import cramfast
import cramfast.settings
from cramfast import engine, ops
from cramfast.engine import SlotState, TextSettings, pad_batch, predict

from conftest import corpus_texts


def test_fused_loss_matches_full_logits(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    toks = [[3, 50, 7, 9, 11], [4, 8, 15, 16, 23, 42, 99]]
    ids, targets = engine.pad_batch(toks, 7, "cpu")
    mem = torch.randn(2, 1, lm.hidden_size, dtype=torch.float64, requires_grad=True)
    loss, argmax, _ = engine.predict(lm, ids, targets, mem, backend="torch")
    (loss.sum(1) / torch.tensor([4, 6])).sum().backward()
    grad = mem.grad.clone()
    mem.grad = None
    x = torch.cat([mem, lm.embedding[ids]], 1)
    logits = lm.model(inputs_embeds=x).logits[:, 1:-1]
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    (ref.sum(1) / torch.tensor([4, 6])).sum().backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, mem.grad, rtol=1e-8, atol=1e-10)
    valid = targets != ops.IGNORE_INDEX
    assert torch.equal(argmax[valid], logits.argmax(-1)[valid])


def test_focal_objective_step_matches_reference(trained_path):
    """Two steps under focal_gamma: AdamW on mean((1 - p_target) ** gamma * CE) over the text's
    positions, the weight held constant, computed here from full logits; gamma 0 is plain CE.
    A pretrained model, so that p_target is far from 0 and the weights matter."""
    lm = cramfast.load_model(trained_path, dtype=torch.float64)
    toks = corpus_texts(lm.tokenizer, [6, 9])
    ids, targets = engine.pad_batch(toks, 9, "cpu")
    init = torch.randn(2, 1, lm.hidden_size, dtype=torch.float64) * lm.embedding_std()
    state = SlotState(2, 1, lm.hidden_size, torch.float64, "cpu")
    gammas = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
    for slot in range(2):
        settings = TextSettings(lr=0.05, focal_gamma=float(gammas[slot]))
        state.start(slot, init[slot], len(toks[slot]) - 1, settings)

    def reference(gamma):
        mem = init.clone().requires_grad_(True)
        opt = torch.optim.AdamW([mem], lr=0.05, betas=(0.9, 0.9), weight_decay=0.01, eps=1e-8)
        for _ in range(2):
            opt.zero_grad()
            x = torch.cat([mem, lm.embedding[ids]], 1)
            logits = lm.model(inputs_embeds=x).logits[:, 1:-1]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets,
                                                   reduction="none")
            weight = (1 - torch.exp(-ce.detach())) ** gamma
            ((weight * ce).sum(1) / torch.tensor([5, 8])).sum().backward()
            opt.step()
        return mem.detach()

    for _ in range(2):
        engine.step(lm, state, torch.arange(2), ids, targets, "torch")
    torch.testing.assert_close(state.mem, reference(gammas), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(state.mem[0], reference(torch.zeros_like(gammas))[0], rtol=1e-4)


CUDA_COMPILED = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.skipif(not CUDA_COMPILED, reason="CUDA graphs need a CUDA GPU and compiled kernels")
def test_cuda_graph_steps_equal_eager_steps(trained_path):
    """GraphedSteps replays the captured step: over 10 steps (2 eager warm-ups, a capture, 8
    replays, then a second batch shape) the slots' state follows the eager steps'."""
    lm = cramfast.load_model(trained_path, device="cuda")
    texts = corpus_texts(lm.tokenizer, [9, 12, 7])
    settings, batch = cramfast.settings.split(cramfast.settings.preset_settings("fast"))
    assert engine.use_cuda_graphs(lm, batch, None)
    states = []
    for runner in (engine.GraphedSteps, engine.EagerSteps):
        state = SlotState(4, 1, lm.hidden_size, torch.float32, lm.device)
        for slot, ids in enumerate(texts):
            state.start(slot, engine.init_mem(lm, ids, 1, 0, 1.0).to(lm.device),
                        len(ids) - 1, settings)
        steps = runner(lm, state, None)
        outs = []
        for rows in ([0, 1, 2], [0, 2]):
            rows = torch.tensor(rows, device=lm.device)
            ids, targets = engine.pad_batch([texts[r] for r in rows.tolist()], 12, lm.device)
            outs.append(torch.stack(steps.steps(rows, ids, targets, 10)))
        if runner is engine.GraphedSteps:
            assert len(steps.graphs) == 2
        states.append((state, torch.cat(outs, dim=1)))
    (graphed, out_g), (eager, out_e) = states
    assert torch.equal(out_g, out_e)
    for name in ("mem", "exp_avg", "exp_avg_sq", "best_mem"):
        torch.testing.assert_close(getattr(graphed, name), getattr(eager, name),
                                   rtol=1e-5, atol=1e-6)
    for name in SlotState.COUNTS:
        assert torch.equal(getattr(graphed, name), getattr(eager, name)), name


@pytest.mark.skipif(not CUDA_COMPILED, reason="CUDA graphs need a CUDA GPU and compiled kernels")
def test_compress_with_cuda_graphs_is_lossless_as_eager(trained_path):
    lm = cramfast.load_model(trained_path, device="cuda")
    texts = corpus_texts(lm.tokenizer, [10, 14, 8, 12, 9])
    kw = dict(model=lm, n_mem=1, max_steps=300, sync_every=8)
    graphed = cramfast.compress(texts, cuda_graphs=True, **kw)
    eager = cramfast.compress(texts, cuda_graphs=False, **kw)
    assert all(g.exact and g.accuracy == 1.0 for g in graphed)
    assert [g.stop_reason for g in graphed] == [e.stop_reason for e in eager]


def test_graphed_batches_are_padded_to_few_shapes():
    from cramfast.engine.compressor import idle_rows
    for occupied, slots in (([0, 3, 5], 8), ([1], 8), (list(range(5)), 6), ([2, 4, 6, 7, 1], 8)):
        rows = occupied + idle_rows(occupied, slots)
        assert len(set(rows)) == len(rows) and all(0 <= r < slots for r in rows)
        assert len(rows) == min(slots, 1 << (len(occupied) - 1).bit_length())



def test_recomputed_activations_change_no_result_and_hold_less(trained_path):
    """recompute_activations: the same results bit for bit (fp64), and the forward of a step
    saves far fewer tensors for the backward (one layer's inputs, not every layer's
    activations)."""
    lm = cramfast.load_model(trained_path, dtype="fp64")
    texts = corpus_texts(lm.tokenizer, [24, 40], seed=1)
    plain = cramfast.compress(texts, model=lm, max_steps=100)
    again = cramfast.compress(texts, model=lm, max_steps=100, recompute_activations=True)
    for a, b in zip(plain, again):
        assert (a.steps, a.stop_reason, a.ce_with_mem) == (b.steps, b.stop_reason, b.ce_with_mem)
        assert torch.equal(a.mem, b.mem)

    def saved_bytes(recompute):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        ids, targets = pad_batch(texts, 40, lm.device)
        mem = torch.zeros(2, 1, lm.hidden_size, dtype=lm.dtype, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _, _ = predict(lm, ids, targets, mem, recompute=recompute)
        loss.sum().backward()
        return sum(total)

    assert saved_bytes(True) < saved_bytes(False) / 3


def test_length_groups_bound_the_padding():
    from cramfast.engine.step import length_groups, text_lengths
    assert length_groups([96, 128, 96, 128, 120]) == [[1, 3, 4], [0, 2]]
    assert length_groups([16, 16, 16]) == [[0, 1, 2]]
    assert length_groups([100, 87, 88]) == [[0, 2], [1]]
    for lengths in ([5], [9, 4, 17, 17, 3, 12], list(range(2, 40))):
        groups = length_groups(lengths)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            assert all(lengths[i] >= 0.875 * lengths[g[0]] for i in g)
    _, targets = pad_batch([[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]], 8, "cpu")
    assert text_lengths(targets) == [3, 5, 2]


def test_length_grouped_steps_equal_one_padded_batch(trained_path):
    """On a CPU the live rows step in length groups, each cut to its longest text (rows of
    9 and 12 tokens apart, 12 and 11 together): every slot's state follows what one batch
    padded to 16 gives (fp64), with a slot stopping in between."""
    lm = cramfast.load_model(trained_path, dtype=torch.float64)
    texts = corpus_texts(lm.tokenizer, [9, 12, 11, 6])
    settings = TextSettings(lr=0.05, max_steps=4)
    states = []
    for drop in (True, False):
        state = SlotState(4, 1, lm.hidden_size, torch.float64, "cpu")
        for slot, ids in enumerate(texts):
            s = settings if slot != 3 else TextSettings(lr=0.05, max_steps=2)
            state.start(slot, engine.init_mem(lm, ids, 1, slot, 1.0), len(ids) - 1, s)
        steps = engine.EagerSteps(lm, state, "torch", drop_stopped=drop)
        ids, targets = pad_batch(texts, 16, "cpu")
        if drop:
            assert [g.tolist() for g, _ in steps._length_groups(targets)] == [[1, 2], [0], [3]]
        out = torch.stack(steps.steps(torch.arange(4), ids, targets, 5))
        states.append((state, out))
    (grouped, out_g), (padded, out_p) = states
    assert torch.equal(out_g, out_p) and out_g[4, 3] == -1
    for name in ("mem", "exp_avg", "exp_avg_sq", "best_mem"):
        torch.testing.assert_close(getattr(grouped, name), getattr(padded, name),
                                   rtol=1e-10, atol=1e-12)
    for name in SlotState.COUNTS:
        assert torch.equal(getattr(grouped, name), getattr(padded, name)), name
