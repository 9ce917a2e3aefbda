"""Train the process reward model (PRM) on Monte-Carlo step labels (docs/recipe.md "Reward model").

The PRM starts as a **copy** of the given model (the warm-up policy; the policy itself is never touched)
and learns, at a step tag placed after every step, P(good step):

* ``head="reward_tokens"`` (default, ours): the LM-head logits of two reward tokens (``"+"``, ``"-"``) at
  the tag, P(good) = softmax over the two. Only those two LM-head rows are ever multiplied (a gather of the
  tag rows and a ``[S, H] x [H, 2]`` matmul), never the full vocabulary.
* ``head="value"``: a ``Linear(H, 1)`` on the final hidden state at the tag, P(good) = sigmoid.

Both are a binary cross-entropy on one logit per step (``logit_good - logit_bad``, or the value head's
output) against the soft label: for two reward tokens, the cross-entropy over their softmax with targets
``(label, 1 - label)`` equals ``BCEWithLogits(logit_good - logit_bad, label)``. The loss is the mean over
every labelled step of the global batch.

Inputs are built by :class:`mstar_fast.prm.PRMScorer` itself (``encode_prompt`` + ``encode_response`` of
the steps joined by the separator), so training and scoring see the same tokens; an example whose steps
do not re-split into exactly its labels raises ``ValueError``.

When the step tag is not one token of the policy's tokenizer (``"ки"`` is not, for most byte-level BPE
vocabularies), ``add_step_tag=True`` adds it as a token to the PRM's copy of the tokenizer and grows the
copy's embeddings (new rows at the mean of the old ones).

Saved layout (``out_dir``, written to a temporary directory and renamed, so a crash never leaves a half
PRM): the model and processor via ``save_pretrained``, ``prm_config.json`` (head, tag, reward tokens,
splitter settings, training summary) and, for the value head, ``value_head.safetensors``
(``weight [1, H]``, ``bias [1]``). :func:`load_prm` rebuilds the scorer from it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mstar_fast.constants import PRM_HEADS
from mstar_fast.data.records import Prompt
from mstar_fast.models.loading import load_policy
from mstar_fast.prm.data import PRMExample
from mstar_fast.prm.scorer import PRMScorer
from mstar_fast.train.data import IGNORE_INDEX, EncodedExample, collate, plan_steps
from mstar_fast.train.engine import find_vision_encoder
from mstar_fast.train.optim import WarmupSchedule, build_scheduler, param_groups

__all__ = ["HEADS", "PRM_CONFIG", "VALUE_HEAD_FILE", "train_prm", "load_prm", "encode_prm_example", "prm_loss"]

log = logging.getLogger(__name__)

HEADS = PRM_HEADS
PRM_CONFIG = "prm_config.json"
VALUE_HEAD_FILE = "value_head.safetensors"
_FORMAT = "mstar_fast.prm/1"


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", None) or processor


def _hidden_size(model: nn.Module) -> int:
    emb = model.get_input_embeddings()
    if emb is None or getattr(emb, "weight", None) is None:
        raise ValueError(f"train_prm: {type(model).__name__} has no input embeddings to size a value head by")
    return int(emb.weight.shape[1])


def add_step_tag_token(model: nn.Module, processor: Any, step_tag: str) -> bool:
    """Make ``step_tag`` one token of ``processor``'s tokenizer (an added, non-normalised token) and grow
    ``model``'s embeddings when the new id does not fit. Returns True when the tokenizer changed.

    Mutates both arguments: call it on the PRM's copies, never on the policy's.
    """
    from tokenizers import AddedToken

    tok = _tokenizer(processor)
    if len(tok.encode(step_tag, add_special_tokens=False)) == 1:
        return False
    tok.add_tokens([AddedToken(step_tag, special=False, normalized=False)])
    n = len(tok)
    if n > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(n)  # new rows at the mean of the old ones (transformers' default)
    log.info("train_prm: added the step tag %r to the PRM's tokenizer (id %d)", step_tag,
             tok.convert_tokens_to_ids(step_tag))
    return True


def encode_prm_example(scorer: PRMScorer, prompt_inputs: Mapping[str, torch.Tensor], example: PRMExample,
                       ) -> tuple[EncodedExample, list[int]]:
    """The PRM input of ``example`` as the scorer builds it: prompt tokens (``prompt_inputs``, from
    ``scorer.encode_prompt``) then the response with the step tag after each step. Returns the example
    (``labels`` all ignored: the step labels travel separately) and the tag positions in the sequence.

    Raises:
        ValueError: the steps do not re-split into ``len(example.labels)`` tagged steps.
    """
    ids, tags = scorer.encode_response(scorer.step_separator.join(example.steps))
    if len(tags) != len(example.labels):
        raise ValueError(
            f"train_prm: example {example.key} has {len(example.labels)} labels but its steps give {len(tags)} "
            f"tagged steps when joined with {scorer.step_separator!r} and re-split (empty steps, or a step that "
            "contains the separator?); label data with the scorer's separator and answer marker"
        )
    p_ids = prompt_inputs["input_ids"]
    if p_ids.dim() != 2 or p_ids.shape[0] != 1:
        raise ValueError(f"train_prm: expected prompt input_ids [1, P], got {tuple(p_ids.shape)}")
    P = int(p_ids.shape[1])
    resp = torch.tensor(ids, dtype=torch.int64)
    input_ids = torch.cat([p_ids[0].to(torch.int64).cpu(), resp])
    tok_extras, extras = {}, {}
    for k, v in prompt_inputs.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if v.dim() == 2 and tuple(v.shape) == (1, P):  # per-token inputs (token types): 0 on the response
            tok_extras[k] = torch.cat([v[0].cpu(), torch.zeros(len(resp), dtype=v.dtype)])
        else:
            extras[k] = v.cpu()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    return EncodedExample(input_ids, labels, tok_extras, extras), [P + t for t in tags]


def prm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of step logits against soft labels in [0, 1].

    ``logits``: ``[S, 2]`` (good, bad reward-token logits: the two-way softmax cross-entropy with targets
    ``(label, 1 - label)``) or ``[S]`` / ``[S, 1]`` (a value head's logit).
    """
    if logits.dim() == 2 and logits.shape[1] == 2:
        z = logits[:, 0] - logits[:, 1]  # log p_good - log p_bad of the 2-way softmax
    elif logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        z = logits.reshape(-1)
    else:
        raise ValueError(f"prm_loss: logits must be [S, 2], [S, 1] or [S], got {tuple(logits.shape)}")
    if z.shape[0] != labels.shape[0]:
        raise ValueError(f"prm_loss: {z.shape[0]} logits but {labels.shape[0]} labels")
    return nn.functional.binary_cross_entropy_with_logits(z.float(), labels.float().to(z.device), reduction=reduction)


class _PRMLoss(nn.Module):
    """Step logits at the tag positions: backbone -> gather tag rows -> 1- or 2-row projection."""

    def __init__(self, model: nn.Module, backbone: nn.Module, value_head: nn.Linear | None,
                 reward_token_ids: tuple[int, int] | None):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self._backbone = [backbone]  # a plain list: the backbone's parameters are already under `model`
        self.reward_rows = None if reward_token_ids is None else torch.tensor(reward_token_ids, dtype=torch.long)

    def forward(self, batch: Mapping[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = self._backbone[0](**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # [S, H]: tags only
        if self.value_head is not None:
            w, b = self.value_head.weight, self.value_head.bias
        else:
            head = self.model.get_output_embeddings()
            idx = self.reward_rows.to(head.weight.device)
            w = head.weight.index_select(0, idx)  # the two reward-token rows; differentiable
            b = head.bias.index_select(0, idx) if getattr(head, "bias", None) is not None else None
        logits = rows.float() @ w.float().t()
        return logits + b.float() if b is not None else logits


def _write_dir(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling, then rename over ``out_dir`` (a previous PRM there is replaced)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / PRM_CONFIG).is_file():
        raise ValueError(f"train_prm: {out_dir} exists and is not a PRM directory (no {PRM_CONFIG}); "
                         "refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def _check_train_args(head: str, examples: list[PRMExample], lookup: Mapping[str, Prompt], *, epochs: int,
                      batch_size: int, micro_batch_size: int, warmup_steps: int, lr: float,
                      weight_decay: float) -> None:
    """``train_prm``'s argument checks (ValueError naming the argument or the example)."""
    if head not in HEADS:
        raise ValueError(f"train_prm: head must be one of {HEADS}, got {head!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("micro_batch_size", micro_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"train_prm: {name} must be an int >= 1, got {v!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"train_prm: warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"train_prm: lr must be a finite number > 0, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"train_prm: weight_decay must be >= 0, got {weight_decay!r}")
    if not examples:
        raise ValueError("train_prm: no examples")
    for ex in examples:
        if ex.prompt_id not in lookup:
            raise ValueError(f"train_prm: no Prompt with id {ex.prompt_id!r} (example {ex.key})")
        if len(ex.labels) != len(ex.steps) or not ex.labels:
            raise ValueError(f"train_prm: example {ex.key} has {len(ex.steps)} steps and {len(ex.labels)} labels")
        if any(not 0.0 <= float(y) <= 1.0 for y in ex.labels):
            raise ValueError(f"train_prm: example {ex.key} has labels outside [0, 1]: {ex.labels}")


def _fit(loss_module: nn.Module, encoded: list[tuple[EncodedExample, list[int], torch.Tensor]],
         plan: list[list[int]], optimizer: torch.optim.Optimizer, scheduler: Any, *, micro_batch_size: int, pad: int,
         dtype: torch.dtype, use_bf16: bool, max_grad_norm: float | None,
         on_step: Callable[[int, float], None] | None) -> list[float]:
    """The optimizer steps of ``train_prm`` over ``plan`` (example indices per step); returns the loss of each
    step (mean over the labelled steps of its batch, the same whatever the micro-batching)."""
    device = next(loss_module.parameters()).device
    losses: list[float] = []
    loss_module.train()
    for step, batch in enumerate(plan):
        n_labels = sum(len(encoded[i][1]) for i in batch)
        order = sorted(batch, key=lambda i: -len(encoded[i][0]))  # similar lengths together: less padding
        total = 0.0
        for s in range(0, len(order), micro_batch_size):
            idx = order[s : s + micro_batch_size]
            mb = collate([encoded[i][0] for i in idx], pad)
            T = mb["input_ids"].shape[1]
            positions = torch.tensor([r * T + p for r, i in enumerate(idx) for p in encoded[i][1]],
                                     dtype=torch.long, device=device)
            labels = torch.cat([encoded[i][2] for i in idx]).to(device)
            mb = {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in mb.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = loss_module(mb, positions)
            part = prm_loss(logits, labels, reduction="sum")
            (part / n_labels).backward()
            total += float(part.detach())
        if max_grad_norm is not None and max_grad_norm > 0:
            nn.utils.clip_grad_norm_([p for p in loss_module.parameters() if p.grad is not None], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / n_labels)
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def _save_prm(out_dir: Path, prm: nn.Module, proc: Any, value_head: nn.Linear | None, config: dict[str, Any]) -> None:
    """Write the trained PRM (weights, processor, value head, ``PRM_CONFIG``) atomically to ``out_dir``."""

    def write(d: Path) -> None:
        prm.save_pretrained(d)
        proc.save_pretrained(d)
        if value_head is not None:
            save_file({"weight": value_head.weight.detach().cpu().contiguous(),
                       "bias": value_head.bias.detach().cpu().contiguous()}, str(d / VALUE_HEAD_FILE))
        (d / PRM_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    _write_dir(out_dir, write)


def train_prm(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[Prompt] | Mapping[str, Prompt],
    examples: Sequence[PRMExample],
    *,
    head: str = "reward_tokens",
    step_tag: str = "ки",
    reward_tokens: tuple[str, str] = ("+", "-"),
    lr: float = 1e-5,
    epochs: int = 1,
    batch_size: int = 16,
    micro_batch_size: int = 4,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    step_separator: str = "\n\n",
    answer_marker: str | None = "# Answer",
    prompt_format: Callable[[Prompt, Any], str] | None = None,
    add_step_tag: bool = True,
    freeze_vision: bool = False,
    bf16: bool | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> PRMScorer:
    """Train a PRM initialised from ``model`` on Monte-Carlo step labels; return its scorer.

    Args:
        model: the warm-up policy (a ``transformers`` causal LM or image-text-to-text model). It is
            deep-copied; the copy is trained and becomes the PRM. fp32 weights recommended.
        processor: its processor (or tokenizer); also copied (the step tag may be added to the copy).
        prompts: the prompts of the examples (a sequence or a mapping by id).
        examples: :class:`~mstar_fast.prm.data.PRMExample` records (from ``monte_carlo_labels``).
        head: ``"reward_tokens"`` (two reward tokens at the tag) or ``"value"`` (a ``Linear(H, 1)``).
        step_tag, reward_tokens, step_separator, answer_marker, prompt_format: the scorer's settings
            (:class:`mstar_fast.prm.PRMScorer`); ``prompt_format`` (a callable) is not saved: pass it to
            :func:`load_prm` again.
        lr, weight_decay, warmup_steps, max_grad_norm: AdamW, linear warm-up then constant LR, gradient
            clipping (None or <= 0: off).
        epochs: passes over the examples (shuffled per epoch by ``seed``).
        batch_size: examples per optimizer step; micro_batch_size: examples per forward (gradients
            accumulate; the loss is the mean over all labelled steps of the batch either way).
        add_step_tag: add ``step_tag`` to the PRM's tokenizer when it is not one token (else the scorer's
            check raises).
        freeze_vision: keep the vision encoder fixed.
        bf16: bf16 autocast; None = on for CUDA devices that support it, off on CPU.
        seed: data order, dropout and value-head seed (the caller's RNG state is left untouched).
        out_dir: where to save the PRM (see the module doc); None: not saved.
        on_step: called after every optimizer step with ``(step, loss)``.

    Returns:
        A :class:`~mstar_fast.prm.PRMScorer` on the trained copy (eval mode), with ``prompts`` attached.

    Raises:
        ValueError: bad arguments, an example whose prompt is missing, labels outside [0, 1], steps that
            do not match their labels, or tokenizer problems the scorer reports.
    """
    examples = list(examples)
    lookup = dict(prompts) if isinstance(prompts, Mapping) else {p.id: p for p in prompts}
    _check_train_args(head, examples, lookup, epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size,
                      warmup_steps=warmup_steps, lr=lr, weight_decay=weight_decay)

    device = next(model.parameters()).device
    use_bf16 = (device.type == "cuda" and torch.cuda.is_bf16_supported()) if bf16 is None else bool(bf16)
    prm = copy.deepcopy(model)
    proc = copy.deepcopy(processor)
    if add_step_tag:
        add_step_tag_token(prm, proc, step_tag)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        value_head = None
        if head == "value":
            # Zero init: every step starts at P(good) = 0.5, and the first gradients are the label means.
            value_head = nn.Linear(_hidden_size(prm), 1).to(device=device, dtype=next(prm.parameters()).dtype)
            nn.init.zeros_(value_head.weight)
            nn.init.zeros_(value_head.bias)
        # The scorer validates the tag / reward tokens and gives the exact encoding used at scoring time.
        template = PRMScorer(prm, proc, step_tag=step_tag, reward_tokens=reward_tokens, value_head=value_head,
                             step_separator=step_separator, answer_marker=answer_marker, prompt_format=prompt_format)
        prompt_inputs: dict[str, dict[str, torch.Tensor]] = {}
        encoded: list[tuple[EncodedExample, list[int], torch.Tensor]] = []
        for ex in examples:
            if ex.prompt_id not in prompt_inputs:
                prompt_inputs[ex.prompt_id] = template.encode_prompt(lookup[ex.prompt_id])
            enc, tags = encode_prm_example(template, prompt_inputs[ex.prompt_id], ex)
            encoded.append((enc, tags, torch.tensor(ex.labels, dtype=torch.float32)))

        if freeze_vision:
            enc_module = find_vision_encoder(prm)
            if enc_module is None:
                raise ValueError(f"train_prm: freeze_vision=True but {type(prm).__name__} has no vision encoder")
            enc_module.requires_grad_(False)
        loss_module = _PRMLoss(prm, template.backbone, value_head, template.reward_token_ids)
        optimizer = torch.optim.AdamW(param_groups(loss_module, weight_decay), lr=lr)
        scheduler = build_scheduler(optimizer, WarmupSchedule("constant", warmup_steps))
        tokenizer = _tokenizer(proc)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        dtype = next(prm.parameters()).dtype
        plan = plan_steps(len(encoded), batch_size, None, epochs, seed, 0, shuffle=True)
        t0 = time.perf_counter()
        losses = _fit(loss_module, encoded, plan, optimizer, scheduler, micro_batch_size=micro_batch_size, pad=pad,
                      dtype=dtype, use_bf16=use_bf16, max_grad_norm=max_grad_norm, on_step=on_step)
        prm.eval()
    log.info("train_prm: %d steps on %d examples in %.1fs, loss %.4f -> %.4f", len(plan), len(examples),
             time.perf_counter() - t0, losses[0], losses[-1])

    if value_head is not None:
        value_head.eval()
    scorer = PRMScorer(prm, proc, step_tag=step_tag, reward_tokens=reward_tokens, value_head=value_head,
                       step_separator=step_separator, answer_marker=answer_marker, prompt_format=prompt_format,
                       prompts=lookup)
    if out_dir is not None:
        _save_prm(Path(out_dir), prm, proc, value_head, {
            "format": _FORMAT, "head": head, "step_tag": step_tag, "reward_tokens": list(reward_tokens),
            "step_separator": step_separator, "answer_marker": answer_marker,
            "train": {"examples": len(examples), "steps": len(plan), "epochs": epochs, "lr": lr,
                      "batch_size": batch_size, "seed": seed, "losses": losses},
        })
    return scorer


def load_prm(
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    prompt_format: Callable[[Prompt, Any], str] | None = None,
    prompts: Sequence[Prompt] | Mapping[str, Prompt] | None = None,
    **scorer_options: Any,
) -> PRMScorer:
    """The :class:`~mstar_fast.prm.PRMScorer` of a PRM saved by :func:`train_prm`.

    Args:
        out_dir: the directory ``train_prm(..., out_dir=...)`` wrote.
        device, dtype: where and how to load the model (:func:`mstar_fast.models.load_policy`).
        prompt_format: the same callable given to ``train_prm``, if any (callables are not saved).
        prompts: Prompt records the scorer's ``__call__`` can look samples up in.
        scorer_options: other ``PRMScorer`` options (``share_prefix``, ``max_batch_tokens``).

    Raises:
        ValueError: ``out_dir`` holds no ``prm_config.json`` or an unknown format / head.
    """
    d = Path(out_dir)
    cfg_path = d / PRM_CONFIG
    if not cfg_path.is_file():
        raise ValueError(f"load_prm: {d} holds no {PRM_CONFIG}; is it a directory written by train_prm?")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != _FORMAT or cfg.get("head") not in HEADS:
        raise ValueError(f"load_prm: {cfg_path} has format {cfg.get('format')!r} / head {cfg.get('head')!r}; "
                         f"expected {_FORMAT!r} and one of {HEADS}")
    model, processor = load_policy(d, dtype=dtype, device=device)
    value_head = None
    if cfg["head"] == "value":
        state = load_file(str(d / VALUE_HEAD_FILE))
        weight = state["weight"]
        value_head = nn.Linear(weight.shape[1], 1)
        value_head.load_state_dict(state)
        value_head = value_head.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype).eval()
    return PRMScorer(model, processor, step_tag=cfg["step_tag"], reward_tokens=tuple(cfg["reward_tokens"]),
                     value_head=value_head, step_separator=cfg["step_separator"], answer_marker=cfg["answer_marker"],
                     prompt_format=prompt_format, prompts=prompts, **scorer_options)
