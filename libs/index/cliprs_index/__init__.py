"""CLIP-RS index files: the shard format the indexer writes and the searchers read, and searching it.

- `cliprs_index.store`: writing and opening one shard (FAISS codes + float16 rows + window ids),
  and the shared IVF-PQ codec.
- `cliprs_index.shardset`: a version's shards as one searchable index (fan-out, exact re-rank,
  vectors by id, unbiased samples).
"""
