"""Small shared helpers: atomic file writes, cache paths, version stamps, seeding."""
