"""``--engine ray``: a sweep's texts computed by a pool of Ray actors, the driver owning the store.

The sweep runner (runner.py) plans every job and stores every row as in one process; only its
``compress_iter`` is replaced by ``RayPool.compress_iter``, which returns a ``PoolStream``: the
engine's Stream contract (``submit`` and ``withdraw`` while it runs; (index, result) as each text
finishes, each index once) over the pool.

Each actor holds its model loaded once and one long-lived engine Stream, fed text by text: the
driver keeps every actor holding about as many texts as its batch has slots (its stream's
max_slots, plus LOOKAHEAD queued so that a slot freed at a sync is refilled at once), longest
texts first, and sends the next text the moment one comes back, so a slow text holds up one
slot, not a worker. A text the driver sends joins the actor's running batch at its next sync;
an actor whose stream has drained (every text done, none sent) waits, and the next text opens a
new stream. The actor streams back each result as it finishes (a generator task, ``results``)
and every checkpoint its stream saves (``saved``); the driver keeps each text's newest one, in
the sweep's store too when it has one.

An actor that dies (kill -9, out of memory, its node lost) costs only the steps since its texts'
last checkpoints: the texts it held go back to the front of the queue, each with its newest
checkpoint, and a new actor takes the dead one's place. A text's result is yielded once.

Results equal a one-process run's as batched results equal solo ones (docs/sweep.md), except with
``fill_slots`` > 0, whose parallel attempts depend on how many texts share a batch.

    pool = RayPool(workers=2)                        # a local cluster; address="auto" joins one
    stream = pool.compress_iter(texts, model=lm, n_mem=1, longest=64)
    for index, result in stream:
        stream.submit(more_ids)                      # optional, as with the engine's Stream
    pool.close()
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from collections import deque
from dataclasses import dataclass

from cramfast.errors import CramfastError
from cramfast.models import LoadedModel

# Set before ray is first imported, for a local cluster only: no usage reporting, no token auth,
# and every Ray server bound to 127.0.0.1 (Ray's own switch for clusters that must stay local).
LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOKAHEAD = 2           # texts an actor holds beyond its slots: a slot freed is refilled at once
OPENING_TEXTS = 32      # texts sent before an actor's stream has said its slots (a CPU batch's)
ACTOR_THREADS = 6       # an actor's concurrent calls: results, saved, and submits beside them
MAX_TRIES = 10          # a text re-queued this often (its actors died each time) is an error
SILENCE_S = 900         # no message from any actor for this long: the cluster cannot run them


def _import_ray(local: bool):
    if local:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise CramfastError("--engine ray needs Ray: pip install 'cramfast[ray]'") from None
    return ray


@dataclass
class _Text:
    """One text of a PoolStream, as the actors get it; ``record``: (fingerprint, bytes) of its
    newest checkpoint, sent with it so that the actor it goes to resumes it."""
    ids: object                     # str or token ids
    settings: dict | None
    init_mem: object
    record: tuple | None = None


class _Outbox:
    """An actor stream's CheckpointStore (cramfast.engine.checkpoint): records the driver sent
    are read from ``preloaded``; records the stream saves wait in ``pending`` (fingerprint ->
    bytes, the newest only) for the ``saved`` generator to send. Guarded by the actor's lock."""

    def __init__(self, lock: threading.Condition):
        self.lock = lock
        self.preloaded: dict[str, bytes] = {}
        self.pending: dict[str, bytes] = {}

    def get(self, fingerprints):
        with self.lock:
            return {fp: self.preloaded[fp] for fp in fingerprints if fp in self.preloaded}

    def put(self, records):
        with self.lock:
            self.pending.update(records)
            self.lock.notify_all()

    def delete(self, fingerprints):
        with self.lock:
            for fp in fingerprints:
                self.preloaded.pop(fp, None)
                self.pending.pop(fp, None)


class _Cruncher:
    """One Ray actor, threaded (``submit`` runs beside the two generators): a model loaded once
    and at most one engine Stream at a time. ``submit`` hands texts to the running stream of
    their call (they join its batch at the next sync) or, when none runs, to the inbox;
    ``results`` opens a stream from the inbox, yields its messages, and waits for more when it
    drains, until ``close``.

    Messages (tuples): ("open", call, max_slots) when a stream starts; ("done", call, key,
    result) per finished text; ("error", call, exception) when a call's texts cannot run. From
    ``saved``: ("saved", call, [(key, fingerprint, bytes), ...])."""

    def __init__(self, model: str, dtype: str, threads: int | None):
        import torch

        import cramfast
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        self.lm = cramfast.load_model(model, dtype=dtype)
        self.lock = threading.Condition()
        self.inbox: deque = deque()     # (call, kwargs, key, _Text) not in a stream yet
        self.call = None                # the running stream's call, and the stream
        self.stream = None
        self.keys: dict[int, tuple] = {}    # the stream's index -> (key, _Text), not yet done
        self.gone: dict[int, object] = {}   # the stream's index -> key, of texts withdrawn
        self.fp_keys: dict[str, list] = {}  # fingerprint -> keys of the stream's texts
        self.kwargs = None              # the running stream's compress_iter arguments
        self.outbox = _Outbox(self.lock)
        self.failed: set = set()        # calls whose texts could not run
        self.closed = False

    def pid(self) -> int:
        return os.getpid()

    def submit(self, call: int, kwargs: dict, items: list[tuple]):
        """``items``: (key, _Text) of call ``call``, whose compress_iter arguments are
        ``kwargs``. Raises CramfastError on bad input, as Stream.submit does."""
        with self.lock:
            for key, text in items:
                if call in self.failed:
                    break
                if text.record is not None:
                    self.outbox.preloaded[text.record[0]] = text.record[1]
                if self.stream is not None and self.call == call:
                    # Stream.submit from this thread, beside the one iterating the stream: the
                    # job reaches the batch through a deque its loop drains at each sync.
                    self._enter(self.stream.submit(text.ids, text.settings, text.init_mem),
                                key, text)
                else:
                    self.inbox.append((call, kwargs, key, text))
            self.lock.notify_all()

    def withdraw(self, call: int, key):
        """Take text ``key`` of call ``call`` out without a result: from the running stream
        (Stream.withdraw: its record saved, and sent by ``saved``) or from the inbox."""
        with self.lock:
            if self.stream is not None and self.call == call:
                for index, (k, _) in list(self.keys.items()):
                    if k == key:
                        self.stream.withdraw(index)
                        self.gone[index] = self.keys.pop(index)[0]
            self.inbox = deque(entry for entry in self.inbox
                               if (entry[0], entry[2]) != (call, key))

    def close(self):
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def results(self):
        import torch
        if self.threads:                # this thread's own intra-op pool
            torch.set_num_threads(self.threads)
        while True:
            with self.lock:
                while not self.inbox and not self.closed:
                    self.lock.wait()
                if not self.inbox:
                    return
                call, kwargs = self.inbox[0][:2]
                first = [(key, text) for c, _, key, text in self.inbox if c == call]
                self.inbox = deque(entry for entry in self.inbox if entry[0] != call)
                try:
                    stream, error = self._open(kwargs, first), None
                    self.call = call
                except Exception as exc:        # bad input: the driver raises it
                    stream, error = None, exc
                    self._end(call, failed=True)
            if error is not None:
                yield ("error", call, error)
                continue
            yield ("open", call, stream.batch.max_slots)
            try:
                for index, result in stream:
                    with self.lock:     # one withdrawn after it had finished still comes
                        key = (self.keys.pop(index)[0] if index in self.keys
                               else self.gone.pop(index))
                    yield ("done", call, key, result)
            except Exception as exc:            # a failing step: the call ends with it
                error = exc
            with self.lock:
                self._end(call, failed=error is not None)
            if error is not None:
                yield ("error", call, error)

    def _end(self, call: int, failed: bool):
        """The running stream has ended. Texts submitted as its loop ended never entered it:
        they wait for the next stream, unless the call failed (its texts are dropped, and so
        are those sent later)."""
        if failed:
            self.failed.add(call)
            self.inbox = deque(entry for entry in self.inbox if entry[0] != call)
        else:
            left = [(call, self.kwargs, key, text) for key, text in self.keys.values()]
            self.inbox.extendleft(reversed(left))
        self.call, self.stream, self.kwargs = None, None, None
        self.keys, self.fp_keys, self.gone = {}, {}, {}

    def _open(self, kwargs: dict, first: list[tuple]):
        self.kwargs = kwargs
        texts = [text for _, text in first]
        for text in texts:
            if text.record is not None:
                self.outbox.preloaded[text.record[0]] = text.record[1]
        self.stream = self._new_stream(kwargs, texts, self.outbox)
        for index, (key, text) in enumerate(first):
            self._enter(index, key, text)
        return self.stream

    def _new_stream(self, kwargs: dict, texts: list[_Text], store):
        import cramfast
        per_text = ([t.settings or {} for t in texts]
                    if any(t.settings for t in texts) else None)
        init_mems = ([t.init_mem for t in texts]
                     if any(t.init_mem is not None for t in texts) else None)
        return cramfast.compress_iter([t.ids for t in texts], model=self.lm, per_text=per_text,
                                      init_mems=init_mems, checkpoint=store, **kwargs)

    def _enter(self, index: int, key, text: _Text):
        self.keys[index] = (key, text)
        self.fp_keys.setdefault(self.stream.checkpointer.fingerprints[index], []).append(key)

    def saved(self):
        """The stream's checkpoints as they are saved (the newest per text)."""
        while True:
            with self.lock:
                while not self.outbox.pending and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                records = [(key, fp, blob) for fp, blob in self.outbox.pending.items()
                           for key in self.fp_keys.get(fp, ())]
                self.outbox.pending = {}
                call = self.call
            if records:
                yield ("saved", call, records)

    def fingerprints(self, kwargs: dict, texts: list[_Text]) -> list[str]:
        """The checkpoint fingerprint of each text as a stream of these arguments keys it (a
        stream built, never run), so a restarted driver can send each its stored record."""
        stream = self._new_stream(kwargs, texts, _Outbox(threading.Condition()))
        return [stream.checkpointer.fingerprints[i] for i in range(len(texts))]


class RayPool:
    """A pool of ``workers`` actors on a Ray cluster (a new local one when ``address`` is None),
    each with ``gpus_per_worker`` GPUs and ``threads`` CPU threads (None: Ray's one per CPU)."""

    def __init__(self, address: str | None = None, workers: int = 2, gpus_per_worker: float = 0,
                 threads: int | None = None, log=None):
        self.ray = _import_ray(local=address is None)
        self.owns_ray = not self.ray.is_initialized()   # else joined this process's connection
        if self.owns_ray:
            options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if address is None:
                options["num_cpus"] = workers
                if not gpus_per_worker:
                    options["num_gpus"] = 0
            self.ray.init(address=address, **options)
        self.workers, self.gpus, self.threads = workers, gpus_per_worker, threads
        self.log = log or (lambda line: None)
        self.model_key = None
        self.actors: list = []
        self.messages: list = []    # per actor, its ``results`` generator
        self.saves: list = []       # per actor, its ``saved`` generator
        self._pids: list = []       # per actor, its process id (asked first, so answered first)
        self.replaced = 0           # actors that died and were replaced
        self.resumed = 0            # texts re-queued with a checkpoint to resume from
        self.calls = itertools.count()
        self.running: PoolStream | None = None

    def _start_actor(self, slot: int):
        remote = self.ray.remote(_Cruncher).options(num_cpus=1, num_gpus=self.gpus,
                                                    max_restarts=0,
                                                    max_concurrency=ACTOR_THREADS)
        actor = remote.remote(*self.model_key, self.threads)
        started = (actor, actor.results.remote(), actor.saved.remote(), actor.pid.remote())
        for name, value in zip(("actors", "messages", "saves", "_pids"), started):
            column = getattr(self, name)
            if slot < len(column):
                column[slot] = value
            else:
                column.append(value)

    def _actors_for(self, model: str, dtype: str) -> list:
        if self.model_key != (model, dtype):            # one model on the pool at a time
            self._stop_actors()
            self.model_key = (model, dtype)
            for slot in range(self.workers):
                self._start_actor(slot)
        return self.actors

    def _stop_actors(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors, self.messages, self.saves, self._pids = [], [], [], []
        self.model_key = None

    def status(self) -> str:
        """The pool in a few words, for a progress bar: its workers (a dead one is replaced the
        moment its death is seen) and how many died and were replaced."""
        replaced = f" ({self.replaced} replaced)" if self.replaced else ""
        return f"{self.workers} workers{replaced}"

    def pids(self) -> list[int]:
        """The actors' process ids (what a fault test kills); waits for actors still starting."""
        return self.ray.get(list(self._pids))

    def compress_iter(self, texts, model=None, per_text=None, init_mems=None, checkpoint=None,
                      longest=None, hooks=None, **kwargs) -> PoolStream:
        """cramfast.compress_iter's contract over the pool: a PoolStream yielding (index,
        result) as each text finishes, each index once, that takes more texts while it runs
        (``submit``). ``model``: a LoadedModel or a name (each actor loads it); ``checkpoint``:
        a CheckpointStore (the sweep's Store) where the texts' newest checkpoints are kept, and
        from which a restarted driver resumes them."""
        if hooks is not None:
            raise CramfastError("hooks run in the calling process; --engine ray cannot call them")
        if self.running is not None and not self.running.finished:
            # the last call was left part-way (its caller raised): its texts still occupy the
            # actors, so they start afresh
            self._stop_actors()
        name, dtype = ((model.name, str(model.dtype).removeprefix("torch."))
                       if isinstance(model, LoadedModel) else (model, None))
        self._actors_for(name, dtype)
        self.running = PoolStream(self, next(self.calls), model, texts, per_text, init_mems,
                                  checkpoint, longest, kwargs)
        return self.running

    def close(self):
        self._stop_actors()
        if self.owns_ray:
            self.ray.shutdown()


class PoolStream:
    """One compress_iter call on a RayPool. The driver's bookkeeping: the texts not yet sent
    (``queue``), the texts each actor holds (``held``, by actor slot), each actor's batch size
    for this call once its stream has opened (``slots``), and each held text's newest
    checkpoint (``records``)."""

    def __init__(self, pool: RayPool, call: int, model, texts, per_text, init_mems, store,
                 longest, kwargs):
        self.pool, self.ray, self.call, self.store = pool, pool.ray, call, store
        self.lm = model if isinstance(model, LoadedModel) else None
        if isinstance(texts, (str, bytes)) or (texts and isinstance(texts[0], int)):
            texts = [texts]
        if not texts:
            raise CramfastError("no texts to compress")
        self.kwargs = kwargs
        self.texts: list[_Text] = []
        self.queue: deque = deque()
        self.held = {slot: set() for slot in range(len(pool.actors))}
        self.slots: dict[int, int] = {}
        self.records: dict[int, tuple] = {}
        self.tries: dict[int, int] = {}
        self.done: set = set()
        self.taken: list = []           # fingerprints of results yielded: gone at the next one
        self.submits: set = set()       # the ObjectRefs of submit calls not yet answered
        self.turn = 0
        self.sources: dict = {}         # what _waiting waits on -> its actor's slot
        self.finished = False
        self.failed = None              # the error that ended the call, if one did
        self.withdrawn: set = set()     # texts taken out (withdraw): not waited for
        for i, ids in enumerate(texts):
            self._add(ids, None if per_text is None else per_text[i],
                      None if init_mems is None else init_mems[i])
        lengths = [self._length(t.ids) for t in self.texts]
        # Longest first: texts of about one length reach an actor together, so its batch is
        # padded little (what the engine's bucketed queue does when it holds every text; an
        # actor's holds LOOKAHEAD), and the short texts come last, to even out the workers' ends.
        self.queue = deque(sorted(self.queue, key=lambda i: -lengths[i]))
        self.longest = max([longest or 0] + lengths)
        self.kwargs["longest"] = self.longest   # every actor's batch sized for the longest
        self.opening = min(math.ceil(len(self.texts) / len(pool.actors)),
                           kwargs.get("max_slots") or OPENING_TEXTS)
        self.from_store = 0             # texts that resume from a record the store held
        if store is not None and getattr(store, "checkpoints", lambda: 1)():
            self._stored_records()

    # -- the engine Stream's contract ------------------------------------------------------

    def submit(self, text, settings: dict | None = None, init_mem=None) -> int:
        """Queue one more text (``settings``: its per-text settings; ``init_mem``: its start);
        returns its index. Its other checks run on the actor that takes it: an error there is
        raised by the next ``__next__``."""
        if self._length(text) > self.longest:
            raise CramfastError(f"a submitted text of {self._length(text)} tokens is longer "
                                f"than the stream was sized for ({self.longest}); pass "
                                "longest= to compress_iter")
        self.finished = False
        return self._add(text, settings, init_mem)

    def withdraw(self, index: int) -> None:
        """Take text ``index`` out without a result: a text still queued here is dropped, one an
        actor holds is withdrawn from its stream (its record saved there comes back and is
        kept, in the store too). A text that has finished by then still comes."""
        if index in self.done or index in self.withdrawn:
            return
        self.withdrawn.add(index)
        if index in self.queue:
            self.queue.remove(index)
            return
        for slot, held in self.held.items():
            if index in held:
                held.discard(index)
                self.submits.add(self.pool.actors[slot].withdraw.remote(self.call, index))

    def __iter__(self):
        return self

    def __next__(self):
        if self.failed is not None:     # a call whose texts could not run yields no more
            raise StopIteration
        if self.store is not None and self.taken:   # the caller has stored those rows
            self.store.delete(self.taken)
        self.taken = []
        while self.queue or any(self.held.values()):
            self._dispatch()
            waiting = self._waiting()
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=SILENCE_S)
            if not ready:
                raise CramfastError(f"no result from any of {len(self.pool.actors)} Ray workers "
                                    f"in {SILENCE_S} s: has the cluster a free CPU (and "
                                    f"{self.pool.gpus} GPU) for each? (--workers)")
            self.turn += 1
            finished = self._take(ready[0])
            if finished is not None:
                return finished
        self.finished = True
        raise StopIteration

    # -- the driver's side -----------------------------------------------------------------

    def _add(self, ids, settings, init_mem) -> int:
        index = len(self.texts)
        self.texts.append(_Text(ids, settings, init_mem))
        self.queue.append(index)
        self.tries[index] = 0
        return index

    def _length(self, ids) -> int:
        """Tokens of a text: its ids, or its tokenization where the model is loaded here, else
        a bound (one token per byte, and two special tokens)."""
        if isinstance(ids, str):
            n = (len(self.lm.tokenizer(ids)["input_ids"]) if self.lm is not None
                 else len(ids.encode()) + 2)
        else:
            n = len(ids)
        cut = self.kwargs.get("max_length")
        return min(n, cut) if cut else n

    def _stored_records(self):
        """A restarted driver: each text's record in the store, found by the fingerprint an
        actor's stream gives it."""
        try:
            fps = self.ray.get(self.pool.actors[0].fingerprints.remote(self.kwargs, self.texts))
        except self.ray.exceptions.RayActorError:
            return                      # the texts start afresh
        found = self.store.get(fps)
        for text, fp in zip(self.texts, fps):
            if fp in found:
                text.record = (fp, found[fp])
                self.from_store += 1

    def _room(self, slot: int) -> int:
        target = self.slots[slot] + LOOKAHEAD if slot in self.slots else self.opening
        return target - len(self.held[slot])

    def _dispatch(self):
        """Queued texts to the actors with room, the most room first; one submit per actor."""
        sends: dict[int, list] = {}
        while self.queue:
            slot = max(self.held, key=self._room)
            if self._room(slot) <= 0:
                break
            index = self.queue.popleft()
            self.held[slot].add(index)
            self.tries[index] += 1
            sends.setdefault(slot, []).append((index, self.texts[index]))
        for slot, items in sends.items():
            ref = self.pool.actors[slot].submit.remote(self.call, self.kwargs, items)
            self.submits.add(ref)

    def _waiting(self) -> list:
        """Every actor's next message and saved checkpoint, and the submits not yet answered,
        starting at another actor each turn (ray.wait answers the first ready in list order)."""
        n = len(self.pool.actors)
        order = [(self.turn + k) % n for k in range(n)]
        self.sources = {self.pool.messages[s]: s for s in order}
        self.sources.update({self.pool.saves[s]: s for s in order})
        return list(self.sources) + list(self.submits)

    def _take(self, ready):
        """Act on one ready message; returns (index, result) for a finished text, else None."""
        if ready in self.submits:
            self.submits.discard(ready)
            try:
                self.ray.get(ready)
            except self.ray.exceptions.RayActorError:
                pass                    # its ``results`` says so too: replaced there
            except self.ray.exceptions.RayTaskError as exc:
                self._raise(exc)
            return None
        slot = self.sources[ready]
        try:
            message = self.ray.get(next(ready))
        except self.ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:   # not a death to survive: every new actor would fail too
                self._raise(CramfastError("a Ray worker could not start: "
                                          + str(exc).strip().splitlines()[-1]))
            self._replace(slot)
            return None
        except self.ray.exceptions.ObjectLostError:     # its node lost with the message
            self._replace(slot)
            return None
        except StopIteration:           # closed from outside the pool: as if it died
            self._replace(slot)
            return None
        except self.ray.exceptions.RayTaskError as exc:
            self._raise(exc)
        kind, call = message[:2]
        if call != self.call:           # a stale message of an earlier call
            return None
        if kind == "open":
            self.slots[slot] = message[2]
        elif kind == "saved":
            self._keep(slot, message[2])
        elif kind == "error":
            self._raise(message[2])
        elif kind == "done":
            index, result = message[2:]
            self.held[slot].discard(index)
            if index in self.done:
                return None
            self.done.add(index)
            record = self.records.pop(index, None) or self.texts[index].record
            if record is not None:
                self.taken.append(record[0])
            return index, result
        return None

    def _keep(self, slot: int, records: list):
        """An actor's saved checkpoints: each text's newest, here and in the store."""
        fresh = {}
        for index, fp, blob in records:
            if (index in self.held[slot] or index in self.withdrawn) and index not in self.done:
                self.records[index] = (fp, blob)
                fresh[fp] = blob
        if self.store is not None and fresh:
            self.store.put(fresh)

    def _replace(self, slot: int):
        """The actor of ``slot`` died: the texts it held go back to the queue's front, each with
        its newest checkpoint, and a new actor takes its place."""
        self._drain_saves(slot)
        lost = sorted(self.held[slot])
        self.held[slot] = set()
        self.slots.pop(slot, None)
        exhausted = [i for i in lost if self.tries[i] >= MAX_TRIES]
        if exhausted:
            raise CramfastError(f"texts {exhausted[:5]} were lost with {MAX_TRIES} actors in a "
                                "row; giving up")
        for index in lost:
            self.texts[index].record = self.records.get(index, self.texts[index].record)
        resumed = sum(self.texts[i].record is not None for i in lost)
        self.pool.resumed += resumed
        self.queue.extendleft(reversed(lost))
        self.ray.kill(self.pool.actors[slot])
        self.pool._start_actor(slot)
        self.pool.replaced += 1
        self.pool.log(f"ray: a worker died; {len(lost)} text(s) re-queued ({resumed} from a "
                      f"checkpoint), a new worker started ({self.pool.status()})")

    def _drain_saves(self, slot: int):
        """The checkpoints a dead actor sent before it died and not yet read: kept, so that its
        texts resume from their newest."""
        saves = self.pool.saves[slot]
        while self.ray.wait([saves], num_returns=1, timeout=0)[0]:
            try:
                message = self.ray.get(next(saves))
            except (StopIteration, self.ray.exceptions.RayError):
                return
            if message[:2] == ("saved", self.call):
                self._keep(slot, message[2])

    def _raise(self, error):
        """A call's texts cannot run (bad input, a failing step): the error, as compress_iter
        raises it; the pool starts its next call on fresh actors."""
        self.finished = False
        if isinstance(error, self.ray.exceptions.RayTaskError):
            error = error.cause if isinstance(error.cause, CramfastError) else error
        self.failed = error
        raise error
