"""Typed classification programs: signature factory, ``Classify`` module, prompt adapters."""

from vlmopt.programs.adapter import CompactAdapter, create_adapter
from vlmopt.programs.classify import Classify, create_program
from vlmopt.programs.signatures import make_signature

__all__ = ["Classify", "CompactAdapter", "create_adapter", "create_program", "make_signature"]
