"""Read tensors one at a time from a `torch.save`d state dict (zip format), memory-mapped:
the official HunyuanVideo release (`mp_rank_00_model_states.pt`) is one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from svg2_jax.checkpoints.tensor_source import KeyedSource, Rows

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("model", "module", "state_dict")  # diffusers' conversion script unwraps these


class TorchCheckpointSource(KeyedSource):
    """Key -> shape / tensor of a torch state dict file (a `TensorSource`).

    A dict holding the state dict under "model", "module" or "state_dict" is unwrapped, as
    diffusers' conversion script does (the official `mp_rank_00_model_states.pt` holds it
    under "module"); other top-level entries are listed in `ignored`. Tensors are copied
    out of the mapping one by one; every `reopen_bytes` read the mapping is dropped and
    re-made, so the pages already read do not accumulate in this process's resident set
    (the reason `SafetensorsSource` reopens its file for every read).
    """

    def __init__(self, path: str | os.PathLike, reopen_bytes: int = 1 << 30):
        self.path = Path(path)
        self.reopen_bytes = reopen_bytes
        self.ignored: list[str] = []
        state = self._load()
        self._shape = {k: tuple(v.shape) for k, v in state.items()}
        unsupported = sorted(f"{k} ({v.dtype})" for k, v in state.items()
                             if _numpy_dtype(v.dtype) is None)
        if unsupported:
            raise ValueError(f"{str(self.path)!r} holds tensors of unsupported dtypes (float32, "
                             f"float16 and bfloat16 are supported): {unsupported}")
        self._state, self._since_open = state, 0

    def _load(self) -> dict:
        try:
            import torch
        except ImportError:
            raise ValueError(f"{str(self.path)!r} is a torch state dict file: reading it needs "
                             "PyTorch (pip install 'svg2-jax[torch]'; the base install reads "
                             "safetensors and our orbax checkpoints)") from None
        try:
            obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises RuntimeError / UnpicklingError)
            raise ValueError(f"cannot read {str(self.path)!r} as a torch state dict (it must be "
                             f"a torch.save zip file of tensors): {type(e).__name__}: {e}"
                             ) from None
        where = ""
        for wrapper in _WRAPPER_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                self.ignored += [f"{where}{k}" for k in obj if k != wrapper]
                where += f"{wrapper}/"
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise ValueError(f"{str(self.path)!r} holds a {type(obj).__name__}, not a state dict")
        bad = sorted(f"{where}{k}" for k, v in obj.items()
                     if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        if bad:
            raise ValueError(f"{str(self.path)!r} is not a flat state dict of tensors: non-tensor "
                             f"entries {bad}")
        return obj

    def read(self, key: str, rows: Rows | None = None) -> np.ndarray:
        """The tensor (or the concatenation of its dim-0 `rows`) as a numpy copy in its
        stored dtype (bf16 as ml_dtypes.bfloat16); only those rows are touched."""
        import torch

        if self._state is None:
            self._state = self._load()
        tensor = self._state[key]
        if rows is not None:
            parts = [tensor[a:b] for a, b in rows]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        out = _to_numpy(tensor)
        del tensor
        self._since_open += out.nbytes
        if self._since_open >= self.reopen_bytes:
            self._state, self._since_open = None, 0
        return out

    def close(self):
        super().close()
        self._state = None


def _numpy_dtype(torch_dtype):
    import ml_dtypes
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16,
            torch.bfloat16: ml_dtypes.bfloat16}.get(torch_dtype)


def _to_numpy(tensor) -> np.ndarray:
    """A C-contiguous numpy copy (never a view of the memory-mapped file)."""
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return tensor.view(torch.int16).numpy().view(_numpy_dtype(tensor.dtype)).copy(order="C")
    return tensor.numpy().copy(order="C")
