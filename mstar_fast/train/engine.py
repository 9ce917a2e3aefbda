"""``SFTEngine``: the supervised step engine of self-evolving training.

One engine lives for the whole run and holds the model, the optimizer (AdamW by default), the learning-rate
schedule (constant with warm-up by default, or cosine) and the global step. Each iteration hands it the
selected responses with :meth:`SFTEngine.train_on`; the training *mode* decides what survives between
calls (paper Table 1):

=================  ==========================  ===============================
mode               weights at the call's start  optimizer + LR schedule
=================  ==========================  ===============================
``continuous``     the current ones             kept: one of each for the run
``iterative_rft``  the current ones             re-created at every call
``rest_em``        the initial ones (reloaded)  re-created at every call
=================  ==========================  ===============================

The loss is the token-level mean NLL over response tokens only (labels are ``-100`` on prompt and image
tokens), normalised by the number of response tokens in the whole global batch (over micro-batches and
ranks), so gradient accumulation and the number of ranks do not change it. It is computed by
:func:`mstar_fast.ops.fused_linear_cross_entropy` from the model's final hidden states and its LM-head
weight, on response positions only: the ``[tokens, vocab]`` logits are never built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mstar_fast.config import SFTConfig
from mstar_fast.constants import TRAIN_MODES as MODES  # noqa: F401  (re-exported by mstar_fast.train)
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.families import cast_floating_inputs, family_capabilities
from mstar_fast.ops.fused_linear_cross_entropy import fused_linear_cross_entropy
from mstar_fast.train import distributed as D
from mstar_fast.train.data import (
    IGNORE_INDEX,
    EncodedExample,
    SFTCollator,
    collate,
    example_from_dict,
    plan_steps,
    rank_micro_batches,
    split_batch,
)
from mstar_fast.train.optim import WarmupSchedule, build_optimizer, build_scheduler, param_groups

logger = logging.getLogger("mstar_fast")

_VISION_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder", "vpm", "image_encoder")


@dataclass
class StepInfo:
    """What ``on_step`` sees after each optimizer step."""

    global_step: int
    call: int
    call_step: int
    call_steps: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    examples: int


@dataclass
class TrainReport:
    """The result of one :meth:`SFTEngine.train_on` call (``losses[i]`` is the loss of step i)."""

    call: int
    steps: int
    global_step: int
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float | None] = field(default_factory=list)
    tokens: int = 0
    examples: int = 0
    dropped: int = 0
    stopped: bool = False
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


class CausalLMLoss(nn.Module):
    """Wraps a ``transformers`` causal LM / VLM; ``forward(batch)`` returns the *summed* response NLL.

    It runs the base model (``model.base_model``: decoder, plus vision tower for VLMs) for the final
    hidden states, keeps the positions whose next-token label is not ``-100`` and feeds them with the
    LM head weight to the fused cross-entropy. Running through this module's own ``forward`` lets
    DDP / FSDP2 hooks see every parameter, the LM head included.

    Families whose forward transforms the logits after the head (:func:`mstar_fast.models.families.
    family_capabilities`) get the same loss as their own: a scale (Granite, Cohere) multiplies the hidden
    rows and the bias before the fused op; a soft-cap (Gemma 2) takes an exact unfused, chunked path.

    Raises:
        UnsupportedFamilyError: (a ValueError) a family the loss cannot reproduce.
        ValueError: the model has no LM head.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # Raises UnsupportedFamilyError (a ValueError) for a family whose logits cannot be reproduced.
        self.capabilities = family_capabilities(model, engine="sft")
        if model.get_output_embeddings() is None:
            raise ValueError(f"CausalLMLoss: {type(model).__name__} has no output embeddings (LM head)")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        # Processors may return pixels in another float dtype than the weights (bf16 for an fp32 model).
        dtype = next(self.model.parameters()).dtype
        inputs = cast_floating_inputs({k: v for k, v in batch.items() if k != "labels"}, dtype)
        out = self.model.base_model(**inputs, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        shift = labels[:, 1:]
        keep = shift != IGNORE_INDEX
        rows = hidden[:, :-1][keep]  # [n_response_tokens, H]: only these rows ever meet the LM head
        head = self.model.get_output_embeddings()
        if rows.shape[0] == 0:
            # No loss here (e.g. a dummy micro-batch): a zero that still touches the head, so that every
            # parameter that gets a gradient on other ranks gets one (of zeros) here too.
            return (hidden.sum() + head.weight.sum()) * 0.0
        bias = getattr(head, "bias", None)
        caps = self.capabilities
        if caps.logit_scale != 1.0:
            # logits = scale * (h @ W.T + b) = (scale * h) @ W.T + scale * b: the op's signature is unchanged.
            rows = rows * caps.logit_scale
            bias = bias * caps.logit_scale if bias is not None else None
        if caps.logit_softcap is not None:
            return _softcapped_cross_entropy(rows, head.weight, bias, shift[keep], caps.logit_softcap,
                                             self.chunk_size)
        return fused_linear_cross_entropy(rows, head.weight, shift[keep], bias=bias,
                                          reduction="sum", chunk_size=self.chunk_size)


def _softcapped_cross_entropy(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              labels: torch.Tensor, cap: float, chunk_size: int | None) -> torch.Tensor:
    """Summed cross-entropy of ``cap * tanh((rows @ weight.T + bias) / cap)`` (Gemma 2-style soft-capped
    logits), which the fused op does not compute: an exact unfused path, in chunks of rows so that at most
    ``[chunk, V]`` fp32 logits live at once (each chunk is recomputed in backward by checkpointing).

    Args: ``rows [N, H]``, ``weight [V, H]``, ``bias [V]`` or None, ``labels [N]`` int64 (no -100 left).
    """
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = (r @ weight.T).float()
        if bias is not None:
            logits = logits + bias.float()
        logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum")

    step = chunk_size or max(1, (1 << 24) // max(1, weight.shape[0]))  # ~64 MiB of fp32 logits per chunk
    total = rows.new_zeros((), dtype=torch.float32)
    for a in range(0, rows.shape[0], step):
        r, y = rows[a : a + step], labels[a : a + step]
        total = total + (checkpoint(chunk_loss, r, y, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_loss(r, y))
    return total


def find_vision_encoder(model: nn.Module) -> nn.Module | None:
    """The vision encoder of a VLM (``visual``, ``vision_tower``, ``vision_model``, ...), or None."""
    best: tuple[int, nn.Module] | None = None
    for name, mod in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in _VISION_NAMES:
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, mod)
    return None if best is None else best[1]


def _autocast_ok(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def _fingerprint(lengths: Sequence[int]) -> str:
    h = hashlib.sha1(str(len(lengths)).encode())
    h.update(torch.tensor(list(lengths), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


class SFTEngine:
    """Holds the model, optimizer, LR schedule and global step of a whole run.

    Args:
        model: a ``transformers`` causal LM or image-text-to-text model (fp32 weights recommended; use
            ``bf16`` autocast for speed). Under ``torchrun`` call
            :func:`mstar_fast.train.distributed.init_distributed` first; the model is wrapped here.
        config: :class:`SFTConfig` (or keyword overrides of it).
        collator: encodes ``(Prompt, Sample)`` pairs (:class:`SFTCollator`); needed only for such items.
        device: where to train; default: the model's device.
    """

    def __init__(self, model: nn.Module, config: SFTConfig | None = None, *, collator: SFTCollator | None = None,
                 device: torch.device | str | None = None, **overrides: Any):
        config = dataclasses.replace(config or SFTConfig(), **overrides)
        config.validate()
        self.config = config
        self.collator = collator
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        # Default: bf16 autocast on GPUs that support it; off on CPU, where fp32 keeps runs bit-reproducible.
        if config.bf16 is None:
            self.use_bf16 = self.device.type == "cuda" and _autocast_ok(self.device)
        else:
            self.use_bf16 = bool(config.bf16)
        if self.use_bf16 and not _autocast_ok(self.device):
            raise ValueError(f"SFTEngine: bf16 autocast is not supported on {self.device}")
        if config.freeze_vision:
            enc = find_vision_encoder(model)
            if enc is None:
                raise ValueError(f"SFTEngine: freeze_vision=True but {type(model).__name__} has no vision encoder "
                                 f"(looked for submodules named {_VISION_NAMES})")
            enc.requires_grad_(False)
        if config.gradient_checkpointing:
            # Non-reentrant checkpointing: works with frozen inputs, DDP and FSDP2.
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
                model.activation_checkpointing_enable({"use_reentrant": False})
            elif hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                raise ValueError("SFTEngine: gradient_checkpointing needs a transformers PreTrainedModel")

        self.model = model
        self.loss_module = CausalLMLoss(model, chunk_size=config.loss_chunk_size)
        if collator is not None and collator.capabilities is None:
            collator.capabilities = self.loss_module.capabilities  # token types / masks over the response
        self.parallel = D.resolve_parallel(config.parallel, self.device)
        self.wrapped = D.wrap_module(self.loss_module, self.parallel, self.device,
                                     find_unused_parameters=config.find_unused_parameters)
        self.rank, self.world_size = D.get_rank(), D.get_world_size()
        # rest_em restarts every call from these weights (a CPU copy, sharded under FSDP).
        self._initial_state = None
        if config.mode == "rest_em":
            self._initial_state = {
                k: (v.detach().clone() if hasattr(v, "full_tensor") else v.detach().to("cpu", copy=True))
                for k, v in self.loss_module.state_dict().items()
            }

        self.global_step = 0
        self.calls = 0  # train_on calls started
        self._open: dict[str, Any] | None = None  # the call in progress: {"fingerprint", "steps", "done"}
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR
        # Iterative modes re-create this at every call (with that call's horizon); until then any horizon.
        self._new_optimizer(config.total_steps if config.mode == "continuous" else (config.total_steps or 1))

    # ------------------------------------------------------------------ optimizer / schedule
    def _new_optimizer(self, horizon: int | None) -> None:
        c = self.config
        groups = param_groups(self.loss_module, c.weight_decay)
        self.optimizer = build_optimizer(groups, c.optimizer, c.lr, c.betas, c.eps, self.device)
        total = horizon if c.lr_schedule == "cosine" else None
        self.scheduler = build_scheduler(self.optimizer, WarmupSchedule(c.lr_schedule, c.warmup_steps, total,
                                                                        c.min_lr_ratio))

    def reset_weights(self) -> None:
        """Load the weights the engine started with (what ``rest_em`` does at each call)."""
        if self._initial_state is None:
            raise ValueError("SFTEngine.reset_weights: the initial weights are kept only in mode 'rest_em'")
        with torch.no_grad():
            for k, v in self.loss_module.state_dict().items():
                v.copy_(self._initial_state[k])

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ data
    def _examples(self, data: Iterable[Any]) -> list[Any]:
        items: list[Any] = []
        for it in data:
            if isinstance(it, dict):
                ids = it.get("input_ids")
                if isinstance(ids, torch.Tensor) and ids.dim() == 2:
                    items.extend(split_batch(it))
                else:
                    items.append(example_from_dict(it))
            elif isinstance(it, EncodedExample):
                items.append(it)
            elif isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], Prompt) and isinstance(it[1], Sample):
                if self.collator is None:
                    raise ValueError("SFTEngine: (Prompt, Sample) items need a collator: "
                                     "SFTEngine(model, config, collator=SFTCollator(processor))")
                items.append(it)
            else:
                raise ValueError(f"SFTEngine.train_on: cannot train on a {type(it).__name__}; pass (Prompt, Sample) "
                                 "pairs, encoded example dicts or pre-collated batch dicts")
        return items

    def _length(self, item: Any) -> int:
        if isinstance(item, EncodedExample):
            return len(item)
        assert self.collator is not None
        return self.collator.length(item)

    def _encode(self, item: Any) -> EncodedExample | None:
        if isinstance(item, EncodedExample):
            return item
        assert self.collator is not None
        return self.collator.to_example(item)

    def _collate(self, examples: list[EncodedExample]) -> dict[str, torch.Tensor]:
        if self.collator is not None:
            return self.collator.collate(examples)
        return collate(examples)

    # ------------------------------------------------------------------ training
    def train_on(self, data: Iterable[Any], steps: int | None = None, epochs: int = 1,
                 on_step: Callable[[SFTEngine, StepInfo], bool | None] | None = None) -> TrainReport:
        """Train on one iteration's data.

        Args:
            data: ``(Prompt, Sample)`` pairs, encoded example dicts or pre-collated batches (see
                :mod:`mstar_fast.train.data`). Under torchrun every rank passes the same data; the
                engine gives each rank its share of every global batch.
            steps: optimizer steps to take (cycling through the data as needed); default: ``epochs``
                passes of ``ceil(len(data) / global_batch_size)`` steps.
            epochs: passes over the data when ``steps`` is None.
            on_step: called after every step with ``(engine, StepInfo)`` (e.g. to checkpoint);
                returning True stops the call there. A stopped call stays open: the next ``train_on``
                with the same data (typically after :func:`mstar_fast.train.checkpoint.load_checkpoint`
                in a new process) continues it where it stopped, exactly as if never interrupted.

        Returns:
            A :class:`TrainReport` of the steps run in this call.
        """
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"train_on: steps must be an int >= 0 or None, got {steps!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"train_on: epochs must be an int >= 1, got {epochs!r}")
        c = self.config
        items = self._examples(data)
        lengths = [self._length(it) for it in items]
        fp = _fingerprint(lengths)
        if self._open is not None:
            if self._open["fingerprint"] != fp:
                raise ValueError("train_on: an interrupted call is open (resumed or stopped mid-way) and this data "
                                 "differs from its data; pass the same data to finish it, or call "
                                 "engine.close_call() to abandon it")
            call, start = self._open["call"], self._open["done"]
            plan = plan_steps(len(items), c.global_batch_size, self._open["steps_arg"], self._open["epochs"],
                              c.seed, call, c.shuffle)
        else:
            call, start = self.calls, 0
            self.calls += 1
            plan = plan_steps(len(items), c.global_batch_size, steps, epochs, c.seed, call, c.shuffle)
            if c.mode == "rest_em":
                self.reset_weights()
            if c.mode in ("iterative_rft", "rest_em"):
                self._new_optimizer(len(plan))
            self._open = {"call": call, "fingerprint": fp, "steps_arg": steps, "epochs": epochs, "done": 0,
                          "total": len(plan)}
        report = TrainReport(call=call, steps=0, global_step=self.global_step)
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.train()
        try:
            for k in range(start, len(plan)):
                loss, n_tok, n_ex, gnorm, lr, dropped = self._step(plan[k], items, lengths)
                self.global_step += 1
                self._open["done"] = k + 1
                report.steps += 1
                report.losses.append(loss)
                report.lrs.append(lr)
                report.grad_norms.append(gnorm)
                report.tokens += n_tok
                report.examples += n_ex
                report.dropped += dropped
                if k + 1 == len(plan):
                    self._open = None  # complete: a checkpoint taken from on_step now is at a call boundary
                if c.log_every and self.global_step % c.log_every == 0 and self.rank == 0:
                    logger.info("mstar_fast: step %d (call %d, %d/%d) loss %.4f lr %.3g tokens %d", self.global_step,
                                call, k + 1, len(plan), loss, lr, n_tok)
                info = StepInfo(self.global_step, call, k + 1, len(plan), loss, lr, gnorm, n_tok, n_ex)
                if on_step is not None and on_step(self, info) and k + 1 < len(plan):
                    report.stopped = True
                    break
        finally:
            self.model.train(was_training)
        report.global_step = self.global_step
        report.seconds = time.perf_counter() - t0
        return report

    def close_call(self) -> None:
        """Abandon an open (interrupted) call, so the next ``train_on`` starts a new one."""
        self._open = None

    def _sync_context(self, last: bool):
        """Gradient all-reduce / reduce-scatter only on the last micro-batch of a step."""
        if self.parallel == "ddp" and not last:
            return self.wrapped.no_sync()
        if self.parallel == "fsdp":
            self.wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _step(self, batch: list[int], items: list[Any], lengths: list[int]):
        c = self.config
        micro = rank_micro_batches(batch, lengths, self.world_size, self.rank, c.micro_batch_size, c.group_by_length)
        collated: list[tuple[dict[str, torch.Tensor], bool]] = []
        n_tok = n_ex = dropped = 0
        for idx in micro:
            exs = [self._encode(items[i]) for i in idx]
            dropped += sum(e is None for e in exs)
            exs = [e for e in exs if e is not None]
            if exs:
                n_tok += sum(e.n_response_tokens for e in exs)
                n_ex += len(exs)
                collated.append((self._collate(exs), False))
            else:  # nothing for this rank in this slot: a zero-weight pass keeps the collectives aligned
                collated.append((self._collate([self._dummy_example(batch, items)]), True))
        # Collectives run on the training device (nccl only moves CUDA tensors).
        counts = D.all_reduce_sum(torch.tensor([n_tok, n_ex, dropped], dtype=torch.float64, device=self.device))
        g_tok, g_ex, g_drop = (int(v) for v in counts.tolist())
        lr = self.lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        if g_tok > 0:
            # Each rank's gradient is averaged over ranks by DDP / FSDP; the world-size factor undoes that,
            # so the step's gradient is (sum of response-token NLL over the global batch) / g_tok.
            scale = self.world_size / g_tok
            for j, (mb, dummy) in enumerate(collated):
                mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
                with self._sync_context(j == len(collated) - 1):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                        part = self.wrapped(mb)
                    (part * (0.0 if dummy else scale)).backward()
                if not dummy:
                    loss_sum += part.detach().double()
            gnorm = self._clip()
            self.optimizer.step()
        else:
            logger.warning("mstar_fast: a global batch has no response tokens; the step makes no update")
            gnorm = None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(D.all_reduce_sum(loss_sum)) / g_tok if g_tok > 0 else float("nan")
        return loss, g_tok, g_ex, gnorm, lr, g_drop

    def _dummy_example(self, batch: list[int], items: list[Any]) -> EncodedExample:
        for i in batch:
            e = self._encode(items[i])
            if e is not None:
                return e
        # Every example of the batch was dropped: any sequence will do, its loss is multiplied by 0.
        return EncodedExample(torch.zeros(2, dtype=torch.int64), torch.full((2,), IGNORE_INDEX, dtype=torch.int64))

    def _clip(self) -> float | None:
        c = self.config
        params = [p for p in self.loss_module.parameters() if p.grad is not None]
        if not params:
            return None
        max_norm = c.max_grad_norm if c.max_grad_norm and c.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # ------------------------------------------------------------------ state for checkpoints
    def trainer_state(self) -> dict[str, Any]:
        """Counters that checkpoints save (JSON-serialisable)."""
        return {"global_step": self.global_step, "calls": self.calls, "open_call": self._open, "mode": self.config.mode,
                "world_size": self.world_size, "parallel": self.parallel}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.config.mode:
            raise ValueError(f"checkpoint was written in mode {state.get('mode')!r}, this engine runs {self.config.mode!r}")
        self.global_step = int(state["global_step"])
        self.calls = int(state["calls"])
        self._open = state.get("open_call")
