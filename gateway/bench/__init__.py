"""`gateway bench`: load runs against the gateway, the engine alone, or another OpenAI-compatible server."""
