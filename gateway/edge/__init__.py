"""The edge: what every request meets first (hosts, the door, keys and tokens, rate limits, quotas)."""
