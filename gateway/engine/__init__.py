"""The model side: the engine contract, the local engine, an upstream server as engine, and the demo model."""
