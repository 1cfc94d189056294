"""``python -m vlmopt.testing.tiny_vlm --arch NAME --out DIR``."""

from vlmopt.testing.tiny_vlm import main

main()
