"""Front-loaded reasoning data: prepare, select and split reasoning examples for pretraining (arXiv 2510.03264).

Mental model: one command, ``smartpt prepare``, turns raw reasoning data into what the rest of the stack consumes.

1. **Read** (:mod:`~nemo_smartpt.reasoning.schemas`): jsonl/parquet records in the public layouts (OpenThoughts,
   Nemotron chat, plain ``text``, or any layout through a field mapping) become a ``ReasoningExample(question,
   thought, answer, domain, meta)`` or a ``TextDoc``.
2. **Select** (:mod:`~nemo_smartpt.reasoning.select`): quality filters and score, domain labels (math, code,
   science, general), a token/example budget, exact de-duplication by normalised question, 13-gram
   decontamination; the paper's SHQ / LDQ / LMQ selections are presets in ``conf/reasoning/``.
3. **Render** (:mod:`~nemo_smartpt.reasoning.render`): one template, one thought marker (``<think>``).
4. **Split** (:mod:`~nemo_smartpt.reasoning.split`): the reasoning budget is shared between pretraining and SFT by a
   hash of the normalised question (zero overlap, deterministic); SFT examples are written as chat jsonl.
5. **Tokenize and write** (:mod:`~nemo_smartpt.reasoning.worker`, :mod:`~nemo_smartpt.reasoning.prepare`):
   workers tokenize (:mod:`~nemo_smartpt.reasoning.tokenizer`: a local Hugging Face tokenizer or the built-in byte
   tokenizer), the parent writes a Megatron ``.bin``/``.idx`` pair with megatron-core's ``IndexedDatasetBuilder``
   (EOD after each document), plus a stats file and a log of every skipped record; outputs appear atomically.

The resulting prefix enters the blend planner's catalog (category ``reasoning``) like any other source. Importing
this package imports neither megatron-core nor torch.
"""
