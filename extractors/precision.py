"""Weight and arithmetic precision of a loaded encoder: bf16 weights on every device.

Why: the published behaviour encoder (Qwen3-VL-4B, 4.44e9 parameters) holds 8.3 GiB in bf16 and
16.5 GiB in fp32; a CPU machine with 16 GB cannot hold the fp32 copy at all. So the weights stay
bf16 wherever they run, and on a CPU the arithmetic is picked separately:

- "bf16": bf16 arithmetic, as on a GPU. Fast only where the CPU has native bf16 dot products
  (x86 AVX512-BF16 or AMX); elsewhere PyTorch emulates them (measured on this project's AMD EPYC
  with oneDNN capped at AVX2: a bf16 GEMM 6x slower than fp32).
- "fp32": fp32 arithmetic layer by layer from the bf16 weights (`upcast_per_layer`): fp32 speed on
  any CPU, the memory of the bf16 model plus one layer's fp32 copy.
- "auto": "bf16" where the CPU has native bf16, "fp32" elsewhere.

All three are execution settings, like the device: they change the numbers at bf16 precision, not
what the numbers are, so extractor fingerprints leave them out (a store written on a GPU in bf16 is
reused on a CPU, and the other way round).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CPU_COMPUTE = ("auto", "bf16", "fp32")


def cpu_has_fast_bf16() -> bool:
    """Native bf16 dot products on this CPU (AVX512-BF16 or AMX tiles), from torch's own CPU probe."""
    import torch.cpu as tcpu

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(tcpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private probe: absent or failing means "not known fast"
            continue
    return False


def compute_dtype(device: torch.device, bf16_weights: bool, cpu_compute: str = "auto") -> torch.dtype:
    """Arithmetic dtype for a model whose weights are bf16 (`bf16_weights`) or fp32 on `device`."""
    if cpu_compute not in CPU_COMPUTE:
        raise ValueError(f"cpu_compute {cpu_compute!r}: use one of {list(CPU_COMPUTE)}")
    if not bf16_weights:
        return torch.float32
    if device.type != "cpu" or cpu_compute == "bf16":
        return torch.bfloat16
    if cpu_compute == "fp32":
        return torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _float_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def up(x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 else x

    return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}


def _swap_in_fp32(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    module._bf16_stored = dict(module._parameters)  # type: ignore[attr-defined]
    for name, p in module._bf16_stored.items():  # type: ignore[attr-defined]
        if p is not None and p.dtype == torch.bfloat16:
            module._parameters[name] = p.float()  # type: ignore[assignment] - a transient fp32 copy
    return _float_inputs(args, kwargs)


def _restore_bf16(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    stored = getattr(module, "_bf16_stored", None)
    if stored is not None:
        module._parameters.update(stored)
        del module._bf16_stored  # type: ignore[attr-defined]


def _rows_to_fp32(module: nn.Module, args: tuple, output: Any) -> Any:
    return output.float() if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16 else output


def upcast_per_layer(model: nn.Module) -> nn.Module:
    """fp32 arithmetic over bf16-stored weights, without an fp32 copy of the model.

    Every module that owns bf16 parameters swaps in fp32 copies of them (and casts bf16 inputs to
    fp32) for its own forward call only, and puts the bf16 ones back afterwards, also when the call
    fails. Embedding tables are looked up in bf16 and only the rows are cast. The result equals fp32
    arithmetic over the bf16-rounded weights, except where the model itself casts activations to
    its parameters' dtype (Qwen3-VL does so for the pixel values, as it does on a GPU). Memory: the
    bf16 model plus the largest layer in fp32 (a tied output head: vocabulary x hidden x 4 bytes).
    Not for concurrent calls of one model from several threads (the swap is per module).
    """
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.dtype == torch.bfloat16]
        if not own:
            continue
        if isinstance(module, nn.Embedding):
            module.register_forward_hook(_rows_to_fp32)
            continue
        module.register_forward_pre_hook(_swap_in_fp32, with_kwargs=True)
        module.register_forward_hook(_restore_bf16, with_kwargs=True, always_call=True)
    return model
