"""Decoders: every task is a choice between continuations of a prompt.

Training puts the loss on the answer tokens only: the prompt is masked and padding is excluded.
Scoring is by option log-likelihood (the default; when the options differ in their last token
only, one forward scores them all from the logits of those label tokens) or by greedy generation
with LLM-Adapters' answer extraction. Language-modelling tasks are scored by perplexity.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.metrics import perplexity
from ..data.tasks import Example, Task
from ..errors import ConfigError
from .common import chunks, pad, task_ids_tensor


class DecoderTasks:
    """How a decoder batches, trains and scores its tasks."""

    kind = "decoder"

    def __init__(self, model: nn.Module):
        self.model = model  # the MultiTaskModel: its adapted model, tokenizer, tasks and heads

    def check(self, task: Task) -> None:
        if task.kind == "regression":
            raise ConfigError(f"task {task.name!r} is a regression task: use an encoder model for it")
        if task.kind == "classification" and not task.template:
            raise ConfigError(f"task {task.name!r} has no prompt template, which a decoder needs")

    def heads(self, hidden: int, tasks: Sequence[Task]) -> nn.ModuleDict:
        return nn.ModuleDict()  # the language-model head answers every task

    # --- prompts and sequences -------------------------------------------------------------------
    def prompt(self, task: Task, example: Example) -> str:
        if task.kind == "multiple_choice" and not task.template:
            return example["prompt"]
        return task.template.format(**example)

    def prompt_ids(self, task: Task, example: Example) -> list[int]:
        """The prompt's token ids; with ``task.chat``, the prompt is the user's turn of the tokenizer's
        chat template and the answer the assistant's reply (instruct models answer far better so:
        SmolLM2-135M-Instruct on SST-2, 55% plain against 74% in its chat format)."""
        text = self.prompt(task, example)
        if not task.chat:
            return self.ids(text, True)
        tokenizer = self.model.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"task {task.name!r} asks for the chat format (chat: true), but the model's tokenizer "
                             "has no chat template")
        system = [{"role": "system", "content": task.system_prompt}] if task.system_prompt is not None else []
        turn = tokenizer.apply_chat_template([*system, {"role": "user", "content": text.strip()}], tokenize=False,
                                             add_generation_prompt=True)
        return self.ids(turn, False)  # the template writes its own special tokens

    def options(self, task: Task, example: Example) -> list[str]:
        return list(example["options"]) if task.kind == "multiple_choice" else list(task.label_names)

    def ids(self, text: str, special: bool) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=special)["input_ids"]

    def sequence(self, task: Task, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels) with -100 on the prompt: the loss is on the answer only."""
        tokenizer, max_length = self.model.tokenizer, self.model.max_length
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if task.kind == "language_modeling":
            ids = (self.ids(example["text"], True) + eos)[:max_length]
            return ids, list(ids)
        answer = self.ids(task.answer_prefix + self.options(task, example)[example["label"]], False) + eos
        prompt = self.prompt_ids(task, example)
        prompt = prompt[max(0, len(prompt) + len(answer) - max_length):]  # cut the prompt's start, never the answer
        return prompt + answer, [-100] * len(prompt) + answer

    def inputs(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The prompts of examples (the text, for language modelling): what the task classifier sees."""
        m = self.model
        ids = [(self.ids(e["text"], True) if task.kind == "language_modeling" else
                self.prompt_ids(task, e))[-m.max_length:] for e in examples]
        return {"input_ids": pad(ids, m.tokenizer.pad_token_id), "attention_mask": pad([[1] * len(i) for i in ids], 0)}

    # --- batches and the loss ------------------------------------------------------------------
    def collate(self, examples: Sequence[Example], task_ids: torch.Tensor) -> dict[str, Any]:
        seqs = [self.sequence(self.model.tasks[int(t)], e) for e, t in zip(examples, task_ids)]
        input_ids = pad([s for s, _ in seqs], self.model.tokenizer.pad_token_id)
        labels = pad([lab for _, lab in seqs], -100)
        mask = pad([[1] * len(s) for s, _ in seqs], 0)
        return {"inputs": {"input_ids": input_ids, "attention_mask": mask}, "labels": labels, "task_ids": task_ids}

    def loss(self, batch: dict) -> torch.Tensor:
        """Sum of the answer tokens' cross-entropies."""
        targets = batch["labels"][:, 1:]  # (B, T-1): token t predicts token t+1
        positions = (targets != -100).any(0).nonzero().squeeze(1)  # (P,): columns that predict an answer token
        logits = self.logits_at(batch["inputs"], batch["task_ids"], positions)  # (B, P, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets[:, positions].flatten(), ignore_index=-100,
                               reduction="sum")

    def count_units(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def logits_at(self, inputs: dict, task_ids, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, P, V) at the given sequence positions only, through the model's own
        ``logits_to_keep``: the LM head over every position costs as much as several layers, and
        (B, T, V) floats dominate memory. Models without that argument compute them all."""
        adapted = self.model.adapted
        if self.keeps_logits:
            return adapted(**inputs, task_ids=task_ids, logits_to_keep=positions).logits
        return adapted(**inputs, task_ids=task_ids).logits[:, positions]

    @functools.cached_property
    def keeps_logits(self) -> bool:  # read once: the loss runs every micro-batch
        return "logits_to_keep" in inspect.signature(self.model.adapted.model.forward).parameters

    # --- scoring ---------------------------------------------------------------------------------
    def predict(self, task: Task, examples: Sequence[Example], task_id: int | None, *, batch_size: int,
                scoring: str, progress: bool, max_new_tokens: int = 16) -> list[int]:
        if scoring == "generate":
            return self.generated_choices(task, examples, task_id, batch_size, max_new_tokens, progress)
        if scoring == "loglik":
            return self.loglik_choices(task, examples, task_id, batch_size, progress)
        raise ValueError(f"a decoder scores by 'loglik' or 'generate', got {scoring!r}")

    def loglik_choices(self, task: Task, examples: Sequence[Example], task_id: int | None, batch_size: int,
                       progress: bool) -> list[int]:
        """The option whose answer tokens the model finds most likely given the prompt."""
        scores = self.option_logliks(task, examples, task_id, batch_size, progress)
        return [max(range(len(row)), key=row.__getitem__) for row in scores]

    def option_logliks(self, task: Task, examples: Sequence[Example], task_id: int | None, batch_size: int,
                       progress: bool) -> list[list[float]]:
        """For each example, each option's answer tokens' summed log-probability given the prompt.

        When all options share their answer tokens but the last (``answer1``..``answer4``, ``true``/
        ``false``), one forward per example scores them all from the logits at that position (the
        shared tokens add the same to every option, so they are left out of the sums). Otherwise
        (options as texts), a model with a key-value cache reads each prompt once and every option
        after it (``_cached_option_logliks``)."""
        m = self.model
        requests = []  # (example index, option index, context ids, scored ids)
        scores: dict[int, dict[int, float]] = {}
        by_text = []  # examples whose options differ beyond their last token
        for i, example in enumerate(examples):
            prompt = self.prompt_ids(task, example)
            answers = [self.ids(task.answer_prefix + o, False) for o in self.options(task, example)]
            shared = _common_prefix(answers)
            if all(len(a) == shared + 1 for a in answers):
                requests.append((i, None, prompt + answers[0][:shared], [a[-1] for a in answers]))
            elif self.caches:
                by_text.append((i, prompt, answers))
            else:
                requests += [(i, k, prompt + a[:-1], a) for k, a in enumerate(answers)]
        for chunk in chunks(by_text, batch_size, progress, task.name):
            for i, row in zip([i for i, _, _ in chunk], self._cached_option_logliks(chunk, task_id)):
                scores[i] = dict(enumerate(row))
        for chunk in chunks(requests, batch_size, progress, task.name):
            contexts = [c[-m.max_length:] for _, _, c, _ in chunk]
            input_ids = pad(contexts, m.tokenizer.pad_token_id).to(m.device)
            mask = pad([[1] * len(c) for c in contexts], 0).to(m.device)
            # the positions whose next-token logits score an answer token: the last len(scored) of each context
            # (one when the options differ in their last token only: those logits rank them all at once)
            wanted = [list(range(len(c) - (1 if k is None else len(s)), len(c))) for c, (_, k, _, s) in zip(contexts, chunk)]
            positions = sorted({p for row in wanted for p in row})
            column = {p: j for j, p in enumerate(positions)}
            logp = self.logits_at({"input_ids": input_ids, "attention_mask": mask},
                                  task_ids_tensor(task_id, len(chunk), m.device),
                                  torch.tensor(positions, device=m.device)).float().log_softmax(-1)  # (B, P, V)
            for row, (i, k, _, scored) in enumerate(chunk):
                cols = torch.tensor([column[p] for p in wanted[row]], device=logp.device)
                if k is None:
                    scores[i] = dict(enumerate(logp[row, cols[0], scored].tolist()))
                else:  # the answer's tokens are the context's last len(scored)-1 tokens plus one
                    value = logp[row, cols, torch.tensor(scored, device=logp.device)].sum().item()
                    scores.setdefault(i, {})[k] = value
        return [[scores[i][k] for k in range(len(scores[i]))] for i in range(len(examples))]

    @functools.cached_property
    def caches(self) -> bool:
        """Whether the model keeps a key-value cache to continue a forward from (decoder LMs do)."""
        return getattr(getattr(self.model.adapted.model, "config", None), "use_cache", None) is not None

    @torch.no_grad()
    def _cached_option_logliks(self, chunk: Sequence[tuple[int, list[int], list[list[int]]]],
                               task_id) -> list[list[float]]:
        """Each option's summed log-probability after its prompt: the prompts (left-padded, with
        their own positions) in one forward that keeps the cache, then every option of every prompt
        in a second forward from that cache. A prompt is read once instead of once per option."""
        m, device = self.model, self.model.device
        prompts = [p[-max(1, m.max_length + 1 - max(map(len, answers))):] for _, p, answers in chunk]
        input_ids = pad(prompts, m.tokenizer.pad_token_id, left=True).to(device)  # (B, T)
        mask = pad([[1] * len(p) for p in prompts], 0, left=True).to(device)
        routing = task_ids_tensor(task_id, len(chunk), device)
        if isinstance(routing, str):  # "infer": from the prompt alone, the same mixture for its options
            routing = m.adapted.infer_task_weights(input_ids=input_ids, attention_mask=mask)
        keep = {"logits_to_keep": 1} if self.keeps_logits else {}  # only the last position's logits are read
        first = m.adapted(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                          task_ids=routing, use_cache=True, **keep)
        first_logp = first.logits[:, -1].float().log_softmax(-1)  # (B, V): each option's first token
        rows = [(b, k) for b, (_, _, answers) in enumerate(chunk) for k in range(len(answers))]
        index = torch.tensor([b for b, _ in rows], device=device)
        cache = first.past_key_values
        cache.reorder_cache(index)  # one copy of its prompt's cache per option
        options = [chunk[b][2][k] for b, k in rows]
        option_ids = pad(options, m.tokenizer.pad_token_id).to(device)  # (R, L)
        option_mask = pad([[1] * len(o) for o in options], 0).to(device)
        positions = mask.sum(-1)[index][:, None] + torch.arange(option_ids.shape[1], device=device)  # (R, L)
        second = m.adapted(input_ids=option_ids, attention_mask=torch.cat([mask[index], option_mask], -1),
                           position_ids=positions, past_key_values=cache, use_cache=False,
                           task_ids=None if routing is None else routing[index])
        logp = second.logits[:, :-1].float().log_softmax(-1)  # (R, L-1, V): the options' later tokens
        targets = option_ids[:, 1:].clamp_min(0)
        later = (logp.gather(-1, targets[..., None])[..., 0] * option_mask[:, 1:]).sum(-1)  # (R,)
        firsts = first_logp[index].gather(-1, option_ids[:, :1])[:, 0]  # (R,)
        totals = (firsts + later).tolist()
        out = [[] for _ in chunk]
        for (b, _), value in zip(rows, totals):
            out[b].append(value)
        return out

    @torch.no_grad()
    def continuation_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]], task_id: int | None,
                              batch_size: int, progress: bool = False) -> list[tuple[float, bool]]:
        """For each (context ids, continuation ids): the continuation's summed log-probability given
        the context, and whether greedy decoding would produce it (lm-evaluation-harness's
        ``loglikelihood``). A context longer than ``max_length`` loses its start."""
        m, out = self.model, []
        for chunk in chunks(list(pairs), batch_size, progress, "loglikelihood"):
            rows = [(c + t)[-(m.max_length + 1):] for c, t in chunk]  # the last token is never an input
            inputs = [r[:-1] for r in rows]
            input_ids = pad(inputs, m.tokenizer.pad_token_id).to(m.device)
            mask = pad([[1] * len(r) for r in inputs], 0).to(m.device)
            logp = m.adapted(input_ids=input_ids, attention_mask=mask,
                             task_ids=task_ids_tensor(task_id, len(chunk), m.device)).logits.float().log_softmax(-1)
            for row, ((_, target), full) in enumerate(zip(chunk, rows)):
                cols = torch.arange(len(full) - 1 - len(target), len(full) - 1, device=logp.device)
                wanted = torch.tensor(target, device=logp.device)
                scored = logp[row, cols]  # (n, V): the logits that predict each continuation token
                out.append((scored.gather(-1, wanted[:, None]).sum().item(), bool((scored.argmax(-1) == wanted).all())))
        return out

    def generated_choices(self, task: Task, examples: Sequence[Example], task_id: int | None, batch_size: int,
                          max_new_tokens: int, progress: bool) -> list[int]:
        """Greedy generation, then the first option the answer names (LLM-Adapters' extraction)."""
        m, out = self.model, []
        for chunk in chunks(list(examples), batch_size, progress, task.name):
            prompts = [self.prompt_ids(task, e)[-m.max_length:] for e in chunk]
            input_ids = pad(prompts, m.tokenizer.pad_token_id, left=True).to(m.device)
            mask = pad([[1] * len(p) for p in prompts], 0, left=True).to(m.device)
            generated = m.adapted.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                           max_new_tokens=max_new_tokens, pad_token_id=m.tokenizer.pad_token_id,
                                           task_ids=task_ids_tensor(task_id, len(chunk), m.device))
            texts = m.tokenizer.batch_decode(generated[:, input_ids.shape[1]:], skip_special_tokens=True)
            out += [extract_choice(text, self.options(task, e)) for text, e in zip(texts, chunk)]
        return out

    def perplexity(self, examples: Sequence[Example], task_id: int | None, batch_size: int,
                   progress: bool) -> tuple[float, list[tuple[float, int]]]:
        """Perplexity of the running text in non-overlapping windows of max_length tokens, and each
        window's (summed negative log-likelihood, tokens scored): what a bootstrap over windows resamples."""
        m = self.model
        ids = self.ids("\n".join(e["text"] for e in examples), False)
        windows = [ids[i:i + m.max_length] for i in range(0, len(ids), m.max_length)]
        windows = [w for w in windows if len(w) > 1]
        total, count, per_window = 0.0, 0, []
        for chunk in chunks(windows, batch_size, progress, "perplexity"):
            input_ids = pad(chunk, m.tokenizer.pad_token_id).to(m.device)
            labels = pad(chunk, -100).to(m.device)
            mask = (labels != -100).long()
            logits = m.adapted(input_ids=input_ids, attention_mask=mask,
                               task_ids=task_ids_tensor(task_id, len(chunk), m.device)).logits
            targets = labels[:, 1:]
            flat = logits[:, :-1].flatten(0, 1).float()
            total += F.cross_entropy(flat, targets.flatten(), ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
            # per window as well; the total above keeps its own reduction, so recorded perplexities stay bit-identical
            nll = F.cross_entropy(flat, targets.flatten(), ignore_index=-100,
                                  reduction="none").view(targets.shape)  # (B, T-1), 0 where ignored
            per_window += zip(nll.sum(1).tolist(), (targets != -100).sum(1).tolist())
        return perplexity(total, count), per_window


def _common_prefix(sequences: list[list[int]]) -> int:
    n = 0
    while all(len(s) > n for s in sequences) and len({s[n] for s in sequences}) == 1:
        n += 1
    return n


def extract_choice(text: str, options: Sequence[str]) -> int:
    """Index of the option named first in ``text`` (whole words, case-insensitive), or -1."""
    lowered = text.lower()
    found = []
    for k, option in enumerate(options):
        match = re.search(rf"(?<![\w]){re.escape(option.lower())}(?![\w])", lowered)
        if match:
            found.append((match.start(), -len(option), k))
    return min(found)[2] if found else -1
