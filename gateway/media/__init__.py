"""Media bytes a client sends: images (and videos) checked against limits and decoded, with no engine and no wire."""
