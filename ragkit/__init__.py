"""ragkit: semantic search and cited answers over your documents, offline by default."""
