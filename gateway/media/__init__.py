"""Media once it exists: records and their stores, the status lifecycle, principals, events, URLs,
the orphan journal, and the media service (who may see, who may delete)."""
