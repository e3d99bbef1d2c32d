"""The evaluation's error type (kept free of lm-eval and megatron imports, so callers can import it cheaply)."""


class EvaluationError(ValueError):
    """A setting of the evaluation that cannot work (named in the message)."""
