"""Session stores behind one interface: memory (nothing outlives the process), SQLite, Redis."""
