"""Property-based tests (hypothesis): serialize → parse, fragment → reassemble,
compress → decompress and chunking invariance, for every wire format geventws reads
and writes."""
