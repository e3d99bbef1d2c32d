"""A plain Megatron-Bridge ``DatasetProvider`` over weighted indexed-dataset prefixes.

It builds megatron-core ``GPTDataset``s (blended by ``BlendedMegatronDatasetBuilder`` when there are several
prefixes) with a train/valid/test split: the plain Megatron path that the phased dataset is compared against, and what
the smoke run trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron.bridge.data.base import DatasetProvider


@dataclass(kw_only=True)
class IndexedGPTProvider(DatasetProvider):
    """Train/valid/test ``GPTDataset``s over ``prefixes`` (optionally weighted), split by ``split``."""

    prefixes: list[str] = field(default_factory=list)
    """Megatron indexed-dataset prefixes (``<prefix>.bin`` / ``<prefix>.idx``)."""
    weights: list[float] | None = None
    """Blend weights, one per prefix (None: a single prefix, or proportional to size)."""
    seq_length: int = 64
    """Tokens per sample."""
    split: str = "90,5,5"
    """Train/valid/test split of each prefix's documents, as megatron-core reads it."""
    seed: int = 1234
    """Shuffle seed of megatron-core's sample indices."""
    cache_dir: str | None = None
    """Where megatron-core caches its index files (None: next to the data)."""
    dataloader_type: str | None = "single"
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False

    def build_datasets(self, context):
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        if not self.prefixes:
            raise ValueError("IndexedGPTProvider.prefixes is empty: name at least one indexed-dataset prefix")
        config = GPTDatasetConfig(
            random_seed=self.seed,
            sequence_length=self.seq_length,
            blend=(list(self.prefixes), None if self.weights is None else list(self.weights)),
            split=self.split,
            tokenizer=context.tokenizer,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            path_to_cache=self.cache_dir,
            mid_level_dataset_surplus=0.005,
        )
        sizes = [context.train_samples, context.valid_samples, context.test_samples]
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
