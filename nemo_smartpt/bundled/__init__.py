"""The bundled corpus: synthetic data the project generates (no downloads) for the demo, the study and tests."""
