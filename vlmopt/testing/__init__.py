"""What only tests and benches use: tiny random VLMs of every family, synthetic images, test doubles.

* ``tiny_vlm`` — random-weight VLMs of each registered family, saved and loaded through
  ``from_pretrained`` like real checkpoints (``python -m vlmopt.testing.tiny_vlm``);
* ``images`` — seeded synthetic image sets in every form the loader reads, and awkward images;
* ``scripted_engine`` — a named test double at the model edge (a DSPy engine answering by script);
* ``bench_vlm`` — a bench-size random Idefics3 whose forward pass, not Python, dominates timings.

Nothing a user runs imports this package (``tests/test_layers.py`` checks it); what ships for
users — the offline demo and its trained micro-VLM — is :mod:`vlmopt.demo`.
"""
