"""`ClipEncoder`: images and texts in, L2-normalised float32 vectors out.

One code path for the batch embedder and the online endpoints, so a window embedded during
ingestion and the same pixels sent as a query give the same vector:

    images --(thread pool: RGB, resize, crop; uint8)--> groups of (n, H, W, 3) arrays
           --(batches across groups; pinned memory, non-blocking copy on CUDA)--> device
           --(one normalise per batch, fp16 autocast on CUDA, inference mode)--> unit vectors

While a batch runs on a GPU the next one is assembled and launched before the first one's
vectors are fetched, so the device queue does not drain between batches.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from cliprs.errors import Unavailable
from cliprs_model.preprocess import ImageTransform, prefetch_map

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
        preprocess_workers: int = 0,
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # the reference that `transform` reproduces
        self.transform = ImageTransform.from_processor(image_processor)
        self.device = device
        self.info = info
        self.max_text_tokens = int(getattr(model.config.text_config, "max_position_embeddings", 77))
        self.executor: ThreadPoolExecutor | None = None
        self.configure(batch_size=batch_size, precision=precision, preprocess_workers=preprocess_workers)

    def configure(self, *, batch_size: int = 0, precision: str = "auto", preprocess_workers: int = 0) -> None:
        """Runtime tuning; 0 / "auto" pick for the device (see `ModelSettings`)."""
        self.precision = self._resolve_precision(precision)
        self._batch_size = batch_size
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        self.preprocess_workers = preprocess_workers or available_cpus()
        self.executor = ThreadPoolExecutor(self.preprocess_workers, thread_name_prefix="clip-prep")

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
        if self.precision is None:
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

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resized, cropped RGB pixels of ``images``: (n, H, W, 3) uint8 (threads in parallel)."""
        return self.transform.prepare(images, self.executor)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model input for ``images`` as the model's image processor makes it: (n, 3, H, W)
        float32 on the CPU (equal to the processor's output to float32 rounding)."""
        return self.transform.normalise(torch.from_numpy(self.prepare(images)))

    def _stage(self, parts: list[np.ndarray], n: int) -> torch.Tensor:
        """Copy prepared arrays into one host batch, pinned when it is going to a GPU (pinned
        pages let the copy run asynchronously; the caching host allocator reuses them)."""
        h, w = self.transform.output_size
        batch = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        out, i = batch.numpy(), 0
        for p in parts:
            out[i : i + len(p)] = p
            i += len(p)
        return batch

    @torch.inference_mode()
    def _launch(self, batch: torch.Tensor) -> torch.Tensor:
        """Unit vectors of a staged uint8 batch, left on the device (asynchronous on CUDA)."""
        with self._out_of_memory_is_unavailable():
            pixels = self.transform.normalise(batch.to(self.device, non_blocking=True))
            with self._autocast():
                feats = self.model.get_image_features(pixel_values=pixels)
            return _unit(feats)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, dim) float32 unit vectors of prepared (n, H, W, 3) uint8 pixels, in one batch."""
        return _to_numpy(self._launch(self._stage([pixels], len(pixels))))

    def embed_groups(
        self, groups: Iterable[tuple[K, np.ndarray]], batch_size: int | None = None
    ) -> Iterator[tuple[K, np.ndarray]]:
        """Embed groups of prepared pixels (e.g. the windows of one tile) in batches that span
        group boundaries; yield ``(key, (n, dim) vectors)`` per group, in order, as soon as its
        last image is embedded."""
        size = batch_size or self.batch_size
        waiting: deque[tuple[K, int]] = deque()  # groups not yet yielded, with their sizes
        staged: list[np.ndarray] = []  # prepared pixels not yet in a batch
        staged_n = 0
        done: list[np.ndarray] = []  # vectors not yet handed out
        in_flight: torch.Tensor | None = None

        def finished(vectors: torch.Tensor | None) -> Iterator[tuple[K, np.ndarray]]:
            if vectors is not None:
                done.append(_to_numpy(vectors))
            have = sum(len(d) for d in done)
            while waiting and waiting[0][1] <= have:
                key, n = waiting.popleft()
                flat = np.concatenate(done) if len(done) > 1 else done[0] if done else _empty(self.dim)
                yield key, flat[:n]
                done[:] = [flat[n:]]
                have -= n

        def take(n: int) -> list[np.ndarray]:
            nonlocal staged_n
            parts, need = [], n
            while need:
                head = staged[0]
                parts.append(head[:need])
                if len(head) <= need:
                    staged.pop(0)
                else:
                    staged[0] = head[need:]
                need -= len(parts[-1])
            staged_n -= n
            return parts

        for key, pixels in groups:
            waiting.append((key, len(pixels)))
            if len(pixels):
                staged.append(pixels)
                staged_n += len(pixels)
            while staged_n >= size:
                launched = self._launch(self._stage(take(size), size))
                # Fetch the previous batch only now: the GPU already has the next one queued.
                yield from finished(in_flight)
                in_flight = launched
            if not staged_n and in_flight is None:
                yield from finished(None)  # empty groups at the head
        if staged_n:
            n = staged_n
            launched = self._launch(self._stage(take(n), n))
            yield from finished(in_flight)
            in_flight = launched
        yield from finished(in_flight)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``images``."""
        if not len(images):
            return _empty(self.dim)
        size = batch_size or self.batch_size
        prepared = prefetch_map(self.executor, self.transform.resize_crop, images, ahead=2 * size)
        groups = ((i, arr[None]) for i, arr in enumerate(prepared))
        return np.concatenate([v for _, v in self.embed_groups(groups, size)])

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

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _unit(feats: Any) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
        feats = feats.pooler_output
    feats = feats.float()
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _to_numpy(vectors: torch.Tensor) -> np.ndarray:
    return vectors.cpu().numpy().astype(np.float32, copy=False)


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)
