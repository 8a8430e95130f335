"""lm-evaluation-harness bridge: score a saved moore adapter on any harness task.

``MooreLM`` is a harness ``LM`` (registered as ``moore``) over a ``MultiTaskModel`` and one routing
choice: a task id of the adapter, or None for an unseen task (the mean task embedding). Its three
request types reuse moore's own decoder scoring:

- ``loglikelihood``: the continuation's summed log-probability (``DecoderTasks.continuation_logprobs``,
  the computation behind moore's own option scoring); the context is tokenized with the
  tokenizer's special tokens, the continuation without, and trailing spaces of the context move
  to the continuation, as the harness's HF model does;
- ``loglikelihood_rolling``: the harness's disjoint rolling windows of ``max_length`` tokens, the
  first token predicted from the end-of-text token;
- ``generate_until``: greedy generation cut at the first stop string.

    moore lm-eval RUN_DIR --tasks arc_easy --task-id 0          # or --task NAME, or neither: unseen
    moore lm-eval RUN_DIR --tasks mytask --include-path my_tasks/ --limit 100
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # an optional dependency
    raise ImportError("the lm-evaluation-harness bridge needs lm_eval: pip install 'moore[lm-eval]'") from e

import torch

from ..multitask import MultiTaskModel
from ..multitask.common import pad, task_ids_tensor

logger = logging.getLogger(__name__)


@register_model("moore")
class MooreLM(LM):
    def __init__(self, model: MultiTaskModel | str | Path, task_id: int | str | None = None, batch_size: int = 16,
                 max_gen_toks: int = 256, device: str | None = None):
        super().__init__()
        if not isinstance(model, MultiTaskModel):
            model = MultiTaskModel.load(model)
        if model.kind != "decoder":
            raise ValueError("lm-evaluation-harness scores language models; this adapter is on an encoder "
                             f"({model.model_spec.name_or_path})")
        if device:
            model = model.to(device)
        self.model = model.eval()
        if isinstance(task_id, str):  # "2" from an arg string, or a task's name
            task_id = int(task_id) if task_id.lstrip("-").isdigit() else model.task_id(task_id)
        if task_id is not None:
            model.adapted.routing.validate(task_id, 1, model.device)  # out of range: refused now, with the range
        self.task_id = task_id
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        tokenizer = model.tokenizer
        self.end_of_text = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MooreLM":
        """``--model moore --model_args path=RUN_DIR,task_id=0`` from the harness's own CLI."""
        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v}
        task_id = args.get("task_id", args.get("task"))
        return cls(args["path"], task_id=task_id, **{**extra, **{k: v for k, v in args.items()
                                                              if k in ("batch_size", "max_gen_toks", "device")}})

    # --- the three request types ---------------------------------------------------------------
    def _ids(self, text: str, special: bool) -> list[int]:
        return self.model.strategy.ids(text, special)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self._ids(context, True) if context else [self.end_of_text]
        return context_ids, self._ids(continuation, False)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        return self.model.strategy.continuation_logprobs(pairs, self.task_id, self.batch_size,
                                                         progress=not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            ids = self._ids(request.args[0], False)
            for window in get_rolling_token_windows(token_list=ids, prefix_token=self.end_of_text,
                                                    max_seq_len=self.model.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        scores = self.model.strategy.continuation_logprobs(windows, self.task_id, self.batch_size,
                                                           progress=not disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (value, _) in zip(owner, scores):
            totals[i] += value
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        m, out = self.model, []
        for request in requests:  # one at a time: each has its own stop strings and length
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            prompt = self._ids(context, True)[-m.max_length:]
            input_ids = pad([prompt], m.tokenizer.pad_token_id).to(m.device)
            generated = m.adapted.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                           do_sample=False, max_new_tokens=max_new,
                                           pad_token_id=m.tokenizer.pad_token_id,
                                           task_ids=task_ids_tensor(self.task_id, 1, m.device))
            text = m.tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            out.append(text)
        return out


def evaluate(path: str | Path, tasks: list[str], *, task_id: int | str | None = None,
             include_path: str | Path | None = None, limit: int | float | None = None, batch_size: int = 16,
             num_fewshot: int | None = None, device: str | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a saved adapter; returns the harness's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    model = MooreLM(path, task_id=task_id, batch_size=batch_size, device=device)
    include = str(include_path) if include_path else None
    # indexing the harness's own ~15k task files takes half a minute: only when the include path lacks a task
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or not all(t in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=True, bootstrap_iters=0)
