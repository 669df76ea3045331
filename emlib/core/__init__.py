"""Primitives: the cache, file and environment helpers, models, data, EM thresholds and statistics."""
