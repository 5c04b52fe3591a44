"""One optimization step of a batch of slots, and the steppers that run k of them between host
syncs.

    step(lm, state, rows, ids, targets)
      predict:   ops.mem_embed([mem ; tokens], layout.py) -> frozen backbone
                 -> ops.linear_cross_entropy
      backward:  the summed per-text objectives, down to each slot's mem only
      optim:     stop rule, update rule (Hooks.update), stall restarts, all on the device
    -> each slot's count of solved positions (right, by the required margin), -1 for a slot
       that had stopped, FAILED_ON_DEVICE for a non-finite loss

Nothing in a step reads the device from the host, so k steps run without a sync and, on CUDA,
a step can be captured once as a CUDA graph and replayed (GraphedSteps).
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.utils.checkpoint

from cramfast import ops
from cramfast.engine.layout import FIRST, Layout, embed_sequence, layout_for
from cramfast.engine.optim import (
    SlotState,
    apply_stop_rule,
    count_step,
    mem_update,
    objective_weights,
    restart_stalled,
    solved_positions,
)
from cramfast.engine.scheduler import FAILED_ON_DEVICE
from cramfast.models import LoadedModel
from cramfast.settings import BatchSettings, StopReason


def pad_batch(token_lists: list[list[int]], length: int, device) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """ids [B, length] right-padded with 0, targets [B, length-1] with IGNORE_INDEX past each
    text."""
    ids = torch.zeros(len(token_lists), length, dtype=torch.long)
    targets = torch.full((len(token_lists), length - 1), ops.IGNORE_INDEX, dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, :len(toks)] = torch.tensor(toks)
        targets[row, :len(toks) - 1] = torch.tensor(toks[1:])
    return ids.to(device), targets.to(device)


@contextlib.contextmanager
def recomputed_activations(lm: LoadedModel, enabled: bool = True):
    """Within it, the backbone's layers keep no activations for the backward pass: each layer
    is run again there from its input (torch.utils.checkpoint, non-reentrant), so a step holds
    one layer's activations instead of all of them, for about one more forward of time. The
    same ops run on the same inputs: results are unchanged."""
    layers = lm.layers() if enabled else []
    for layer in layers:
        layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, layer.forward,
                                          use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward           # the class's own again


def predict(lm: LoadedModel, ids: torch.Tensor, targets: torch.Tensor, mem: torch.Tensor | None,
            backend: str | None = None, recompute: bool = False, layout: Layout = FIRST):
    """Per-position CE and argmax of the frozen LM on [mem ; ids] (or the ``layout``'s sequence,
    with a BOS before or after the mem) for the text positions 2..T.

    ids [B, T] right-padded, targets [B, T-1] (IGNORE_INDEX where not scored), mem [B, m, d] or
    None. Right padding needs no attention mask: causal attention never lets a real position
    see the padding after it. Returns (loss [B, T-1] fp32, argmax [B, T-1], margin [B, T-1]:
    the target's logit minus the best other one, ops.linear_cross_entropy's). ``recompute``:
    the backbone's activations recomputed in the backward (recomputed_activations)."""
    B, T = ids.shape
    x, start = embed_sequence(lm, ids, mem, layout, backend)     # ids[:, 0] at x[:, start]
    with recomputed_activations(lm, recompute and torch.is_grad_enabled()):
        hidden = lm.backbone(inputs_embeds=x, use_cache=False)[0]
    hidden = hidden[:, start:start + T - 1].reshape(B * (T - 1), -1)
    head = lm.head
    loss, argmax, margin = ops.linear_cross_entropy(hidden, head.weight, targets.reshape(-1),
                                                    head.bias, backend=backend,
                                                    logit_scale=lm.logit_scale, softcap=lm.softcap)
    return loss.view(B, T - 1), argmax.view(B, T - 1), margin.view(B, T - 1)


def step(lm: LoadedModel, state: SlotState, rows: torch.Tensor, ids: torch.Tensor,
         targets: torch.Tensor, backend: str | None = None, update=mem_update,
         recompute: bool = False, layout: Layout = FIRST) -> torch.Tensor:
    """One evaluation + update of the slots in ``rows`` (ids/targets: their padded texts);
    returns their correct-counts (-1: stopped before, FAILED_ON_DEVICE: non-finite loss)."""
    active = state.active[rows]
    mem = state.mem[rows].clone().requires_grad_(True)
    scored = torch.where(active[:, None], targets, torch.full_like(targets, ops.IGNORE_INDEX))
    loss, argmax, margin = predict(lm, ids, scored, mem, backend, recompute, layout)
    gamma = state.hyper_column("focal_gamma", rows).view(-1, 1)
    required = state.hyper_column("margin", rows).view(-1, 1)
    weights = objective_weights(loss, gamma, margin, required)
    per_text = (loss * weights).sum(dim=1) / state.n_pred[rows]
    per_text.sum().backward()                      # texts' gradients do not mix: one mem each
    correct = solved_positions(argmax, margin, scored, required).sum(dim=1)
    stalled = apply_stop_rule(state, rows, active, correct, per_text.detach(), mem.detach())
    update(state, rows, mem.grad.to(state.mem.dtype), state.active[rows])
    count_step(state, rows, state.active[rows])
    restart_stalled(state, rows, stalled)
    failed = active & (state.reason[rows] == StopReason.NONFINITE)
    return torch.where(failed, FAILED_ON_DEVICE, torch.where(active, correct, -1))


# A length group (EagerSteps on a CPU) takes the rows whose texts are at least this fraction of
# its longest: padding is charged at most 1 - LENGTH_GROUP_FILL of the group's tokens.
LENGTH_GROUP_FILL = 0.875


def text_lengths(targets: torch.Tensor) -> list[int]:
    """Each row's text length (tokens) from its padded targets [B, T-1] (IGNORE_INDEX past the
    text, pad_batch's): its targets up to the last scored one, plus the given first token."""
    scored = targets != ops.IGNORE_INDEX
    position = torch.arange(1, targets.shape[1] + 1, device=targets.device)
    return [max(n, 1) + 1 for n in (scored * position).amax(dim=1).tolist()]


def length_groups(lengths: list[int], fill: float = LENGTH_GROUP_FILL) -> list[list[int]]:
    """Row indices in groups, longest texts first: a group is its longest row and every next
    row (by length) at least ``fill`` of it long, so right-padded to its longest it wastes at
    most 1 - fill of its tokens. Equal lengths share a group."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= fill * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class EagerSteps:
    """k steps of the slots in ``rows``, each kernel launched from Python. With
    ``drop_stopped`` the slots that stopped since the last sync leave the batch at once, and
    the others step in length groups (length_groups), each cut to its own longest text: on a
    CPU reading the device's active mask costs nothing and a row costs its share of the step,
    padding included. On a GPU the read would be a host sync per step, a stopped row is nearly
    free, and one wide batch beats several narrow ones."""

    def __init__(self, lm: LoadedModel, state: SlotState, backend=None, update=mem_update,
                 drop_stopped: bool | None = None, recompute: bool = False,
                 layout: Layout = FIRST):
        self.lm, self.state, self.backend, self.update = lm, state, backend, update
        self.recompute, self.layout = recompute, layout
        self.drop_stopped = lm.device.type == "cpu" if drop_stopped is None else drop_stopped
        self._groups: tuple = (None, None)      # (the targets they are for, their groups)

    def steps(self, rows, ids, targets, k: int) -> list[torch.Tensor]:
        return [self._one(rows, ids, targets) for _ in range(k)]

    def _one(self, rows, ids, targets):
        if not self.drop_stopped:
            return step(self.lm, self.state, rows, ids, targets, self.backend, self.update,
                        self.recompute, self.layout)
        live = self.state.active[rows]
        out = torch.full((len(rows),), -1, dtype=torch.long, device=rows.device)
        for group, n in self._length_groups(targets):
            group = group[live[group]]
            if len(group):
                out[group] = step(self.lm, self.state, rows[group], ids[group, :n],
                                  targets[group, :n - 1], self.backend, self.update,
                                  self.recompute, self.layout)
        return out

    def _length_groups(self, targets) -> list[tuple[torch.Tensor, int]]:
        """(row indices, the group's longest text) per length group of this batch; the same
        batch is stepped sync_every times, so its groups are found once."""
        if self._groups[0] is not targets:
            lengths = text_lengths(targets)
            self._groups = (targets, [
                (torch.tensor(g, device=targets.device), max(lengths[i] for i in g))
                for g in length_groups(lengths)])
        return self._groups[1]


class GraphedSteps(EagerSteps):
    """step captured once per batch shape as a CUDA graph and replayed. A step of a small model
    is over a thousand kernel launches, whose launch cost can exceed the arithmetic of a small
    batch (measured: docs/benchmarks.md, step time on the H200). A replay launches the same
    kernels on the same memory: results equal the eager step's.

    A new shape's first steps run eagerly (on a side stream, as capture requires): they compile
    and autotune the kernels and let autograd allocate, and they are real steps. The graphs
    share one memory pool; each replay's output is copied out before the next replay."""
    WARMUP = 2
    MAX_GRAPHS = 16

    def __init__(self, lm, state, backend=None, update=mem_update, drop_stopped=None,
                 recompute=False, layout=FIRST):
        super().__init__(lm, state, backend, update, drop_stopped=False, recompute=recompute,
                         layout=layout)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def steps(self, rows, ids, targets, k: int) -> list[torch.Tensor]:
        key = (len(rows), ids.shape[1])
        out = []
        if key not in self.graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = super().steps(rows, ids, targets, min(k, self.WARMUP))
            torch.cuda.current_stream().wait_stream(side)
            if len(out) == k:
                return out
            try:
                self._capture(key, rows, ids, targets)
            except RuntimeError as exc:  # an op that syncs or cannot be captured: run eagerly
                warnings.warn(f"cramfast: CUDA graph capture failed ({exc}".splitlines()[0]
                              + "); stepping eagerly", stacklevel=2)
                self.steps = super().steps
                return out + self.steps(rows, ids, targets, k - len(out))
        graph, static_in, static_out = self.graphs[key]
        for buffer, value in zip(static_in, (rows, ids, targets)):
            buffer.copy_(value)
        for _ in range(k - len(out)):
            graph.replay()
            out.append(static_out.clone())
        return out

    def _capture(self, key, rows, ids, targets):
        if len(self.graphs) >= self.MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs)))
        static_in = (rows.clone(), ids.clone(), targets.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = step(self.lm, self.state, *static_in, self.backend, self.update,
                              self.recompute, self.layout)
        self.graphs[key] = (graph, static_in, static_out)


def use_cuda_graphs(lm: LoadedModel, batch: BatchSettings, backend=None) -> bool:
    """Graphs need a step without host syncs: on CUDA, the Triton ops (the torch twin of the
    fused CE picks its rows with nonzero(), a sync)."""
    return (batch.cuda_graphs and lm.device.type == "cuda"
            and ops.backend_for(lm.head.weight, backend) == "triton"
            and ops.backend_for(lm.embedding, backend) == "triton")


def make_stepper(lm: LoadedModel, state: SlotState, batch: BatchSettings, backend=None,
                 update=mem_update, drop_stopped: bool | None = None) -> EagerSteps:
    """The stepper compress uses for these settings: GraphedSteps where use_cuda_graphs."""
    kind = GraphedSteps if use_cuda_graphs(lm, batch, backend) else EagerSteps
    return kind(lm, state, backend, update, drop_stopped, batch.recompute_activations,
                layout_for(lm, batch.mem_position))
