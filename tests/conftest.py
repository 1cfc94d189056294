"""Shared pytest fixtures; topic fixtures live in tests/fixtures_*.py and are registered here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = ["fixtures_models", "fixtures_vllm", "fixtures_data", "fixtures_runs", "fixtures_review",
                             "fixtures_labelstudio"]
