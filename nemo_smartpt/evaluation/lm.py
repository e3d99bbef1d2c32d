"""``SmartptLM``: the lm-evaluation-harness model ``smartpt`` over a Megatron model (live or from a checkpoint).

Use it from lm-eval's Python API (``simple_evaluate(model="smartpt", model_args="run_dir=runs/x")`` after
``import nemo_smartpt.evaluation.lm``), through ``smartpt eval``, or wrap a live model at the end of training
(``SmartptLM(model=..., tokenizer=...)``). Tokenisation is the tokenizer the data was prepared with (the built-in byte
tokenizer or a local Hugging Face directory), so the model sees at evaluation exactly the ids it was trained on.

Tensor parallelism: every TP rank runs the same requests (lm-eval sees one process: ``rank`` 0, ``world_size`` 1) and
the scoring functions combine the vocabulary shards (:mod:`.scoring`). Pipeline parallelism is not supported.
"""

from __future__ import annotations

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from nemo_smartpt.evaluation.errors import EvaluationError
from nemo_smartpt.evaluation.scoring import continuation_scores, greedy_generate

DEFAULT_MAX_GEN_TOKS = 256


@register_model("smartpt")
class SmartptLM(TemplateLM):
    """lm-eval ``LM`` over a Megatron ``GPTModel``.

    Args:
        model: a live Megatron model (module or list of one module); or None with ``run_dir``.
        tokenizer: the run's tokenizer (``nemo_smartpt.reasoning.tokenizer``); None with ``run_dir``.
        run_dir: a ``smartpt train`` run directory to load (latest checkpoint) when ``model`` is None.
        batch_size: requests per forward.
        max_length: context length; default the model's ``max_sequence_length``.
        max_gen_toks: generation cap when a task gives none.
    """

    def __init__(
        self,
        model=None,
        tokenizer=None,
        run_dir: str | None = None,
        batch_size: int | str = 16,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        tensor_parallel: int = 1,
        **_ignored,
    ) -> None:
        super().__init__()
        if model is None:
            if not run_dir:
                raise EvaluationError("model_args: give run_dir=<smartpt train run directory>")
            from nemo_smartpt.evaluation.checkpoint import load_run

            model, tokenizer = load_run(run_dir, tensor_parallel=int(tensor_parallel))
        if tokenizer is None:
            raise EvaluationError("SmartptLM needs the tokenizer the model was trained with")
        self.model = model[0] if isinstance(model, list) else model
        self.tokenizer_ = tokenizer
        if str(batch_size).startswith("auto"):
            raise EvaluationError("batch_size=auto is not supported by smartpt; give a number")
        self.batch_size = int(batch_size)
        from megatron.core.utils import get_attr_wrapped_model

        self._max_length = int(max_length or get_attr_wrapped_model(self.model, "max_sequence_length"))
        self.max_gen_toks = int(max_gen_toks)

    # lm-eval plumbing --------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer_.eod

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer_).__name__

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer_.encode_batch([string])[0]

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer_.decode(ids)

    def _eval_mode(self):
        was = self.model.training
        self.model.eval()
        return was

    # scoring -----------------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        was = self._eval_mode()
        try:
            # Longest first: the first batch is the largest, so an out-of-memory shows at once.
            collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
            results = []
            bar = tqdm(total=len(requests), disable=disable_tqdm, desc="smartpt loglikelihood")
            for chunk in collator.get_batched(n=self.batch_size):
                scores = continuation_scores(
                    self.model, [(r[1], r[2]) for r in chunk], self.max_length, self.eot_token_id
                )
                for request, score in zip(chunk, scores):
                    if request[0] is not None:
                        self.cache_hook.add_partial("loglikelihood", request[0], score)
                    results.append(score)
                bar.update(len(chunk))
            bar.close()
            return collator.get_original(results)
        finally:
            self.model.train(was)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, scores):
            totals[owner] += logp
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        was = self._eval_mode()
        try:
            collator = Collator(
                [req.args for req in requests],
                sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
                group_by="gen_kwargs",
                group_fn=lambda a: a[1],
            )
            results = []
            bar = tqdm(total=len(requests), disable=disable_tqdm, desc="smartpt generate_until")
            for chunk in collator.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                kwargs = dict(all_kwargs[0])
                if kwargs.pop("do_sample", False) or kwargs.pop("temperature", 0.0):
                    raise EvaluationError("smartpt generates greedily: set do_sample: false / temperature: 0")
                # EOD ends a row by id; its text is a stop string only where it has one (the byte tokenizer's has none).
                eos = self.tok_decode([self.eot_token_id]) or None
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
                texts = self._generate(list(contexts), until, max_new)
                for context, text in zip(contexts, texts):
                    self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
                    results.append(text)
                bar.update(len(chunk))
            bar.close()
            return collator.get_original(results)
        finally:
            self.model.train(was)

    def _generate(self, contexts: list[str], until: list[str], max_new: int) -> list[str]:
        eod = self.eot_token_id

        def stop(_row: int, ids: list[int]) -> bool:
            return ids[-1] == eod or any(s in self.tok_decode(ids) for s in until)

        encoded = [self.tok_encode(c) or [self.prefix_token_id] for c in contexts]
        generated = greedy_generate(self.model, encoded, max_new, self.max_length, eod, stop)
        texts = []
        for ids in generated:
            text = self.tok_decode(ids)
            for s in until:  # lm-eval's convention: the answer ends before the first stop sequence
                text = text.split(s)[0]
            texts.append(text)
        return texts
