"""Post-training compression of a classifier, and what it saves and costs.

``prune_amount`` and ``quantize`` are applied to a deep copy of the trained model at every
epoch's evaluation (:meth:`Trainer.run_epoch`), never to the model that trains: the dense
weights go on learning, and every epoch reports the accuracy, size and speed the model
would have if it were compressed and shipped then. Every epoch rather than only at the
end because the searchers and schedulers rank trials by the epoch's metric (ASHA stops a
trial at a rung, ``best`` takes a trial's best epoch): an objective that changed its
meaning at the last epoch would rank dense epochs against compressed ones.

- Pruning: global magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with
  L1) over the weights of every conv and linear layer together, made permanent
  (``prune.remove``) before anything is measured.
- Quantization: post-training dynamic int8 quantization of the linear layers
  (``torch.ao.quantization.quantize_dynamic``); such a model runs on CPU only.
- Size: the bytes of the compressed model's serialized state dict, with each pruned
  weight stored as it would be shipped: a sparse CSR tensor (int32 indices) where that is
  smaller than the dense one. A pruned tensor saved dense is as large as before pruning.
- Latency: median of :data:`LATENCY_REPEATS` timed CPU forward passes of one batch of
  :data:`LATENCY_BATCH`, after :data:`LATENCY_WARMUP` untimed ones, on the trial's CPU
  threads. Concurrent trials on the same machine make it noisier, not biased per trial.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

LATENCY_BATCH = 64
LATENCY_WARMUP = 3
LATENCY_REPEATS = 15
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_INDEX_BYTES = 4  # int32 CSR indices


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, "weight") pairs global pruning ranks together: every conv and linear
    layer's weight (biases are few and left dense)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_global(model: nn.Module, amount: float) -> None:
    """Zero the ``amount`` share of the smallest-magnitude conv/linear weights, ranked
    over all layers together, in place and permanently (no masks or ``weight_orig`` left)."""
    targets = prunable_weights(model)
    if amount <= 0 or not targets:
        return
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the linear layers (weights int8, activations quantized
    per batch at run time), on a CPU copy; other layers stay float32."""
    from torch.ao.quantization import quantize_dynamic

    model = model.to("cpu", dtype=torch.float32).eval()
    with warnings.catch_warnings():
        # torch 2.10+ marks eager-mode quantization deprecated in favour of torchao, which
        # this project does not install; the API still works and is what the issue names.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def compressed_copy(model: nn.Module, prune_amount: float = 0.0,
                    quantize: str = "none") -> nn.Module:
    """A pruned and/or quantized deep copy of ``model`` in eval mode.

    Args:
        model: the trained model (left untouched).
        prune_amount: share of conv/linear weights to zero, 0 to 0.95.
        quantize: ``none`` (the copy stays on the model's device) or ``int8`` (on CPU).
    """
    # Contiguous: a GPU model is channels_last, whose conv weights global pruning cannot
    # flatten with view(-1).
    small = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    for p in small.parameters():
        p.grad = None
        p.requires_grad_(False)
    prune_global(small, prune_amount)
    if quantize == "int8":
        small = quantize_int8(small)
    return small


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Every learned tensor of ``model`` as a plain float tensor, quantized ones included
    (a dynamically quantized linear layer keeps its weight in packed params)."""
    out = []
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            out += [t for t in packed._weight_bias() if t is not None]
        out += list(module.parameters(recurse=False))
    return [t.dequantize() if t.is_quantized else t.detach() for t in out]


def nonzero_params(model: nn.Module) -> int:
    """Learned values that are not zero (weights and biases; int8 ones count alike)."""
    return int(sum(int(t.count_nonzero()) for t in _weights(model)))


def _as_shipped(tensor: torch.Tensor) -> torch.Tensor:
    """A float weight of 2+ dimensions as sparse CSR (int32 indices) when that takes
    fewer bytes than dense, else unchanged."""
    if tensor.is_quantized or not tensor.is_floating_point() or tensor.dim() < 2:
        return tensor
    rows = tensor.reshape(tensor.shape[0], -1).detach().cpu()
    nnz = int(rows.count_nonzero())
    dense = rows.numel() * rows.element_size()
    sparse = nnz * (rows.element_size() + _INDEX_BYTES) + (rows.shape[0] + 1) * _INDEX_BYTES
    if sparse >= dense:
        return tensor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta state"
        csr = rows.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(),
                                       csr.values(), rows.shape)


def model_size_kb(model: nn.Module) -> float:
    """KiB of ``torch.save(state_dict)``, pruned weights stored sparse where smaller."""
    state = {k: _as_shipped(v) if isinstance(v, torch.Tensor) else v
             for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return len(buffer.getvalue()) / 1024


def latency_batch(x: torch.Tensor, size: int = LATENCY_BATCH) -> torch.Tensor:
    """``size`` samples of ``x`` on CPU (repeated when ``x`` has fewer)."""
    index = torch.arange(size, device=x.device) % max(len(x), 1)
    return x[index].cpu().contiguous()


@torch.inference_mode()
def latency_ms(model: nn.Module, batch: torch.Tensor, warmup: int = LATENCY_WARMUP,
               repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds of one forward pass of ``batch`` through ``model`` on CPU.

    Args:
        model: a CPU model in eval mode.
        batch: CPU inputs (see :func:`latency_batch`).
        warmup: untimed passes first (allocations, kernel selection).
        repeats: timed passes; the median ignores a pass another process interrupted.
    """
    for _ in range(warmup):
        model(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
