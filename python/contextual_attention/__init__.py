"""The contextual attention layer of image inpainting (Yu et al., "Generative Image Inpainting
with Contextual Attention", CVPR 2018) with the original TensorFlow layer's numbers, on any GPU
that wgpu reaches (Vulkan, Metal, DX12) or on the CPU, at sizes where the original runs out of
memory.

Tensors are numpy arrays in NHWC layout: ``f`` ``[B, Hf, Wf, C]`` (the queries, foreground),
``b`` ``[B, Hb, Wb, C]`` (the patches, background) and an optional ``mask`` ``[1 or B, Hb, Wb, 1]``
that marks with 1 the pixels of ``b`` that may not be copied from. float32 and float64 (and
float16) inputs are accepted; the layer computes in float32 and returns float32.

>>> import numpy as np, contextual_attention as ca
>>> x = np.random.default_rng(0).standard_normal((1, 32, 32, 8), dtype=np.float32)
>>> out = ca.forward(x, x, rate=2, backend="cpu")
>>> out.y.shape, out.offsets.shape
((1, 32, 32, 8), (1, 16, 16, 2))

From PyTorch (NCHW on the GPU): ``ca.forward(t.permute(0, 2, 3, 1).cpu().numpy(), ...)`` and
``torch.from_numpy(out.y).permute(0, 3, 1, 2)``.
"""

from __future__ import annotations

import numpy as np

from . import _native

__all__ = ["Layer", "Output", "forward", "adapters"]


def adapters() -> list[str]:
    """Every GPU adapter wgpu sees (``WGPU_BACKEND`` honoured), one line each: name, backend,
    device type, driver. Empty when there is none (then use ``backend="cpu"``)."""
    return _native.adapters()


class Output:
    """What a call returns. Attributes, also readable as ``out["y"]``:

    * ``y``: float32 ``[B, Hf, Wf, C]``, the reconstruction;
    * ``offsets``: int32 ``[B, hf, wf, 2]``, (row, col) of each query's chosen patch in ``b``'s
      patch grid (the downscaled grid when rate > 1);
    * ``argmax``: uint32 ``[B, hf, wf]``, the same patch as a flat index ``row * pw + col``;
    * ``mass``: float32 ``[B, hf, wf]``, the attention on usable patches (below 1 where the
      original's 0-logit masking gave masked patches some weight).
    """

    __slots__ = ("y", "offsets", "argmax", "mass")

    def __init__(self, arrays: dict):
        for name in self.__slots__:
            setattr(self, name, arrays[name])

    def __getitem__(self, name: str):
        if name not in self.__slots__:
            raise KeyError(name)
        return getattr(self, name)

    def keys(self):
        return list(self.__slots__)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={getattr(self, n).shape}" for n in self.__slots__)
        return f"Output({shapes})"


def _as_input(name: str, a, optional: bool = False):
    if a is None and optional:
        return None
    a = np.asarray(a)
    if a.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{name} must be a float array (float32 or float64), got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (NHWC: batch, height, width, channels), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


class Layer:
    """The layer with fixed parameters, keeping its pipelines and buffers between calls.

    Parameters are the original function's (``ksize=3, stride=1, rate=1, fuse_k=3,
    softmax_scale=10.0, fuse=True``; the models call it with ``rate=2``), the extended options
    (``paste_kernel`` default ``2 * rate``, ``overlap`` ``"quarter"`` | ``"exact"``, ``masking``
    ``"zero_logit"`` | ``"exclude"``, ``fuse_mode`` ``"wrap"`` | ``"spatial"``; the defaults are the
    original's), ``memory_budget`` in bytes for one tile's working set (default: planned by the
    library), and ``backend``: ``"gpu"`` (wgpu; ``WGPU_BACKEND`` and ``WGPU_ADAPTER_NAME`` choose the
    adapter), ``"cpu"`` (the fast CPU path, all cores) or ``"reference"`` (the f64 twin, slow).
    All GPU layers of a process share one device.

    >>> import numpy as np, contextual_attention as ca
    >>> layer = ca.Layer(rate=2, backend="cpu")
    >>> x = np.ones((1, 8, 8, 2), np.float32)
    >>> layer(x, x).y.shape
    (1, 8, 8, 2)
    """

    def __init__(
        self,
        *,
        ksize: int = 3,
        stride: int = 1,
        rate: int = 1,
        fuse_k: int = 3,
        softmax_scale: float = 10.0,
        fuse: bool = True,
        backend: str = "gpu",
        paste_kernel: int | None = None,
        overlap: str = "quarter",
        masking: str = "zero_logit",
        fuse_mode: str = "wrap",
        memory_budget: int | None = None,
    ):
        for name, value in (("ksize", ksize), ("stride", stride), ("rate", rate), ("fuse_k", fuse_k)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self._layer = _native.Layer(
            backend,
            ksize,
            stride,
            rate,
            fuse_k,
            float(softmax_scale),
            bool(fuse),
            paste_kernel,
            overlap,
            masking,
            fuse_mode,
            memory_budget,
        )

    @property
    def backend(self) -> str:
        """One line naming where the layer runs: the adapter, or the CPU path and its threads."""
        return self._layer.describe_backend()

    def forward(self, f, b, mask=None) -> Output:
        """Runs the layer on ``f``, ``b`` and the optional ``mask`` (see the module's docs).
        Raises ``ValueError`` for bad shapes or parameters (e.g. a size not divisible by the
        rate) and ``RuntimeError`` when the device fails. Releases the GIL while it runs."""
        arrays = self._layer.forward(_as_input("f", f), _as_input("b", b), _as_input("mask", mask, optional=True))
        return Output(arrays)

    __call__ = forward

    def __repr__(self) -> str:
        return f"Layer(backend={self.backend!r})"


def forward(
    f,
    b,
    mask=None,
    *,
    ksize: int = 3,
    stride: int = 1,
    rate: int = 1,
    fuse_k: int = 3,
    softmax_scale: float = 10.0,
    fuse: bool = True,
    backend: str = "gpu",
    **extended,
) -> Output:
    """The layer once: ``Layer(**parameters).forward(f, b, mask)``. ``extended`` takes
    ``paste_kernel``, ``overlap``, ``masking``, ``fuse_mode`` and ``memory_budget`` (see
    :class:`Layer`). For repeated calls keep a :class:`Layer`."""
    layer = Layer(
        ksize=ksize,
        stride=stride,
        rate=rate,
        fuse_k=fuse_k,
        softmax_scale=softmax_scale,
        fuse=fuse,
        backend=backend,
        **extended,
    )
    return layer.forward(f, b, mask)
