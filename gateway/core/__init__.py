"""The core: one turn service, sessions, sampling, structured output, images and the session store; it knows no wire."""
