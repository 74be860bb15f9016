"""Tool calling: each model family's call syntax (parse, force by grammar), the stream filter, the turn's plan."""
