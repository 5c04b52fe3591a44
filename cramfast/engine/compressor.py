"""Batched cramming: many texts, each with its own mem vectors, optimizer state and stop rule,
optimized together in one forward/backward of a frozen LM.

The path, top to bottom:
  compress(texts) / compress_iter   settings resolved (settings.py), every text tokenized and
                                    checked (jobs.py): bad input costs nothing
  -> optimize(lm, jobs, ...)        the scheduler (csrc/) plans which attempts occupy which slots
                                    (one attempt per text, more in idle slots: fill_slots)
     -> state.start(...)            a refilled slot gets its attempt's start and fresh moments
     -> stepper.steps(...)          sync_every steps (step.py: forward, backward, stop rule and
                                    update, all on the device, no host sync)
     -> scheduler.report(...)       the one host sync: the steps' correct-counts; finished
                                    attempts free their slots; a text ends with its first
                                    lossless attempt (the others are cancelled) or its last one
     -> verify_decodes(...)         texts that stopped lossless are decoded greedily; one that
                                    does not decode back goes on with a larger margin
     -> checkpointer.save(...)      with a checkpoint store, every text in flight as it stands
                                    (checkpoint.py), every checkpoint_seconds; a rerun resumes
                                    (and a text withdrawn from a Stream, when it leaves)
  -> finish(...)                    metrics with and without mem (decoding.py), per group of
                                    texts finished at the same sync
"""
from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from dataclasses import replace

import torch

from cramfast.engine.checkpoint import Checkpointer, as_store, fingerprint
from cramfast.engine.decoding import evaluate, greedy_decode
from cramfast.engine.hooks import Hooks, Timing
from cramfast.engine.inits import mem_dtype
from cramfast.engine.jobs import Attempt, Job, make_jobs
from cramfast.engine.layout import FIRST, Layout, layout_for
from cramfast.engine.optim import SlotState
from cramfast.engine.scheduler import Scheduler
from cramfast.engine.sizing import size_batch
from cramfast.engine.step import GraphedSteps, make_stepper, pad_batch, use_cuda_graphs
from cramfast.engine.stopping import Stopped, saving_loop, stop_signal
from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult, decoded_back, make_result
from cramfast.models import LoadedModel, load_model
from cramfast.presets import DEFAULT_PRESET
from cramfast.settings import (
    BATCH_RESULT_SETTINGS,
    BatchSettings,
    StopReason,
    TextSettings,
    defaults,
    preset_settings,
    split,
)


def compress(texts, model=None, n_mem: int = 1, max_length: int | None = None, seed: int = 0,
             backend: str | None = None, preset: str = DEFAULT_PRESET,
             per_text: list[dict] | None = None, init_mems=None, hooks: Hooks | None = None,
             checkpoint=None, **settings) -> list[CompressionResult]:
    """Cram each text (str or list of token ids) into ``n_mem`` vectors of the frozen ``model``.

    ``preset`` names the starting settings (presets.py); ``settings`` overrides any setting
    (settings.py: TextSettings and BatchSettings fields) for all texts, ``per_text`` (one dict
    per text) the text settings of single texts, so one batch can run many settings.
    ``init_mems`` (one [n_mem, d] tensor or None per text) starts texts from given vectors
    (warm starts; parallel attempts beyond the first start from seeded inits). ``hooks``: what
    a study may swap or watch (hooks.py). ``checkpoint`` (a directory, or a CheckpointStore:
    checkpoint.py) keeps every text in flight every ``checkpoint_seconds``, and a rerun with the
    same inputs resumes each text from it. Results come back in input order."""
    results = dict(compress_iter(texts, model, n_mem, max_length, seed, backend, preset, per_text,
                                 init_mems, hooks, checkpoint, **settings))
    return [results[i] for i in range(len(results))]


def compress_iter(texts, model=None, n_mem: int = 1, max_length: int | None = None, seed: int = 0,
                  backend: str | None = None, preset: str = DEFAULT_PRESET,
                  per_text: list[dict] | None = None, init_mems=None, hooks: Hooks | None = None,
                  checkpoint=None, longest: int | None = None, **settings) -> Stream:
    """Like ``compress``, but returns a Stream: an iterator of (input index, result) that yields
    each text as soon as it finishes, so a caller can store it at once, and that takes more
    texts while it runs (Stream.submit; ``longest``: the most tokens a submitted text will have,
    so the batch is sized for it). Every text is tokenized and checked here, before any work
    starts: bad input raises before the first step."""
    lm = load_model(model)
    text_settings, batch = split(preset_settings(preset, **settings))
    jobs = make_jobs(lm, texts, n_mem, max_length, seed, text_settings, per_text, init_mems)
    lengths = [job.token_ids for job in jobs] + ([[0] * longest] if longest else [])
    batch = size_batch(lm, batch, lengths, n_mem, jobs[0].settings, backend)
    store = as_store(checkpoint)
    checkpointer = None if store is None else Checkpointer(
        store, {job.index: job_fingerprint(lm, job, n_mem, batch) for job in jobs},
        batch.checkpoint_seconds, batch.checkpoint_steps)
    return Stream(lm, jobs, n_mem, batch, backend, hooks or Hooks(), checkpointer,
                  dict(max_length=max_length, seed=seed, base=text_settings), longest)


class Stream:
    """compress_iter's iterator, open to more texts while it runs. ``submit`` checks a text at
    once (as compress_iter checks its own) and queues it; it joins the batch at the next sync
    where a slot is free. Iterating yields (index, result) as texts finish, submitted ones
    included (indices go on from the first texts'), and ends when nothing is running, queued
    or submitted: after each result the caller may submit more. A search submits a text's next
    probe the moment its last one comes back, so no slot waits for a round to end.
    ``withdraw`` takes a text out without a result (a climb, once a length is decided).

        stream = compress_iter(first_texts, model=lm, longest=256)
        for index, result in stream:
            if worth_another(result):
                stream.submit(next_text)
    """

    def __init__(self, lm, jobs, n_mem, batch, backend, hooks, checkpointer, inputs, longest):
        self.lm, self.n_mem, self.batch, self.checkpointer = lm, n_mem, batch, checkpointer
        self.inputs = inputs                # max_length, seed and the text settings of jobs
        self.budget = max((longest or 0), max(len(j.token_ids) for j in jobs)) + n_mem
        self.submitted = 0
        self._next_index = len(jobs)
        self._incoming: deque = deque()
        self._withdrawn: deque = deque()
        record = dict(batch.to_dict(), cuda_graphs=use_cuda_graphs(lm, batch, backend))
        self._results = _results_as_they_finish(lm, jobs, n_mem, batch, backend, hooks, record,
                                                checkpointer, self._incoming, self.budget,
                                                self._withdrawn)

    def submit(self, text, settings: dict | None = None, init_mem=None) -> int:
        """Queue one more text (``settings``: its per-text settings; ``init_mem``: its start);
        returns its index. Raises CramfastError on bad input, as compress_iter does."""
        [job] = make_jobs(self.lm, [text], self.n_mem, self.inputs["max_length"],
                          self.inputs["seed"], self.inputs["base"],
                          None if settings is None else [settings],
                          None if init_mem is None else [init_mem])
        if len(job.token_ids) + self.n_mem > self.budget:
            raise CramfastError(f"a submitted text of {len(job.token_ids)} tokens is longer than "
                                f"the stream was sized for ({self.budget - self.n_mem}); pass "
                                "longest= to compress_iter")
        job.index, self._next_index = self._next_index, self._next_index + 1
        if self.checkpointer:
            self.checkpointer.fingerprints[job.index] = job_fingerprint(self.lm, job, self.n_mem,
                                                                        self.batch)
        self._incoming.append(job)
        self.submitted += 1
        return job.index

    def withdraw(self, index: int) -> None:
        """Take the text of this index out of the run at the next sync, without a result: it
        is not yielded, and its slots go to the others. With a checkpoint, its state as it
        stands is saved there first, so a later run with the same checkpoint goes on from it
        and ends as an uninterrupted run ends; without one, its steps are dropped. A text that
        has finished by then (its result not yet taken) still comes."""
        self._withdrawn.append(index)

    def checkpoint_key(self, index: int) -> str | None:
        """The key the text of this index is checkpointed under (None without a checkpoint):
        what a caller's store can label with the text's own name for it."""
        return self.checkpointer.fingerprints.get(index) if self.checkpointer else None

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._results)


def job_fingerprint(lm: LoadedModel, job: Job, n_mem: int, batch: BatchSettings) -> str:
    """What a text's result depends on, hashed: the key of its checkpoint. Settings at their
    default are left out, so a setting added later (its default the old behaviour) keeps the
    checkpoints of runs made before it."""
    default = defaults()
    shared = {name: getattr(batch, name) for name in BATCH_RESULT_SETTINGS}
    changed = {k: v for k, v in dict(job.settings.to_dict(), **shared).items()
               if v != default[k]}
    return fingerprint(lm.name, str(lm.dtype), job.token_ids, n_mem, job.seed, changed,
                       job.init_mem)


def _results_as_they_finish(lm, jobs, n_mem, batch, backend, hooks, record, checkpointer,
                            incoming=None, budget=0, withdrawn=None):
    layout = layout_for(lm, batch.mem_position)
    for finished in optimize(lm, jobs, n_mem, batch, backend, hooks, checkpointer, incoming,
                             budget, withdrawn):
        start = time.perf_counter()
        results = finish(lm, finished, n_mem, backend, record, layout)
        if hooks.on_timing:
            hooks.on_timing(Timing("finish", time.perf_counter() - start, len(finished), 0))
        for job, result in zip(finished, results):
            yield job.index, result


def optimize(lm: LoadedModel, jobs: list[Job], n_mem: int, batch: BatchSettings, backend=None,
             hooks: Hooks | None = None, checkpointer: Checkpointer | None = None,
             incoming: deque | None = None, budget: int = 0, withdrawn: deque | None = None):
    """Drive the scheduler; yields the list of jobs finished at each sync (their ``result``
    filled in). Each scheduler job is one Attempt, its id drawn from one counter. With a
    ``checkpointer``, texts it holds a record of go on from there, every text in flight is
    saved when a save is due, and a polite stop (stopping.py) saves them all at the next sync
    and raises Stopped. ``incoming``: jobs that arrive while it runs (a Stream's); each
    joins the queue at the next sync, and the run ends when nothing is running, queued or
    incoming. ``budget``: tokens the longest of them may need (padded length + n_mem).
    ``withdrawn``: indices of texts to take out at the next sync without a result (_withdraw)."""
    with saving_loop() if checkpointer else contextlib.nullcontext():
        yield from _optimize(lm, jobs, n_mem, batch, backend, hooks, checkpointer, incoming,
                             budget, withdrawn)


def _optimize(lm, jobs, n_mem, batch, backend, hooks, checkpointer, incoming, budget, withdrawn):
    hooks = hooks or Hooks()
    incoming = deque() if incoming is None else incoming
    withdrawn = deque() if withdrawn is None else withdrawn
    budget = max(batch.token_budget, budget, max(len(j.token_ids) for j in jobs) + n_mem)
    sched = Scheduler(batch.max_slots, budget, n_mem, batch.policy)
    attempts: dict[int, Attempt] = {}
    attempt_ids = itertools.count()
    resumed = checkpointer.resumed() if checkpointer else {}
    for job in jobs:
        _enter(lm, sched, attempts, attempt_ids, job, n_mem, hooks, resumed.get(job.index))
    n_draws = max(a.restart_draws.shape[0] if a.restart_draws is not None else 0
                  for a in attempts.values())
    state = SlotState(batch.max_slots, n_mem, lm.hidden_size, mem_dtype(lm), lm.device, n_draws)
    fill_width = min(batch.fill_slots, batch.max_slots)
    stepper = make_stepper(lm, state, batch, backend, hooks.update, hooks.drop_stopped)
    layout = stepper.layout
    while not sched.done() or incoming:
        while withdrawn:
            _withdraw(withdrawn.popleft(), sched, attempts, state, incoming, checkpointer)
        if sched.done() and not incoming:   # the last texts running were withdrawn
            break
        while incoming:
            job = incoming.popleft()
            record = checkpointer.resumed([job.index]).get(job.index) if checkpointer else None
            _enter(lm, sched, attempts, attempt_ids, job, n_mem, hooks, record, n_draws)
        if sched.pending() == 0 and sched.running() < fill_width:
            _fill_idle_slots(lm, sched, attempts, fill_width, batch.sync_every, n_mem,
                             attempt_ids, hooks)
        plan = sched.plan()
        for slot in plan.new_slots:
            attempt = attempts[plan.slot_jobs[slot]]
            attempt.slot = slot
            draws = None if attempt.restart_draws is None else attempt.restart_draws.to(lm.device)
            if attempt.resume is not None:
                state.restore(slot, attempt.resume, attempt.settings, draws)
                attempt.resume = None
                continue
            state.start(slot, attempt.init_mem.to(lm.device), len(attempt.job.token_ids) - 1,
                        attempt.settings, draws)
            if attempt.number == 0 and not attempt.job.resumed:
                attempt.job.started = time.perf_counter()
                attempt.job.first_evaluation = sched.evaluations()
        occupied = [s for s, j in enumerate(plan.slot_jobs) if j >= 0]
        idle = idle_rows(occupied, batch.max_slots) if isinstance(stepper, GraphedSteps) else []
        rows = torch.tensor(occupied + idle, device=lm.device)
        ids, targets = pad_batch([attempts[plan.slot_jobs[s]].job.token_ids for s in occupied]
                                 + [[0]] * len(idle), plan.padded_length, lm.device)
        started = time.perf_counter()
        history = torch.stack(stepper.steps(rows, ids, targets, batch.sync_every))
        report = torch.full((batch.sync_every, batch.max_slots), -1, dtype=torch.long)
        report[:, occupied] = history[:, :len(occupied)].cpu()   # the one host sync per sync_every
        if hooks.on_timing:
            hooks.on_timing(Timing("steps", time.perf_counter() - started, len(occupied),
                                   batch.sync_every))
        done = [job for fin in sched.report(report.numpy())
                if (job := _attempt_finished(sched, attempts, fin, state)) is not None]
        if done:
            started = time.perf_counter()
            checked = len(done)
            done = verify_decodes(lm, sched, attempts, done, attempt_ids, layout)
            if hooks.on_timing:
                hooks.on_timing(Timing("decode_check", time.perf_counter() - started, checked, 0))
        stopping = checkpointer is not None and stop_signal() is not None
        if checkpointer and (stopping or checkpointer.due(sched.evaluations())):
            started = time.perf_counter()
            records = in_flight(attempts, state, sched)
            checkpointer.save(records, sched.evaluations())
            if hooks.on_timing and records:
                hooks.on_timing(Timing("checkpoint", time.perf_counter() - started,
                                       len(records), 0))
        if done:
            yield done
            if checkpointer:                # the caller has taken them: their records can go
                checkpointer.finished([job.index for job in done])
        if stopping:                        # a polite stop (stopping.py): all saved, all handed
            raise Stopped(stop_signal(), len(records))


def idle_rows(occupied: list[int], max_slots: int) -> list[int]:
    """Free slots that round a graphed batch up to a power of two of rows (at most max_slots):
    a CUDA graph is captured per batch shape, and texts finishing one by one would otherwise
    make a new shape at nearly every sync. The padding rows are inactive: stepping them changes
    nothing, and their counts are not reported."""
    target = min(max_slots, 1 << max(len(occupied) - 1, 0).bit_length())
    taken = set(occupied)
    return [s for s in range(max_slots) if s not in taken][:target - len(occupied)]


def _add_attempt(sched, attempts: dict, attempt_id: int, attempt: Attempt):
    s, counters = attempt.settings, {}
    if attempt.resume is not None:      # the scheduler's stop rule goes on where the slot's was
        counters = {k: int(attempt.resume[name]) for k, name in
                    (("s", "steps"), ("best_correct", "best_correct"), ("best_step", "best_step"))}
    sched.add_job(attempt_id, len(attempt.job.token_ids), s.max_steps, s.patience, **counters)
    attempts[attempt_id] = attempt
    attempt.job.attempts += 1


def in_flight(attempts: dict, state: SlotState, sched) -> dict[int, dict]:
    """The checkpoint record of every text that has started (checkpoint.py): its attempts,
    running (the slot's state) or queued (their start), and its own bookkeeping."""
    by_text: dict[int, list[Attempt]] = {}
    for attempt in attempts.values():
        by_text.setdefault(attempt.job.index, []).append(attempt)
    records = {}
    for index, group in by_text.items():
        job = group[0].job
        if job.attempts == 1 and group[0].slot < 0 and group[0].resume is None:
            continue                        # not started: a rerun starts it the same way
        records[index] = dict(
            attempts_started=job.attempts, decode_retries=job.decode_retries,
            outcomes=job.outcomes, seconds=time.perf_counter() - job.started,
            evaluations=sched.evaluations() - job.first_evaluation,
            attempts=[dict(number=a.number, step_offset=a.step_offset,
                           settings=a.settings.to_dict(), init_mem=a.init_mem.cpu(),
                           restart_draws=None if a.restart_draws is None
                           else a.restart_draws.cpu(),
                           slot_state=state.snapshot(a.slot) if a.slot >= 0 else a.resume)
                      for a in group])
    return records


def _enter(lm, sched, attempts: dict, ids, job: Job, n_mem: int, hooks: Hooks,
           record: dict | None, n_draws: int | None = None):
    """Queue a text: its first attempt, or the attempts its checkpoint ``record`` holds.
    ``n_draws``: the restart draws a slot holds, once the slots exist."""
    if record is not None:
        _resume(sched, attempts, ids, job, record)
        return
    start, draws = hooks.start(lm, job.token_ids, n_mem, job.seed, job.settings, 0)
    if n_draws is not None and draws is not None and len(draws) > n_draws:
        raise CramfastError(f"text {job.index} needs {len(draws)} restart draws; the texts "
                            f"the run started with had {n_draws} (max_restarts)")
    start = job.init_mem if job.init_mem is not None else start
    _add_attempt(sched, attempts, next(ids), Attempt(job, 0, start, draws, job.settings))


def _resume(sched, attempts: dict, ids, job: Job, record: dict):
    """Queue a text's attempts as its checkpoint ``record`` holds them."""
    job.resumed = True
    job.decode_retries, job.outcomes = record["decode_retries"], record["outcomes"]
    job.started = time.perf_counter() - record["seconds"]
    job.first_evaluation = sched.evaluations() - record["evaluations"]
    for saved in record["attempts"]:
        attempt = Attempt(job, saved["number"], saved["init_mem"], saved["restart_draws"],
                          TextSettings(**saved["settings"]), saved["step_offset"],
                          resume=saved["slot_state"])
        _add_attempt(sched, attempts, next(ids), attempt)
    job.attempts = record["attempts_started"]


def _withdraw(index: int, sched, attempts: dict, state: SlotState, incoming: deque,
              checkpointer: Checkpointer | None):
    """Take text ``index`` out without a result (Stream.withdraw): not entered yet, it is
    dropped from ``incoming``; queued or running, its attempts are cancelled (their slots
    freed), its record saved first where there is a checkpointer. A text that is not there
    (finished, or withdrawn before) is left alone."""
    for job in [job for job in incoming if job.index == index]:
        incoming.remove(job)
    mine = {i: a for i, a in attempts.items() if a.job.index == index}
    if checkpointer and mine:
        checkpointer.put(in_flight(mine, state, sched))
    for i in mine:
        sched.cancel(i)
        del attempts[i]


def _fill_idle_slots(lm, sched, attempts: dict, width: int, sync_every: int, n_mem: int, ids,
                     hooks: Hooks):
    """Queue parallel attempts of running texts until ``width`` slots would be busy: the
    text with the fewest attempts running goes first (then the lower index). An attempt gets
    what is left of its text's max_steps, so no text runs longer than without parallel
    attempts."""
    for _ in range(width - sched.running()):
        running: dict[int, list[Attempt]] = {}
        for attempt in attempts.values():
            running.setdefault(attempt.job.index, []).append(attempt)
        steps_left = {i: group[0].job.settings.max_steps
                      - (sched.evaluations() - group[0].job.first_evaluation)
                      for i, group in running.items()}
        # a continuation (compressor.verify_decodes) goes on alone: a fresh parallel attempt
        # would start over without the margin it is being given
        eligible = [i for i in running if steps_left[i] >= sync_every
                    and running[i][0].job.decode_retries == 0]
        if not eligible:
            break
        index = min(eligible, key=lambda i: (len(running[i]), i))
        job, left = running[index][0].job, steps_left[index]
        k = job.attempts
        s = replace(job.settings, max_steps=left)
        start, draws = hooks.start(lm, job.token_ids, n_mem, job.seed, s, k)
        _add_attempt(sched, attempts, next(ids), Attempt(job, k, start, draws, s))


def _attempt_finished(sched, attempts: dict, fin, state: SlotState) -> Job | None:
    """Record a finished attempt; its text is done when it went lossless (the text's other
    attempts are cancelled) or when it was the text's last attempt running. Returns the text
    if done, with the best attempt's outcome as its result."""
    attempt = attempts.pop(fin.job_id, None)
    if attempt is None:                 # cancelled by a sibling that finished in this report
        return None
    job = attempt.job
    job.outcomes.append(_collect(attempt, fin, state))
    siblings = [i for i, a in attempts.items() if a.job is job]
    if fin.reason != StopReason.LOSSLESS.label and siblings:
        return None
    for i in siblings:
        sched.cancel(i)
        del attempts[i]
    # lossless first, then the most tokens right, then the earlier attempt
    best = max(job.outcomes, key=lambda o: (o["stop_reason"] == StopReason.LOSSLESS.label,
                                            o["best_correct"], -o["attempt"]))
    job.result = dict({k: v for k, v in best.items() if k != "best_correct"},
                      seconds=time.perf_counter() - job.started, attempts=job.attempts)
    return job


def _collect(attempt: Attempt, fin, state: SlotState) -> dict:
    """A finished attempt's outcome, read from its slot; the device and the scheduler must
    agree on why and when it stopped. A continuation's updates count on from its text's."""
    slot = fin.slot
    reason = StopReason(int(state.reason[slot])).label
    steps = int(state.steps[slot])
    if reason != fin.reason or steps != fin.steps:
        raise RuntimeError(f"scheduler and device disagree on job {attempt.job.index} attempt "
                           f"{attempt.number}: {fin.reason}@{fin.steps} vs {reason}@{steps}")
    offset = attempt.step_offset
    return dict(mem=state.best_mem[slot].detach().cpu().clone(), steps=offset + steps,
                best_step=offset + int(state.best_step[slot]), stop_reason=reason,
                restarts=int(state.restarts[slot]), attempt=attempt.number,
                best_correct=fin.best_correct, margin_required=attempt.settings.margin)


# The smallest margin (logits) a text gets when it stopped lossless but did not decode back:
# greedy decoding runs other kernels and batch shapes than the training forward, and their
# logits differ by about the weights' rounding, so 16-bit weights need more (lab/study/margin/).
DECODE_MARGIN_FLOOR = {16: 1.0, 32: 0.1, 64: 0.01}


def verify_decodes(lm: LoadedModel, sched, attempts: dict, jobs: list[Job], ids,
                   layout: Layout = FIRST):
    """Greedy-decode the texts that just finished, as a user decodes them (KV-cached, batched).
    A text that stopped lossless but does not decode back is not done: it goes on from its mem
    (a continuation: twice the margin it had, at least DECODE_MARGIN_FLOOR for the model's
    precision, no restarts) within what is left of its max_steps, else it ends as max_steps.
    Returns the texts that are done (their decoded ids in ``result``); ``ids`` gives the
    attempt ids."""
    mems = torch.stack([job.result["mem"] for job in jobs])
    decoded = greedy_decode(lm, mems, [job.token_ids[0] for job in jobs],
                            max(len(job.token_ids) for job in jobs) - 1, layout)
    done = []
    for job, out in zip(jobs, decoded):
        job.result["decoded_ids"] = out = out[:len(job.token_ids) - 1]
        if job.result["stop_reason"] != StopReason.LOSSLESS.label or decoded_back(out,
                                                                                  job.token_ids):
            done.append(job)
            continue
        job.decode_retries += 1
        left = job.settings.max_steps - job.result["steps"]
        if left < 1:
            job.result["stop_reason"] = StopReason.MAX_STEPS.label
            done.append(job)
            continue
        floor = DECODE_MARGIN_FLOOR[torch.finfo(lm.dtype).bits]
        settings = replace(job.settings, max_steps=left, stall_steps=0,
                           margin=max(2 * job.result["margin_required"], floor))
        continuation = Attempt(job, job.attempts, job.result["mem"], None, settings,
                               step_offset=job.result["steps"])
        job.outcomes.clear()        # the continuation starts from this mem: it cannot do worse
        _add_attempt(sched, attempts, next(ids), continuation)
    return done


def finish(lm: LoadedModel, jobs: list[Job], n_mem: int, backend, batch_record: dict,
           layout: Layout = FIRST) -> list[CompressionResult]:
    """The results of jobs finished together: metrics with and without mem, beside what the
    optimization and the decode check (verify_decodes) recorded."""
    token_lists = [job.token_ids for job in jobs]
    mems = torch.stack([job.result["mem"] for job in jobs])
    without = evaluate(lm, token_lists, None, backend, layout)
    with_mem = evaluate(lm, token_lists, mems, backend, layout)
    kept = ("mem", "steps", "best_step", "stop_reason", "restarts", "attempt", "seconds",
            "attempts", "decoded_ids")
    return [make_result(
        token_ids=ids, n_mem=n_mem, model=lm.name, seed=job.seed, dtype=str(lm.dtype)[6:],
        device=lm.device.type, settings=dict(job.settings.to_dict(), **batch_record),
        ce_without_mem=float(without.ce[i]), ce_with_mem=float(with_mem.ce[i]),
        correct_without_mem=int(without.correct[i]), correct_with_mem=int(with_mem.correct[i]),
        margin=float(with_mem.margin[i]), decode_retries=job.decode_retries,
        text=lm.tokenizer.decode(ids), **{k: job.result[k] for k in kept})
        for i, (job, ids) in enumerate(zip(jobs, token_lists))]
