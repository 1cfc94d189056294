"""The label token trie: one next-token distribution per answer prefix scores every label.

A label's score (``label_scoring``'s candidate-sequence likelihood) is the sum, over its answer
tokens after the prefix all answers share, of log p(token | everything before it). Labels that
start alike share their first terms, so the candidates are a trie: every term is an edge, and the
next-token distribution at an internal node (its answer prefix as the context) gives every edge
below that node. Scoring L labels takes one model step per internal node — a node with a single
child included, since its edge is a probability over the whole vocabulary, not 1 — and each step
needs only the log-probs of the node's children (vLLM returns them for named token ids:
``logprob_token_ids``, see ``vllm_probabilities``).

No torch, no server: the tree and the sums, kept apart so they are checked without either.

Example (token ids after the shared prefix; labels "cat" and "caterpillar" share token 7)::

    trie = LabelTrie.build([(7, 9), (7, 3, 9)])
    trie.nodes                      # {(): (7,), (7,): (9, 3), (7, 3): (9,)}
    trie.scores({(): {7: -0.1}, (7,): {9: -1.0, 3: -0.5}, (7, 3): {9: -0.2}})   # [-1.1, -0.8]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

Path = tuple[int, ...]
"""Token ids of one label's answer after the prefix all answers share (a trie node is such a prefix)."""


@dataclass(frozen=True)
class LabelTrie:
    """Each label's path, and every internal node with its child tokens (first-seen order)."""

    paths: tuple[Path, ...]
    nodes: Mapping[Path, tuple[int, ...]]

    @classmethod
    def build(cls, paths: Sequence[Sequence[int]]) -> LabelTrie:
        children: dict[Path, list[int]] = {}
        for path in paths:
            for depth, token in enumerate(path):
                below = children.setdefault(tuple(path[:depth]), [])
                if token not in below:
                    below.append(token)
        return cls(tuple(tuple(path) for path in paths), {node: tuple(below) for node, below in children.items()})

    def steps(self, max_children: int) -> Iterator[tuple[Path, tuple[int, ...]]]:
        """(node, child tokens) for every model step, a node's children split into ``max_children`` at most."""
        for node, below in self.nodes.items():
            for start in range(0, len(below), max_children):
                yield node, below[start:start + max_children]

    def scores(self, edges: Mapping[Path, Mapping[int, float]]) -> list[float]:
        """Each path's summed edge log-probs; ``edges[node][child]`` is log p(child | node)."""
        return [sum(edges[path[:depth]][token] for depth, token in enumerate(path)) for path in self.paths]
