"""`ClipEncoder`: images and texts in, L2-normalised float32 vectors out.

One code path for the batch embedder and the online endpoints, so a window embedded during
ingestion and the same pixels sent as a query give the same vector:

    decoded uint8 pixels --(pinned memory, copy stream on CUDA)--> device
        --(resize, cut, normalise on the device: `ImageTransform.windows_input` / `image_input`)
        --(batches across tiles or images; fp16 weights on CUDA; inference mode)--> unit vectors

While a batch runs on a GPU the next one is prepared and launched before the first one's
vectors are fetched, so the device queue does not drain between batches. `clock` sums the
device time of the resize and encode stages for the embedder's stage timers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from cliprs.errors import Unavailable
from cliprs_model.preprocess import ImageTransform, input_fingerprint

K = TypeVar("K")

CPU_BATCH_SIZE = 64  # larger CPU batches only cost memory
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ModelInfo:
    """What was asked for and what actually runs (shown in /readyz and the web banner)."""

    requested: str
    loaded: str
    device: str
    dim: int
    fallback: bool = False
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class StageClock:
    """Seconds spent per stage of the device work, summed until `take`n.

    On CUDA, stages are timed with events (no host synchronisation in the loop); an event pair
    is read once the work behind it has finished, which `take` checks without waiting."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self._pending: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        """The totals so far (stages still running on the device are counted at a later call)."""
        still_running = []
        for name, start, end in self._pending:
            if end.query():
                self.totals[name] = self.totals.get(name, 0.0) + start.elapsed_time(end) / 1000
            else:
                still_running.append((name, start, end))
        self._pending = still_running
        out, self.totals = self.totals, {}
        return out


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ClipEncoder:
    """A loaded CLIP: tokenizer, image preprocessing and the two towers on one device.

    A backend (see `cliprs_model.loader`) may wrap any model whose ``get_image_features`` and
    ``get_text_features`` take CLIP-style inputs, and any image processor that
    `ImageTransform.from_processor` understands.
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        device: torch.device,
        info: ModelInfo,
        *,
        batch_size: int = 0,
        precision: str = "auto",
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # the reference that `transform` reproduces
        self.transform = ImageTransform.from_processor(image_processor)
        self.device = device
        self.info = info
        self.max_text_tokens = int(getattr(model.config.text_config, "max_position_embeddings", 77))
        self.clock = StageClock(device)
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.compiled = False
        self.configure(batch_size=batch_size, precision=precision)

    def configure(
        self,
        *,
        batch_size: int = 0,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        """Runtime tuning; 0 / "auto" pick for the device (see `ModelSettings`)."""
        self.precision = self._resolve_precision(precision)
        # On CUDA, fp16 weights (not autocast): no casts inside the loop, half the memory traffic.
        # Attention runs through torch's fused scaled-dot-product kernels (see the loader).
        half = self.device.type == "cuda" and self.precision == torch.float16
        self.model.to(dtype=torch.float16 if half else torch.float32)
        self.input_dtype = torch.float16 if half else torch.float32
        self._weights_are_half = half
        self._batch_size = batch_size
        if compile and not self.compiled:
            # Optional (CLIP_COMPILE): graph compilation of the image tower; on CUDA with graph
            # capture ("reduce-overhead"). Batches are padded to one size so it compiles once.
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.model.vision_model = torch.compile(self.model.vision_model, mode=mode, dynamic=False)
            self.compiled = True

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def batch_size(self) -> int:
        """Images per forward pass (sized on first use when configured as auto)."""
        if not self._batch_size:
            self._batch_size = self.suggest_batch_size()
        return self._batch_size

    def _resolve_precision(self, precision: str) -> torch.dtype | None:
        if precision == "auto":
            return torch.float16 if self.device.type == "cuda" else None
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
        return PRECISIONS[precision]

    def _autocast(self):
        # fp16 on GPU halves memory traffic and uses tensor cores; CPU stays fp32 unless asked
        # (bf16 helps on CPUs with AVX512-BF16/AMX, at some precision cost).
        if self.precision is None or self._weights_are_half:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    @contextlib.contextmanager
    def _out_of_memory_is_unavailable(self) -> Iterator[None]:
        """A device out of memory is an overload that passes (other requests, other workers hold
        the memory), not a bug: raise `Unavailable` (HTTP 503, retry) instead of a crash."""
        try:
            yield
        except torch.OutOfMemoryError as exc:
            raise Unavailable(
                f"the model ran out of memory on {self.device}; retry shortly, or send fewer inputs at once"
            ) from exc

    # -- images --------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model input for ``images`` from the device path, on the CPU: (n, 3, H, W) float32."""
        return torch.cat([self.transform.image_input(self.upload(_rgb_array(im))).cpu() for im in images])

    def upload(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 pixels onto the model's device. On CUDA through pinned memory on a copy stream,
        so the copy overlaps the kernels already queued; the compute stream waits for it
        without blocking the host."""
        if not (pixels.flags.writeable and pixels.flags.c_contiguous):
            pixels = np.array(pixels)  # torch wants writable memory (Pillow's arrays are read-only)
        host = torch.from_numpy(pixels)
        if self.device.type != "cuda":
            return host
        stream = self._copy_stream
        with torch.cuda.stream(stream):
            on_device = host.pin_memory().to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        on_device.record_stream(torch.cuda.current_stream(self.device))
        return on_device

    @torch.inference_mode()
    def _encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit vectors of a model-input batch, left on the device (asynchronous on CUDA)."""
        with self._out_of_memory_is_unavailable(), self.clock.stage("encode"):
            n = len(inputs)
            if self.compiled and n < self.batch_size:
                # A compiled graph is specialised to one batch size: pad the tail batch.
                inputs = torch.cat([inputs, inputs.new_zeros((self.batch_size - n, *inputs.shape[1:]))])
            with self._autocast():
                feats = self.model.get_image_features(pixel_values=inputs.to(self.input_dtype))
            return _unit(feats)[:n]

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, dim) float32 unit vectors of model-sized (n, H, W, 3) uint8 pixels, in one batch."""
        with torch.inference_mode():
            inputs = self.transform.normalise(self.upload(pixels))
        return _to_numpy(self._encode(inputs))

    def embed_inputs(
        self, groups: Iterable[tuple[K, torch.Tensor]], batch_size: int | None = None
    ) -> Iterator[tuple[K, np.ndarray]]:
        """Embed groups of model inputs ((n, 3, H, W) on the device, e.g. the windows of one
        tile) in batches that span group boundaries; yield ``(key, (n, dim) vectors)`` per
        group, in order, as soon as its last input is embedded."""
        for key, vectors, _ in self._embed_groups(groups, batch_size, fingerprint=False):
            yield key, vectors

    def _embed_groups(
        self, groups: Iterable[tuple[K, torch.Tensor]], batch_size: int | None, fingerprint: bool
    ) -> Iterator[tuple[K, np.ndarray, np.ndarray | None]]:
        """`embed_inputs`, optionally with each input's `input_fingerprint` (int64) too.

        The next batch is launched before the previous one's vectors are fetched, so a GPU's
        queue never drains while the host waits."""
        size = batch_size or self.batch_size
        regroup = _Regrouper(self.dim, fingerprint)
        in_flight: tuple[torch.Tensor, torch.Tensor | None] | None = None

        def launch(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return self._encode(inputs), input_fingerprint(inputs) if fingerprint else None

        for key, inputs in groups:
            regroup.add(key, inputs)
            while regroup.staged_n >= size:
                launched = launch(regroup.take(size))
                # Fetch the previous batch only now: the GPU already has the next one queued.
                yield from regroup.finished(in_flight)
                in_flight = launched
            if not regroup.staged_n and in_flight is None:
                yield from regroup.finished(None)  # empty groups at the head
        if regroup.staged_n:
            launched = launch(regroup.take(regroup.staged_n))
            yield from regroup.finished(in_flight)
            in_flight = launched
        yield from regroup.finished(in_flight)

    def embed_tiles(
        self, tiles: Iterable[tuple[K, np.ndarray, np.ndarray]], batch_size: int | None = None
    ) -> Iterator[tuple[K, np.ndarray, np.ndarray]]:
        """Vectors of the windows of decoded tiles: ``(key, (H, W, 3) uint8 pixels, (n, 4)
        window boxes)`` in, ``(key, (n, dim) vectors, (n,) int64 input fingerprints)`` out, in
        order. Each tile crosses to the device once; its windows are resized, cut and
        normalised there (`windows_input`). Windows with equal fingerprints had identical
        model inputs, so their vectors are identical too."""

        def inputs() -> Iterator[tuple[K, torch.Tensor]]:
            for key, pixels, boxes in tiles:
                with torch.inference_mode(), self._out_of_memory_is_unavailable(), self.clock.stage("resize"):
                    cut = self.transform.windows_input(self.upload(pixels), boxes)
                yield key, cut

        for key, vectors, fingerprints in self._embed_groups(inputs(), batch_size, fingerprint=True):
            assert fingerprints is not None
            yield key, vectors, fingerprints

    def embed_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``images`` (e.g. uploaded queries), through the same
        device preprocessing as the windows of tiles."""
        if not len(images):
            return _empty(self.dim)

        def inputs() -> Iterator[tuple[int, torch.Tensor]]:
            for i, image in enumerate(images):
                with torch.inference_mode(), self._out_of_memory_is_unavailable():
                    yield i, self.transform.image_input(self.upload(_rgb_array(image)))

        return np.concatenate([v for _, v in self.embed_inputs(inputs(), batch_size)])

    def suggest_batch_size(self, limit: int = 1024, memory_share: float = 0.5) -> int:
        """Images per forward pass: on CUDA as many as ``memory_share`` of the free GPU memory
        holds (measured with a probe batch), at most ``limit``; on CPU a fixed 64."""
        if self.device.type != "cuda":
            return CPU_BATCH_SIZE
        probe = 32
        free, _total = torch.cuda.mem_get_info(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        h, w = self.transform.output_size
        self.embed_pixels(np.zeros((probe, h, w, 3), dtype=np.uint8))
        # Peak growth of the probe includes fixed workspace, so this errs on the safe side.
        per_image = max(1, (torch.cuda.max_memory_allocated(self.device) - before) / probe)
        fits = int(free * memory_share / per_image)
        return max(probe, min(limit, fits // 32 * 32))

    # -- texts ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``texts`` (truncated to the model's context)."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        with self._out_of_memory_is_unavailable():
            tokens = tokens.to(self.device)
            with self._autocast():
                feats = self.model.get_text_features(**tokens)
            return _to_numpy(_unit(feats))

    def count_tokens(self, text: str) -> int:
        """Tokens the text needs, start and end markers included."""
        return len(self.tokenizer(text)["input_ids"])


def _rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels as the processor sees them (transparency composited onto white)."""
    return np.asarray(ImageTransform.to_rgb(image), dtype=np.uint8)


def _unit(feats: Any) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
        feats = feats.pooler_output
    feats = feats.float()
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _Regrouper:
    """Cuts groups of inputs into fixed-size batches, and hands the batches' vectors back per
    group, in order, as soon as a group's last input is embedded."""

    def __init__(self, dim: int, fingerprint: bool):
        self.dim, self.fingerprint = dim, fingerprint
        self.waiting: deque[tuple[Any, int]] = deque()  # groups not yet handed out, with their sizes
        self.staged: list[torch.Tensor] = []  # inputs not yet in a batch
        self.staged_n = 0
        self.done: list[tuple[np.ndarray, np.ndarray]] = []  # vectors and fingerprints not yet handed out
        self.no_fingerprints = np.zeros(0, dtype=np.int64)

    def add(self, key: Any, inputs: torch.Tensor) -> None:
        self.waiting.append((key, len(inputs)))
        if len(inputs):
            self.staged.append(inputs)
            self.staged_n += len(inputs)

    def take(self, n: int) -> torch.Tensor:
        """The next ``n`` staged inputs as one batch (spanning group boundaries)."""
        parts, need = [], n
        while need:
            head = self.staged[0]
            parts.append(head[:need])
            if len(head) <= need:
                self.staged.pop(0)
            else:
                self.staged[0] = head[need:]
            need -= len(parts[-1])
        self.staged_n -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def finished(
        self, batch: tuple[torch.Tensor, torch.Tensor | None] | None
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray | None]]:
        """Fetch ``batch`` (vectors, fingerprints) from the device, then yield every group it completes."""
        if batch is not None:
            vectors, fingerprints = batch
            fps = fingerprints.cpu().numpy() if fingerprints is not None else self.no_fingerprints
            self.done.append((_to_numpy(vectors), fps))
        have = sum(len(v) for v, _ in self.done)
        while self.waiting and self.waiting[0][1] <= have:
            key, n = self.waiting.popleft()
            if len(self.done) == 1:
                flat, fps = self.done[0]
            elif self.done:
                flat = np.concatenate([v for v, _ in self.done])
                fps = np.concatenate([f for _, f in self.done])
            else:
                flat, fps = _empty(self.dim), self.no_fingerprints
            yield key, flat[:n], fps[:n] if self.fingerprint else None
            self.done[:] = [(flat[n:], fps[n:] if self.fingerprint else self.no_fingerprints)]
            have -= n


def _to_numpy(vectors: torch.Tensor) -> np.ndarray:
    return vectors.cpu().numpy().astype(np.float32, copy=False)


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)
