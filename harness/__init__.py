"""Everything that drives, checks, stores and reports blockfuzz runs."""
