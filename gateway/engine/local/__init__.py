"""The local engine: loading, the model families, the generation thread, batching, KV reuse and the caches."""
