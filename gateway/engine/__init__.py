"""The model side: loading, the generation thread, sampling and the demo model."""
