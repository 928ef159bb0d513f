"""llama-cpp-python engine: many sequences in one context, requests batched into rounds.

Each request (token ids and the positions whose logits it wants) runs on one of `slots`
sequences of llama.cpp's KV cache. A request lands on the free sequence sharing the longest
token prefix with it, so a stream's next check, a growing answer sent again by a gateway, or
the next item of a batch sorted by prompt find their earlier tokens in the cache and only the
new tail is evaluated, whatever other callers ran in between. Requests from several threads
that are pending at the same time run as one round: one `llama_decode` per `n_batch` tokens
with several sequences in it (backends/scheduler.py).

The KV cache is unified (`kv_unified`): one pool of `kv_tokens` cells (default
defaults.default_kv_tokens) that every sequence draws from, so a round is evaluated as one
ubatch whatever the sequences' lengths (llama.cpp splits a non-unified round into equal-length
pieces per sequence), and memory does not grow with `slots`: when a round needs room, the least
recently used sequences outside it are dropped (their next call evaluates from scratch).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..defaults import (
    DEFAULT_KV_TYPE,
    DEFAULT_OMP_WAIT_POLICY,
    DEFAULT_SLOTS,
    KV_TYPE_BYTES,
    KV_TYPES,
    default_kv_tokens,
    default_threads,
    kv_cell_bytes,
)
from ..errors import (
    EngineError,
    InvalidInputError,
    ModelFileError,
    require,
)
from ..utils import capture_stderr
from ..config import check_kv_tokens, check_slots, check_threads
from .base import Engine, EngineStats, Interrupt, check_positions
from .prefix_cache import PrefixStateCache  # noqa: F401 (re-exported: the server imports it from here)
from .llama_glue import (
    Aborted,
    interrupt_error,
    llama_default_params,
    quiet_logging,
    strlen_abort_callback,
)
from .scheduler import Request, RoundScheduler
from .slots import Placement, SlotRequest, SlotSequence, evictions, place

# A request continues a sequence when their common prefix reaches this close to where the
# sequence's last request started reading logits (its "stem"). The Classifier sets the
# backend's `extension_slack` to what a stream's next check legitimately drops: the template's
# tail after the answer, the first cue, and a token or two of the answer that re-tokenizes.
DEFAULT_EXTENSION_SLACK = 16
# llama.cpp's physical batch: the abort callback is checked between graph nodes, and at WildGuard's
# width one matrix product over a 512-token ubatch took ~0.2 s idle (up to 0.6 s on a loaded 2-core
# machine) before a cancel took effect; 128 tokens keep it ~4x shorter at the same prefill rate.
UBATCH = 128


def check_kv_memory(kv_tokens: int, bytes_per_token: int, n_ctx: int, kv_type: str = DEFAULT_KV_TYPE) -> None:
    """Refuse a KV cache larger than this machine's memory with the figures, before llama.cpp
    tries to allocate it (it fails with std::bad_alloc, or the kernel kills the process)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return
    need = kv_tokens * bytes_per_token
    if total > 0 and need > total:
        raise InvalidInputError(
            f"kv_tokens={kv_tokens} (n_ctx={n_ctx} and slots) needs a {need / 2**30:.1f} GiB KV cache "
            f"({bytes_per_token} bytes per token, {kv_type}) but this machine has {total / 2**30:.1f} GiB of memory; "
            "lower kv_tokens, n_ctx or slots"
        )


@dataclass(eq=False)
class LlamaRequest(Request):
    """A request with its round state: where it runs, and the logits read so far."""

    placement: Placement | None = None
    # A request on a new sequence: its state goes to the shared prefix cache once evaluated.
    save_to_cache: bool = False
    logits: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def where(self) -> Placement:
        assert self.placement is not None  # placed when its round starts
        return self.placement


class LlamaCppBackend(Engine):
    """The llama.cpp engine (see the module docstring): thread-safe, requests batched into rounds."""

    stats: EngineStats  # always kept

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int,
        threads: int | None,
        flash_attn: bool = True,
        use_mmap: bool = True,
        repack: bool = False,
        n_batch: int = 512,
        slots: int = DEFAULT_SLOTS,
        kv_tokens: int | None = None,
        kv_type: str = DEFAULT_KV_TYPE,
        prefix_cache: PrefixStateCache | None = None,
    ):
        # llama-cpp-python's wheels run the CPU threads with OpenMP: between graph nodes a thread
        # that waits spins (libgomp's default), which on a CPU shared with other work stalled
        # calls for seconds. Passive waiting (sleep on a futex) is the polite default; it must
        # be set before libgomp loads, and the user's own setting wins (docs/embedding.md).
        os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)
        llama_cpp = require("llama_cpp", "gguf")
        self._llama_cpp = llama_cpp
        from ..gguf_meta import read_gguf_info

        # Every hyperparameter llama.cpp asserts on is checked first (it aborts the process
        # otherwise), also when a backend is made without load().
        info = read_gguf_info(path)
        check_threads(threads)
        check_slots(slots)
        check_kv_tokens(kv_tokens, n_ctx)
        kv_tokens = default_kv_tokens(n_ctx, slots) if kv_tokens is None else kv_tokens
        if kv_type not in KV_TYPES or (kv_type != "f16" and not flash_attn):
            raise InvalidInputError(
                f"kv_type must be one of {', '.join(KV_TYPES)} (q8_0 with flash_attn), got {kv_type!r}"
            )
        # the GGUF's figure is f16's (gguf_meta): a q8_0 cache needs 34/64 of it
        per_token = int(info.kv_bytes_per_token * KV_TYPE_BYTES[kv_type] / KV_TYPE_BYTES["f16"])
        check_kv_memory(kv_tokens, per_token, n_ctx, kv_type)
        kv_ggml = getattr(llama_cpp, f"GGML_TYPE_{kv_type.upper()}")
        threads = threads or default_threads()
        # verbose=True only while loading, into a captured stderr: with verbose=False
        # llama-cpp-python sends llama.cpp's load log to /dev/null, and a failed load would say
        # nothing about why. The tail goes into the error; on success the log is dropped.
        try:
            # repack=False: the CPU backend's repacked weight copies crashed (SIGSEGV) on
            # multi-token batches of Q8_0/Q4_K files on an AMX machine, and they add a second
            # copy of the weights to RSS (docs/decisions.md: 7.8 GB for a 4.4 GB file).
            with (
                capture_stderr() as log,
                llama_default_params(
                    {"use_extra_bufts": repack},
                    {"n_seq_max": slots, "kv_unified": True, "type_k": kv_ggml, "type_v": kv_ggml},
                ),
            ):
                try:
                    self._llm = llama_cpp.Llama(
                        model_path=str(Path(path)),
                        n_ctx=kv_tokens,
                        n_batch=min(n_batch, n_ctx),
                        n_ubatch=min(UBATCH, n_batch, n_ctx),
                        n_threads=threads,
                        n_threads_batch=threads,
                        logits_all=False,
                        flash_attn=flash_attn,
                        use_mmap=use_mmap,
                        verbose=True,
                    )
                finally:
                    quiet_logging()
            self._llm.verbose = False
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            tail = log.tail()
            raise ModelFileError(
                f"{path}: llama.cpp could not load this model ({exc})" + (f"; llama.cpp said: {tail}" if tail else "")
            ) from None
        self.n_ctx = n_ctx  # per sequence: what one call may use
        self.n_vocab = self._llm.n_vocab()
        self.slots = slots
        self.extension_slack = DEFAULT_EXTENSION_SLACK
        self.kv_tokens = kv_tokens
        self.kv_type = kv_type
        self.n_batch = min(n_batch, n_ctx)
        self.kv_bytes_per_token = self._kv_bytes_per_token()
        self._ctx = self._llm.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._sequences = [SlotSequence(s) for s in range(slots)]
        self._clock = 0
        # Abort without the GIL: llama.cpp calls the callback between graph nodes from a compute
        # thread; a Python callback there would wait for the GIL behind any busy Python thread.
        # libc's strlen over a one-byte flag buffer answers "abort" (1) or "go on" (0) in C.
        self._abort_flag = ctypes.create_string_buffer(2)
        self._abort_lock = threading.Lock()
        self._round: list[LlamaRequest] | None = None
        self._abort_fn = strlen_abort_callback(llama_cpp)
        if self._abort_fn is not None:  # without it, calls stop between rounds only
            llama_cpp.llama_set_abort_callback(
                self._ctx, self._abort_fn, ctypes.cast(self._abort_flag, ctypes.c_void_p)
            )
        self.stats = EngineStats()
        self._scheduler: RoundScheduler[LlamaRequest] = RoundScheduler(
            self._run_round, max_round=slots, abort=self._request_abort
        )
        # Opt-in; may be assigned after construction and shared between backends of one model.
        self.prefix_cache = prefix_cache
        self.tokens_evaluated = 0  # a counter for benchmarks and metrics

    def _kv_bytes_per_token(self) -> int:
        """K and V per token over all layers (what one more token of context costs)."""
        cpp, model = self._llama_cpp, self._llm._model.model
        n_head = max(1, cpp.llama_model_n_head(model))
        head_dim = cpp.llama_model_n_embd(model) // n_head
        return kv_cell_bytes(cpp.llama_model_n_layer(model), cpp.llama_model_n_head_kv(model), head_dim, self.kv_type)

    # -- the Engine API -----------------------------------------------------------------------
    def logits_at(
        self, ids: Sequence[int], positions: Sequence[int], interrupt: Interrupt | None = None
    ) -> list[np.ndarray]:
        """Logits at `positions` of `ids`, evaluating only what follows the longest prefix a
        free sequence already holds; thread-safe, batched with concurrent callers."""
        ids = [int(i) for i in ids]
        positions = check_positions(ids, positions)
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        return self._scheduler.submit(LlamaRequest(ids, positions, interrupt))

    def feed_piece(self, ids: Sequence[int], interrupt: Interrupt | None = None) -> None:
        """A piece of a long input: the scheduler runs waiting calls first (scheduler.py)."""
        ids = [int(i) for i in ids]
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        self._scheduler.submit(LlamaRequest(ids, [len(ids) - 1], interrupt, piece=True))

    def reset(self) -> None:
        """Drop every sequence's KV cache: the next calls evaluate from their first token
        (benchmarks compare against re-scoring from scratch this way)."""
        with self._scheduler.idle():
            for seq in self._sequences:
                self._llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, 0, -1)
                seq.tokens = []

    # -- rounds ----------------------------------------------------------------------------------
    def _request_abort(self, batch: list[LlamaRequest]) -> None:
        with self._abort_lock:  # a late watchdog must not stop the next round
            if self._round is batch:
                self._abort_flag[0] = b"x"

    def _assign(self, batch: list[LlamaRequest]) -> None:
        """Place each request on its own sequence (backends/slots.py: the rules) and apply the
        placement: a copied prefix is shared from the donor (llama_memory_seq_cp: in the
        unified pool the cells are shared, nothing is evaluated); a request on a new sequence
        may restore a longer prefix from the shared prefix cache."""
        cpp, mem = self._llama_cpp, self._mem
        wanted = [SlotRequest(r.ids, r.positions[0]) for r in batch]
        for request, placement in zip(batch, place(self._sequences, wanted, self.extension_slack)):
            target = placement.sequence
            if placement.copy_from is not None:
                cpp.llama_memory_seq_rm(mem, target.seq_id, 0, -1)
                if placement.keep:
                    cpp.llama_memory_seq_cp(mem, placement.copy_from.seq_id, target.seq_id, 0, placement.keep)
                target.tokens, target.stem = placement.copy_from.tokens[: placement.keep], 0
                self.stats.prefix_copies += 1
            self._clock += 1
            target.last_used = self._clock
            if self.prefix_cache is not None and not placement.extends:
                keep = self._restore_longest(target, request, placement.keep)
                placement = Placement(target, keep, placement.copy_from, placement.extends)
                request.save_to_cache = True  # a new sequence: saved to the cache once evaluated
            request.placement = placement

    def _run_round(self, batch: list[LlamaRequest]) -> None:
        # A round must fit the KV pool whole; if its requests alone are too long, halve it.
        if len(batch) > 1 and sum(len(r.ids) for r in batch) > self.kv_tokens:
            half = len(batch) // 2
            self._run_round(batch[:half])
            self._run_round(batch[half:])
            return
        self._run_fitting_round(batch)

    def _make_room(self, batch: list[LlamaRequest]) -> None:
        """Evict idle sequences until the round's tokens fit the pool beside what stays."""
        need = sum(len(r.ids) - r.where.keep for r in batch)
        for seq in evictions(self._sequences, [r.where.sequence for r in batch], need, self.kv_tokens):
            self._llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, 0, -1)
            seq.tokens = []
            self.stats.evictions += 1

    def _run_fitting_round(self, batch: list[LlamaRequest]) -> None:
        cpp, mem = self._llama_cpp, self._mem
        with self._abort_lock:
            self._round = batch
            self._abort_flag[0] = b"\0"
        self._assign(batch)
        rows: list[tuple[int, int]] = []  # (request index, position) per token in the round
        for request in batch:
            seq, keep = request.where.sequence, request.where.keep
            cpp.llama_memory_seq_rm(mem, seq.seq_id, keep, -1)
            seq.tokens = request.ids[:keep]
            request.logits = {}
        self._make_room(batch)
        for index, request in enumerate(batch):
            rows.extend((index, pos) for pos in range(request.where.keep, len(request.ids)))
        wanted = [set(r.positions) for r in batch]
        try:
            for start in range(0, len(rows), self.n_batch):
                chunk = rows[start : start + self.n_batch]
                self._decode(batch, chunk, wanted)
        except BaseException as exc:
            for request in batch:  # what was decoded before the failure is not trusted
                seq = request.where.sequence
                cpp.llama_memory_seq_rm(mem, seq.seq_id, 0, -1)
                seq.tokens = []
            if not isinstance(exc, Aborted):
                raise
            # Only rounds whose every request was interrupted are aborted: each gets its reason.
            self.stats.aborted += 1
            for request in batch:
                request.error, request.done = interrupt_error(request.interrupt), True
            return
        finally:
            with self._abort_lock:
                self._round = None
        self.stats.rounds += 1
        self.stats.requests += len(batch)
        for request in batch:
            seq, keep = request.where.sequence, request.where.keep
            # A request that reads on after the stem (score mode's second call, a generation
            # step) continues the same exchange: the stem stays where that exchange ends.
            if not (request.where.extends and keep >= seq.stem):
                seq.stem = request.positions[0]
            seq.tokens = list(request.ids)
            self.tokens_evaluated += len(request.ids) - keep
            request.result = [request.logits[p] for p in request.positions]
            if request.save_to_cache and self.prefix_cache is not None:
                self.prefix_cache.put(request.ids, self._save_sequence(seq.seq_id))
            request.done = True

    def _decode(self, batch: list[LlamaRequest], chunk: list[tuple[int, int]], wanted: list[set[int]]) -> None:
        cpp, b = self._llama_cpp, self._batch
        for j, (index, pos) in enumerate(chunk):
            request = batch[index]
            b.token[j] = request.ids[pos]
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = request.where.sequence.seq_id
            b.logits[j] = pos in wanted[index]
        b.n_tokens = len(chunk)
        self.stats.decode_calls += 1
        code = cpp.llama_decode(self._ctx, b)
        if code == 2:
            raise Aborted()
        if code != 0:
            raise EngineError(
                f"llama_decode failed with code {code} on a round of {len(batch)} request(s), "
                f"{len(chunk)} tokens; the classifier stays usable (these sequences were reset)"
            )
        for j, (index, pos) in enumerate(chunk):
            if pos in wanted[index]:
                ptr = cpp.llama_get_logits_ith(self._ctx, j)
                batch[index].logits[pos] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(
                    np.float32, copy=True
                )

    # -- the shared prefix cache ------------------------------------------------------------------
    def _restore_longest(self, seq: SlotSequence, request: LlamaRequest, keep: int) -> int:
        """Load the cached state sharing the longest prefix with the request into `seq` if it
        beats what `seq` holds; returns how many tokens need no evaluation."""
        cache = self.prefix_cache
        assert cache is not None  # only called with a cache
        ids = request.ids[: request.positions[0] + 1]
        found = cache.lookup(ids)
        reusable = None if found is None else min(found[0], len(ids) - 1)
        if found is None or reusable is None or reusable <= keep:
            cache.record(None)
            return keep
        _, key, state = found
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not self._llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(state), seq.seq_id):
            cache.record(None)
            self._llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, 0, -1)
            seq.tokens = []
            return 0
        seq.tokens = list(key)
        cache.record(reusable)
        return reusable

    def _save_sequence(self, seq_id: int) -> bytes:
        size = self._llama_cpp.llama_state_seq_get_size(self._ctx, seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = self._llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, seq_id)
        return bytes(buffer)[:written]

    def close(self) -> None:
        """Wait for the running round, fail queued calls, free the model."""
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None:
            scheduler.close()
        llm = getattr(self, "_llm", None)
        if llm is not None:
            self._llama_cpp.llama_batch_free(self._batch)
            llm.close()
            self._llm = None
