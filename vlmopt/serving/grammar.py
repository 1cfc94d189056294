"""Grammar-constrained decoding for ``response_format`` JSON schemas, with xgrammar.

Two choices matter for small VLMs:

* **Whitespace is pinned.** The grammar is built with ``any_whitespace=False`` and compact
  separators ``(",", ":")`` — exactly ``json.dumps(..., separators=(",", ":"))``, the form the
  compact adapter shows in demos. A permissive grammar lets a weak model emit newlines forever.
* **Arrays of labels are bounded.** A ``list[Literal[...]]`` schema has no ``maxItems``; a weak
  model then repeats a label until the token budget ends and the JSON never closes. A list longer
  than the label set must repeat a label, so ``maxItems`` is set to the number of labels when the
  schema leaves it open.

One matcher per batch row: rows of a batch may carry different schemas, or none (free text).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor

SEPARATORS = (",", ":")
"""Item and key separators of every constrained answer (no optional whitespace)."""


def bound_label_arrays(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where each open array of enum/const items gets ``maxItems = #labels``."""
    schema = copy.deepcopy(schema)
    defs = schema.get("$defs", {})

    def labels_of(node: Any) -> int | None:
        if isinstance(node, dict) and "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        if not isinstance(node, dict):
            return None
        if isinstance(node.get("enum"), list):
            return len(node["enum"])
        branches = node.get("anyOf")
        if isinstance(branches, list) and branches and all(isinstance(b, dict) and "const" in b for b in branches):
            return len(branches)
        return None

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "array" and "maxItems" not in node:
                count = labels_of(node.get("items"))
                if count is not None:
                    node["maxItems"] = count
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


class GrammarCompiler:
    """Compiles response formats to xgrammar grammars for one tokenizer (cached per schema)."""

    def __init__(self, tokenizer, *, vocab_size: int, stop_token_ids: Sequence[int]):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=list(stop_token_ids))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)  # caches compiled grammars by schema text
        self._lock = threading.Lock()

    def compile(self, response_format: dict[str, Any]) -> xgr.CompiledGrammar:
        """``{"type": "json_schema", "schema": ...}`` or ``{"type": "json_object"}`` -> grammar."""
        kind = response_format.get("type")
        if kind == "json_schema":
            schema = bound_label_arrays(response_format["schema"])
        elif kind == "json_object":
            schema = {"type": "object"}
        else:
            raise ValueError(f"unsupported response_format type {kind!r} (json_schema or json_object)")
        with self._lock:
            return self._compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=SEPARATORS, strict_mode=True,
            )


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to the tokens its grammar allows; ``None`` rows decode freely.

    Build a new one per ``generate`` call (matchers hold the decoding state). A row whose
    grammar is complete may only emit a stop token, so constrained rows end with valid JSON.
    """

    def __init__(self, grammars: Sequence[xgr.CompiledGrammar | None], vocab_size: int):
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(len(self.matchers), vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:
            for row, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_terminated():
                    token = int(input_ids[row, -1])
                    if not matcher.accept_token(token):
                        raise RuntimeError(f"row {row}: token {token} violates its grammar")
        self._started = True
        active = [row for row, m in enumerate(self.matchers) if m is not None and not m.is_terminated()]
        if not active:
            return scores
        for row in active:
            self.matchers[row].fill_next_token_bitmask(self.bitmask, row)
        on_cpu = scores.device.type != "cuda"
        masked = scores.to("cpu") if on_cpu else scores
        xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), vocab_size=self.vocab_size,
                                        indices=active)
        return masked.to(scores.device) if on_cpu else masked

    def terminated(self, row: int) -> bool:
        """True when row's grammar reached its end (its JSON is complete)."""
        matcher = self.matchers[row]
        return matcher is not None and matcher.is_terminated()
