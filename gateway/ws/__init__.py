"""The WebSocket front end: the endpoint, connections, live sessions, the journal and the frames."""
