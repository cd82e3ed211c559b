"""The change feed: `/sync` (a gap-free delta with deletions) and `/events` (pushed hints)."""
