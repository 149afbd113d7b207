"""CLIP-RS indexer service: FAISS shards per area, versioned manifests, update announcements."""
