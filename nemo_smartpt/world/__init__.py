"""The world: a small controlled universe the project generates from a seed, in which each lever can show on a CPU.

Mental model (after Physics of Language Models 3.1, arXiv 2309.14316, synthetic biographies):

- **Knowledge** (:mod:`.facts`): people, each with four attributes (birth city, birth year, employer, field). The
  same facts are written at the five crawl quality tiers — dense and clean in ``high``, buried in chatter in
  ``medium``, rare among noise in ``low`` — and in a wiki-like source; math- and code-like sources add arithmetic.
  By tokens, the natural distribution is dominated by low-quality crawl, as real crawl is.
- **Inline thoughts** (:func:`.facts.think_before_a_token`): half the crawl and wiki documents think once before a
  token, restating the two pieces before it and ending with the token the text then says. It is the world's text
  in which a thought raises the next token's probability, which RLP's reward needs before its policy can learn.
- **Reasoning** (:mod:`.problems`): multi-step arithmetic word problems with worked thoughts, written as jsonl in
  the OpenThoughts layout and prepared by ``smartpt prepare`` like any public reasoning set.
- **Held-out sets** (:mod:`.heldout`): knowledge questions in phrasings no training document uses (facts seen,
  phrasing unseen) scored over *all* values of the attribute; reasoning problems whose number tuple never occurs in
  training. Contamination is checked per instance (problem tuple, phrasing skeleton), not by 13-gram overlap: in a
  templated world every held-out problem shares its 13-grams with training, while what matters is the instance.
- **Tokenizer** (:mod:`.tokenizer`): a small byte-level BPE trained on the world's training text with Hugging Face
  ``tokenizers``, saved as a directory Megatron-Bridge's ``HuggingFaceTokenizer`` loads.

:func:`nemo_smartpt.world.build.ensure_world` writes all of it (raw jsonl, tokenizer, Megatron indexed datasets,
``catalog.yaml``, lm-eval task YAMLs) into one directory, deterministically for a :class:`.spec.WorldSpec`.
"""
