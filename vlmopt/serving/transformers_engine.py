"""In-process transformers backend: a DSPy 3.4 engine (``complete(Request) -> Response``).

``create_lm("LiquidAI/LFM2-VL-450M")`` (or a local directory) returns a ``dspy.LM`` whose engine
loads any ``AutoModelForImageTextToText`` + ``AutoProcessor`` once and serves every thread:

* **micro-batching** — concurrent ``complete`` calls (``dspy.Evaluate(num_threads=8)``, MIPROv2)
  are gathered into one left-padded batch (``max_batch_size``, ``max_wait_ms``); see ``batching``.
* **typed outputs** — a ``response_format`` JSON schema is enforced by an xgrammar grammar with
  compact whitespace, one matcher per batch row; see ``grammar``.
* **label probabilities** — a single-enum schema (the classifier) is answered by scoring every
  label: each prompt runs once, the labels' answers on top of its cache; the most likely label,
  with the distribution attached; see ``label_scoring``.
* **shared-prefix reuse** — what every query of a program shares (system, instruction, demos and
  their images) runs once and stays cached (an LRU under ``prefix_cache_mb``); each query runs on
  top of a copy; see ``prefix_cache``.
* greedy by default, seeded sampling when ``temperature > 0``: each request draws from its own
  generator (``sampling``), so its answer does not depend on what it was batched with; token
  usage in every Response.

Thread safety: callers' threads only prepare requests (chat template, grammar); the batch worker
runs the model. The processor's fast tokenizer keeps its padding setting as state that every
encode call rewrites, so every encode (the worker's, and ``count_prompt_tokens`` on any thread)
takes one lock, else a count could switch padding off under a batch being padded.

DSPy's cache keys on the model string, not the engine, so the model string names the exact
weights (hub commit or directory hash), dtype and device: ``engine.model_string``.

Example::

    lm = create_lm("/models/LFM2-VL-450M", max_batch_size=8)
    dspy.configure(lm=lm, adapter=dspy.JSONAdapter())
    pred = dspy.Predict(MySignature)(image=dspy.Image("cat.jpg"))
    prediction_probabilities(pred)  # {"cat": 0.93, "dog": 0.07}
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy
import torch
from dspy.lm15 import (
    InvalidRequestError,
    Message,
    Request,
    Response,
    TextPart,
    TokenLogprob,
    TopLogprob,
    UnsupportedFeatureError,
    Usage,
    response_to_events,
)
from PIL import Image
from transformers import LogitsProcessorList

from vlmopt._dspy_compat import validate_request
from vlmopt.serving import label_scoring
from vlmopt.serving.batching import BatchStats, MicroBatcher
from vlmopt.serving.chat_inputs import ChatInput, chat_input_from_request, encode_prompts, render_chat_template
from vlmopt.serving.families import GENERIC, scoring_inputs
from vlmopt.serving.generic_check import check_generic_scoring
from vlmopt.serving.grammar import GrammarCompiler, GrammarLogitsProcessor
from vlmopt.serving.model_loading import load_model, locate_adapter, locate_model
from vlmopt.serving.prefix_cache import DEFAULT_BUDGET_MB, PrefixCache, PromptSplit, special_token_strings, split_prompt
from vlmopt.serving.prefix_runs import PrefixPlanner, prefill_on_prefix
from vlmopt.serving.sampling import RowSampler, sampling_warpers

SCORE_ROWS_PER_PASS = 64
"""Most (request, label) rows per scoring pass (each row holds a copy of its prompt's cache); a
request's labels are never split."""

_REFUSED_CONFIG = ("tool_choice", "reasoning", "cache", "frequency_penalty", "presence_penalty",
                   "service_tier", "user_id", "store", "extensions")
"""Request settings this engine cannot honour; lm15's rule is to refuse, never drop silently."""


@dataclass
class EngineStats:
    """What the engine did, for tests and benchmarks (read them, don't write them)."""

    requests: int = 0
    generate_calls: int = 0
    score_calls: int = 0
    decode_steps: int = 0  # generate's steps, summed over calls: a batch steps until its longest answer ends
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batches: BatchStats = field(default_factory=BatchStats)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def batch_sizes(self) -> list[int]:
        """Requests per gathered batch, in order."""
        return self.batches.batch_sizes

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


@dataclass
class _Job:
    """One request, prepared in its caller's thread, run by the batch worker."""

    prompt: str
    images: list[Image.Image]
    max_new_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int
    stop: tuple[str, ...]
    logprobs: int | None
    grammar: Any = None  # xgrammar CompiledGrammar for a response_format, else None
    classifier: label_scoring.ClassifierField | None = None
    split: PromptSplit | None = None  # where the prompt's shared prefix ends, when reuse is on and it splits

    def group(self) -> tuple:
        """Jobs with equal keys run in one model call."""
        if self.classifier is not None:
            return ("score", bool(self.images))
        sampling = (self.temperature, self.top_p, self.top_k) if self.temperature > 0 else ()  # seeds are per row
        return ("generate", bool(self.images), self.max_new_tokens, sampling, self.stop, self.logprobs is not None)


@dataclass
class _Result:
    parts: tuple
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None


class TransformersEngine:
    """A thread-safe DSPy engine over one local VLM; see the module docstring."""

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, model: str, *, revision: str | None = None, dtype: str = "auto", device: str = "auto",
                 max_new_tokens: int = 256, max_batch_size: int = 8, max_wait_ms: float = 10.0, seed: int = 0,
                 structured: bool = True, prefix_cache_mb: int = DEFAULT_BUDGET_MB, adapter: str | None = None):
        self.settings = {"model": model, "revision": revision, "dtype": dtype, "device": device,
                         "max_new_tokens": max_new_tokens, "max_batch_size": max_batch_size,
                         "max_wait_ms": max_wait_ms, "seed": seed, "structured": structured,
                         "prefix_cache_mb": prefix_cache_mb, "adapter": adapter}
        self.source = locate_model(model, revision)
        self.adapter = locate_adapter(adapter) if adapter is not None else None
        self.model, self.processor, self.device, self.family = load_model(self.source, dtype=dtype, device=device,
                                                                          adapter=self.adapter)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation appends on the right
        generation = self.model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.grammars = GrammarCompiler(self.tokenizer, vocab_size=vocab_size, stop_token_ids=self.eos_token_ids)
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.structured = structured
        self._tokenizer_lock = threading.Lock()  # see the module docstring: padding is tokenizer state
        self._candidates: dict[label_scoring.ClassifierField, label_scoring.Candidates] = {}  # worker only
        reuse = prefix_cache_mb > 0 and self.family.prefix_reuse
        self._special_tokens = special_token_strings(self.tokenizer) if reuse else ()
        self._planner = (PrefixPlanner(self.model, self.processor, self.family, PrefixCache(prefix_cache_mb * 2**20),
                                       device=self.device, tokenizer_lock=self._tokenizer_lock) if reuse else None)
        if self.family is GENERIC:
            check_generic_scoring(self)
        self._batcher = MicroBatcher(self._run_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                     name=f"vlmopt-engine-{self.source.name}")
        self.stats = EngineStats(batches=self._batcher.stats)

    # --- what DSPy reads -------------------------------------------------------------------
    @property
    def supports_response_schema(self) -> bool:
        """DSPy's JSONAdapter sends the output schema as response_format only when this is True."""
        return self.structured

    @property
    def supported_params(self) -> set[str]:
        params = {"temperature", "max_tokens", "top_p", "top_k", "seed", "stop", "logprobs", "top_logprobs"}
        return params | {"response_format"} if self.structured else params

    @property
    def model_string(self) -> str:
        """The DSPy model name: exact weights (a LoRA adapter's too), dtype and device: DSPy's cache keys on it."""
        dtype = str(self.model.dtype).removeprefix("torch.")
        lora = f"+lora@{self.adapter.fingerprint}" if self.adapter is not None else ""
        return f"transformers/{self.source.name}@{self.source.fingerprint}{lora}:{dtype}:{self.device.type}"

    def complete(self, request: Request) -> Response:
        validate_request(request)
        self.stats.add(requests=1)
        result = self._batcher.submit(self._prepare(request))
        self.stats.add(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        usage = Usage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens,
                      total_tokens=result.prompt_tokens + result.completion_tokens)
        return Response(id=None, model=self.model_string, message=Message.assistant(list(result.parts)),
                        finish_reason=result.finish_reason, usage=usage, logprobs=result.logprobs)

    def stream(self, request: Request):
        """One event stream per answer (the batch decides when tokens exist, not the caller)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Stop the batch worker after the queued requests finish (every view shares it)."""
        self._batcher.close()

    def with_structured(self, structured: bool) -> TransformersEngine:
        """This engine with structured generation on or off: the same weights, worker and stats.

        ``structured`` only decides what DSPy is told (``supports_response_schema``); the model and
        the batch worker are shared, so an outer search that tries both settings loads the model once.
        Closing either engine closes both.
        """
        if structured == self.structured:
            return self
        view = copy.copy(self)
        view.structured = structured
        view.settings = {**self.settings, "structured": structured}
        return view

    def dump_state(self) -> dict:
        """JSON settings that rebuild this engine (``dspy.LM.save`` stores them)."""
        return dict(self.settings)

    @classmethod
    def load_state(cls, state: dict) -> TransformersEngine:
        return cls(**state)

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length (prompt + answer), where its config states one."""
        config = getattr(self.model.config, "text_config", None) or self.model.config
        return getattr(config, "max_position_embeddings", None)

    def render_prompt(self, chat: ChatInput) -> str:
        """The prompt text this engine runs for ``chat``: the model's template with its family's switches."""
        return render_chat_template(self.processor, chat, **dict(self.family.template_kwargs))

    def count_prompt_tokens(self, request: Request) -> int:
        """Tokens the prompt of ``request`` takes (image tokens included), without running the model."""
        job = self._prepare(request)
        with self._tokenizer_lock:
            return int(encode_prompts(self.processor, [job.prompt], [job.images])["input_ids"].shape[-1])

    # --- caller thread: everything that can fail for this request alone -----------------------
    def _prepare(self, request: Request) -> _Job:
        config = request.config
        refused = [name for name in _REFUSED_CONFIG if getattr(config, name) not in (None, {})]
        if refused:
            raise UnsupportedFeatureError(f"the transformers engine cannot honour {refused}", feature=refused[0])
        try:
            chat = chat_input_from_request(request)
            prompt = self.render_prompt(chat)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        job = _Job(prompt=prompt, images=chat.images, max_new_tokens=config.max_tokens or self.max_new_tokens,
                   temperature=config.temperature or 0.0, top_p=config.top_p, top_k=config.top_k,
                   seed=self.seed if config.seed is None else config.seed, stop=config.stop, logprobs=config.logprobs)
        if self.prefixes is not None:
            with self._tokenizer_lock:
                job.split = split_prompt(self.processor, chat, prompt, self._special_tokens,
                                         **dict(self.family.template_kwargs))
        if config.response_format is not None:
            job.classifier = label_scoring.classifier_field(config.response_format)
            if job.classifier is None:
                try:
                    job.grammar = self.grammars.compile(config.response_format)
                except (ValueError, RuntimeError) as exc:
                    raise InvalidRequestError(f"response_format cannot be compiled to a grammar: {exc}") from exc
        if config.probabilities == "required" and job.classifier is None:
            raise UnsupportedFeatureError("probabilities are measured only for a single-enum schema",
                                          feature="config.probabilities")
        return job

    # --- batch worker ---------------------------------------------------------------------
    def _run_batch(self, jobs: list[_Job]) -> list[_Result]:
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.group(), []).append(index)
        results: list[_Result | None] = [None] * len(jobs)
        for key, indices in groups.items():
            run = self._score if key[0] == "score" else self._generate
            for index, result in zip(indices, run([jobs[i] for i in indices]), strict=True):
                results[index] = result
        return results

    def _encode(self, prompts: list[str], images: list[list[Image.Image]]):
        with self._tokenizer_lock:
            batch = encode_prompts(self.processor, prompts, images, padding=True)
        return batch.to(self.device, dtype=self.model.dtype)  # casts only the floating tensors (pixels)

    @property
    def prefixes(self) -> PrefixCache | None:
        """The shared-prefix cache (None: reuse off, or a family that never splits a prompt)."""
        return self._planner.cache if self._planner is not None else None

    @prefixes.setter
    def prefixes(self, cache: PrefixCache | None) -> None:
        """Swap the cache (a test of the budget); None turns reuse off."""
        if cache is None:
            self._planner = None
        elif self._planner is not None:
            self._planner.cache = cache

    def _plan(self, jobs: list[_Job]):
        """(indices run whole, runs on cached prefixes); see ``prefix_runs.PrefixPlanner``."""
        if self._planner is None:
            return list(range(len(jobs))), []
        return self._planner.plan(jobs, lambda indices: self._score_chunks(jobs, indices))

    @torch.inference_mode()
    def _generate(self, jobs: list[_Job]) -> list[_Result]:
        results: list[_Result | None] = [None] * len(jobs)
        whole, runs = self._plan(jobs)
        if whole:
            batch = self._encode([jobs[i].prompt for i in whole], [jobs[i].images for i in whole])
            self._place(results, whole, self._generate_from([jobs[i] for i in whole], dict(batch)))
        for entry, indices, suffix in runs:
            prefilled = prefill_on_prefix(self.model, self.family, entry, suffix, dtype=self.model.dtype,
                                          keep_last=True)
            inputs = {"input_ids": prefilled.input_ids, "cache": prefilled.cache,
                      "attention_mask": torch.ones_like(prefilled.input_ids)}
            self._place(results, indices, self._generate_from([jobs[i] for i in indices], inputs))
        return results

    @staticmethod
    def _place(results: list, indices: list[int], values: list) -> None:
        for index, value in zip(indices, values, strict=True):
            results[index] = value

    def _generate_from(self, jobs: list[_Job], inputs: dict) -> list[_Result]:
        """``generate`` for jobs of one group from their model inputs (a processor batch, or ids on a cache)."""
        first = jobs[0]
        grammar = (GrammarLogitsProcessor([job.grammar for job in jobs], self.grammars.vocab_size)
                   if any(job.grammar is not None for job in jobs) else None)
        config = copy.deepcopy(self.model.generation_config)
        config.update(max_new_tokens=first.max_new_tokens, do_sample=False, pad_token_id=self.pad_token_id,
                      eos_token_id=self.eos_token_ids, return_dict_in_generate=True,
                      output_scores=first.logprobs is not None)
        sampler = None
        if first.temperature > 0:  # the sampler draws (last, after the grammar); generate keeps its pick
            config.update(temperature=first.temperature, top_p=first.top_p or 1.0, top_k=first.top_k)
            sampler = RowSampler(sampling_warpers(config, self.device), [job.seed for job in jobs],
                                 keep_scores=first.logprobs is not None)
        config.update(temperature=None, top_p=None, top_k=None)
        processors = [processor for processor in (grammar, sampler) if processor is not None]
        extra = {"stop_strings": list(first.stop), "tokenizer": self.tokenizer} if first.stop else {}
        output = self.model.generate(**inputs, generation_config=config,
                                     logits_processor=LogitsProcessorList(processors) if processors else None, **extra)
        prompt_width = inputs["input_ids"].shape[1]
        self.stats.add(generate_calls=1, decode_steps=int(output.sequences.shape[1] - prompt_width))
        scores = sampler.scores if sampler is not None else output.scores  # what each token was drawn from
        return [self._row_result(job, row, scores, grammar, prompt_tokens=int(inputs["attention_mask"][row].sum()),
                                 new_tokens=output.sequences[row, prompt_width:].tolist())
                for row, job in enumerate(jobs)]

    def _row_result(self, job: _Job, row: int, scores, grammar: GrammarLogitsProcessor | None, *,
                    prompt_tokens: int, new_tokens: list[int]) -> _Result:
        """One row's text up to its end token (or stop string), with usage and finish reason."""
        ended = next((i for i, token in enumerate(new_tokens) if token in self.eos_token_ids), None)
        kept = new_tokens[:ended] if ended is not None else _strip_padding(new_tokens, self.pad_token_id)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        stopped = ended is not None or (grammar is not None and grammar.terminated(row))
        for stop in job.stop:
            if stop in text:
                text, stopped = text[:text.index(stop)], True
        logprobs = self._token_logprobs(scores, row, kept, job.logprobs) if job.logprobs is not None else None
        return _Result(parts=(TextPart(text),), prompt_tokens=prompt_tokens,
                       finish_reason="stop" if stopped or len(kept) < job.max_new_tokens else "length",
                       completion_tokens=len(kept) + (ended is not None), logprobs=logprobs)

    def _token_logprobs(self, scores, row: int, tokens: list[int], top: int) -> tuple[TokenLogprob, ...]:
        """Log-probs under the distribution each token was drawn from (after the grammar mask)."""
        entries = []
        for step, token in enumerate(tokens):
            logprobs = scores[step][row].float().log_softmax(-1)
            alternatives = ()
            if top:
                values, ids = logprobs.topk(top)
                alternatives = tuple(TopLogprob(token=self._token_text(int(i)), logprob=float(v))
                                     for v, i in zip(values, ids, strict=True))
            entries.append(TokenLogprob(token=self._token_text(token), logprob=float(logprobs[token]),
                                        token_id=token, top=alternatives))
        return tuple(entries)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token]) or self.tokenizer.convert_ids_to_tokens(token)

    @torch.inference_mode()
    def _score(self, jobs: list[_Job]) -> list[_Result]:
        results: list[_Result | None] = [None] * len(jobs)
        whole, runs = self._plan(jobs)
        for chunk in self._score_chunks(jobs, whole):
            batch = self._encode([jobs[i].prompt for i in chunk], [jobs[i].images for i in chunk])
            candidates = [self._candidate_tokens(jobs[i].classifier) for i in chunk]
            scores = label_scoring.score_candidates(self.model, scoring_inputs(self.family, batch), candidates,
                                                    pad_token_id=self.pad_token_id, family=self.family)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            self._place(results, chunk, self._score_results([jobs[i] for i in chunk], lengths, candidates, scores))
        for entry, indices, suffix in runs:
            prefilled = prefill_on_prefix(self.model, self.family, entry, suffix, dtype=self.model.dtype)
            candidates = [self._candidate_tokens(jobs[i].classifier) for i in indices]
            scores = label_scoring.score_on_cache(self.model, prefilled.last_logits, prefilled.cache,
                                                  torch.ones_like(prefilled.input_ids), candidates,
                                                  pad_token_id=self.pad_token_id, family=self.family,
                                                  rope_deltas=prefilled.rope_deltas)
            lengths = [prefilled.input_ids.shape[1]] * len(indices)
            self._place(results, indices, self._score_results([jobs[i] for i in indices], lengths, candidates, scores))
        return results

    @staticmethod
    def _score_chunks(jobs: list[_Job], indices: list[int]) -> list[list[int]]:
        """``indices`` in passes of at most SCORE_ROWS_PER_PASS rows: (request, label) rows when scoring (a
        request's labels stay together), one row per generating request."""
        chunks, chunk, rows = [], [], 0
        for index in indices:
            labels = len(jobs[index].classifier.labels) if jobs[index].classifier is not None else 1
            if chunk and rows + labels > SCORE_ROWS_PER_PASS:
                chunks.append(chunk)
                chunk, rows = [], 0
            chunk.append(index)
            rows += labels
        return [*chunks, chunk] if chunk else chunks

    def _score_results(self, jobs: list[_Job], prompt_lengths: list[int], candidates: list,
                       scores: list) -> list[_Result]:
        """One scoring pass's answers: the chosen label, its distribution, usage."""
        self.stats.add(score_calls=1)
        results = []
        for job, prompt_length, cands, job_scores in zip(jobs, prompt_lengths, candidates, scores, strict=True):
            field = job.classifier
            probabilities = label_scoring.distribution(field, job_scores)
            label = _choose(field.labels, job_scores, job.temperature, job.seed)
            chosen = cands.tokens[field.labels.index(label)]
            logprobs = label_scoring.decision_logprobs(label, probabilities) if job.logprobs is not None else None
            results.append(_Result(parts=(label_scoring.answer_part(field, label, probabilities),),
                                   finish_reason="stop", prompt_tokens=int(prompt_length),
                                   completion_tokens=len(chosen), logprobs=logprobs))
        return results

    def _candidate_tokens(self, classifier: label_scoring.ClassifierField) -> label_scoring.Candidates:
        """The labels' answer tokens, tokenized once per field (the worker is this memo's only user)."""
        if classifier not in self._candidates:
            with self._tokenizer_lock:
                self._candidates[classifier] = label_scoring.candidate_tokens(self.tokenizer, classifier)
        return self._candidates[classifier]


def _strip_padding(tokens: list[int], pad: int) -> list[int]:
    end = len(tokens)
    while end and tokens[end - 1] == pad:
        end -= 1
    return tokens[:end]


def _choose(labels: tuple[str, ...], scores: list[float], temperature: float, seed: int) -> str:
    """Greedy: the most likely label (first on ties). Sampling: seeded draw from softmax(scores / T)."""
    if temperature <= 0:
        return labels[max(range(len(labels)), key=lambda i: (scores[i], -i))]
    weights = torch.softmax(torch.tensor(scores, dtype=torch.float64) / temperature, dim=0)
    generator = torch.Generator().manual_seed(seed)
    return labels[int(torch.multinomial(weights, 1, generator=generator))]


def create_lm(model: str, *, revision: str | None = None, dtype: str = "auto", device: str = "auto",
              max_new_tokens: int = 256, max_batch_size: int = 8, max_wait_ms: float = 10.0, seed: int = 0,
              structured: bool = True, prefix_cache_mb: int = DEFAULT_BUDGET_MB, adapter: str | None = None,
              cache: bool = True, **lm_kwargs) -> dspy.LM:
    """A ``dspy.LM`` served in-process by a :class:`TransformersEngine` (greedy, log-probs on).

    ``structured=False`` hides the schema from DSPy (free-text answers, parsed by the adapter);
    ``prefix_cache_mb=0`` turns shared-prefix reuse off (the same answers, each prompt run whole);
    ``adapter``: a LoRA adapter directory merged into the weights (``vlmopt finetune``'s).
    Generation settings go into the LM's request config, so DSPy's cache keys on them too.
    """
    engine = TransformersEngine(model, revision=revision, dtype=dtype, device=device, max_new_tokens=max_new_tokens,
                                max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, seed=seed,
                                structured=structured, prefix_cache_mb=prefix_cache_mb, adapter=adapter)
    settings = {"temperature": 0.0, "max_tokens": max_new_tokens, "seed": seed, "logprobs": True, **lm_kwargs}
    return dspy.LM(engine.model_string, engine=engine, cache=cache, **settings)
