"""``--engine ray``: a sweep's texts computed by a pool of Ray actors, the driver owning the store.

The sweep runner (runner.py) plans every job and stores every row as in one process; only its
``compress_iter`` is replaced by ``RayPool.compress_iter``, which cuts each call's texts into
chunks and hands a chunk to whichever actor has a free slot. An actor holds its model loaded once
and streams each text's result back as it finishes (a generator task), so the driver stores it at
once. An actor that dies (kill -9, out of memory, its node lost) costs only the texts of its
chunks not yet returned: they go back to the front of the queue for any actor, and a new actor
takes the dead one's place. A text's result is yielded once. Per-text chains (--search,
--warm-start) keep working unchanged: the runner calls compress_iter round by round.

Results equal a one-process run's as batched results equal solo ones (docs/sweep.md), except with
``fill_slots`` > 0, whose parallel attempts depend on how many texts share a batch.

    pool = RayPool(workers=2)                        # a local cluster; address="auto" joins one
    for index, result in pool.compress_iter(texts, model=lm, n_mem=1): ...
    pool.close()
"""
from __future__ import annotations

import math
import os
from collections import deque

from cramfast.errors import CramfastError
from cramfast.models import LoadedModel

# Set before ray is first imported, for a local cluster only: no usage reporting, no token auth,
# and every Ray server bound to 127.0.0.1 (Ray's own switch for clusters that must stay local).
LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CHUNKS_PER_WORKER = 4   # a call's texts are cut so that each worker gets about this many chunks
SLOTS_PER_WORKER = 2    # chunks in flight per actor: the next one is queued while one runs
MAX_TRIES = 10          # a text re-queued this often (its actors died each time) is an error
SILENCE_S = 900         # no result from any actor for this long: the cluster cannot run them


def _import_ray(local: bool):
    if local:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise CramfastError("--engine ray needs Ray: pip install 'cramfast[ray]'") from None
    return ray


class _Cruncher:
    """One Ray actor: a model loaded once; ``run`` yields (text index, result) per finished text."""

    def __init__(self, model: str, dtype: str, threads: int | None):
        import torch

        import cramfast
        if threads:
            torch.set_num_threads(threads)
        self.lm = cramfast.load_model(model, dtype=dtype)

    def pid(self) -> int:
        return os.getpid()

    def run(self, indices: list[int], texts: list, kwargs: dict):
        import cramfast
        for i, result in cramfast.compress_iter(texts, model=self.lm, **kwargs):
            yield indices[i], result


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
        self._pids: list = []       # per actor, its process id (asked first, so answered first)
        self.replaced = 0           # actors that died and were replaced

    def _new_actor(self):
        remote = self.ray.remote(_Cruncher).options(num_cpus=1, num_gpus=self.gpus,
                                                    max_restarts=0)
        actor = remote.remote(*self.model_key, self.threads)
        return actor, actor.pid.remote()

    def _actors_for(self, model: str, dtype: str) -> list:
        if self.model_key != (model, dtype):            # one model on the pool at a time
            for actor in self.actors:
                self.ray.kill(actor)
            self.model_key = (model, dtype)
            self.actors, self._pids = map(list, zip(*(self._new_actor()
                                                      for _ in range(self.workers))))
        return self.actors

    def pids(self) -> list[int]:
        """The actors' process ids (what a fault test kills); waits for actors still starting."""
        return self.ray.get(list(self._pids))

    def compress_iter(self, texts, model=None, init_mems=None, **kwargs):
        """cramfast.compress_iter's contract over the pool: (index, result) as each text
        finishes, each index once. ``model`` a LoadedModel or name (each actor loads it)."""
        name, dtype = ((model.name, str(model.dtype).removeprefix("torch."))
                       if isinstance(model, LoadedModel) else (model, None))
        actors = self._actors_for(name, dtype)
        size = max(1, math.ceil(len(texts) / (CHUNKS_PER_WORKER * len(actors))))
        queue = deque(range(len(texts)))
        tries = dict.fromkeys(range(len(texts)), 0)
        inflight: dict = {}                 # generator -> (actor, its indices not yet returned)
        busy = dict.fromkeys(range(len(actors)), 0)
        while queue or inflight:
            for slot, actor in enumerate(actors):
                while queue and busy[slot] < SLOTS_PER_WORKER:
                    chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                    call = dict(kwargs)
                    if init_mems is not None:
                        call["init_mems"] = [init_mems[i] for i in chunk]
                    for i in chunk:
                        tries[i] += 1
                    generator = actor.run.remote(chunk, [texts[i] for i in chunk], call)
                    inflight[generator] = (slot, set(chunk))
                    busy[slot] += 1
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=SILENCE_S)
            if not ready:
                raise CramfastError(f"no result from any of {len(actors)} Ray workers in "
                                    f"{SILENCE_S} s: has the cluster a free CPU (and "
                                    f"{self.gpus} GPU) for each? (--workers)")
            for generator in ready:
                slot, left = inflight[generator]
                try:
                    index, result = self.ray.get(next(generator))
                except StopIteration:
                    del inflight[generator]
                    busy[slot] -= 1
                    continue
                except self.ray.exceptions.RayActorError:
                    self._replace(slot, actors, inflight, busy, queue, tries)
                    continue
                except self.ray.exceptions.RayTaskError as exc:
                    cause = exc.cause
                    raise (cause if isinstance(cause, CramfastError) else exc) from None
                left.discard(index)
                yield index, result

    def _replace(self, slot, actors, inflight, busy, queue, tries):
        """The actor of ``slot`` died: every chunk it held goes back to the queue's front."""
        lost = []
        for generator, (s, left) in list(inflight.items()):
            if s == slot:
                lost += sorted(left)
                del inflight[generator]
        busy[slot] = 0
        exhausted = [i for i in lost if tries[i] >= MAX_TRIES]
        if exhausted:
            raise CramfastError(f"texts {exhausted[:5]} were lost with {MAX_TRIES} actors in a "
                                "row; giving up")
        queue.extendleft(sorted(lost, reverse=True))
        actors[slot], self._pids[slot] = self._new_actor()
        self.replaced += 1
        self.log(f"ray: a worker died; {len(lost)} text(s) re-queued, a new worker started "
                 f"({len(actors)} alive)")

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.owns_ray:
            self.ray.shutdown()
