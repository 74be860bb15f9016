"""The OpenAI-compatible HTTP front end: routes, the request schema and the SSE stream."""
