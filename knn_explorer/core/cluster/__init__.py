"""Builds and datastores that outgrow one machine, on a Ray cluster (the `cluster` extra).

Nothing here is imported unless a build asks for a cluster or a sharded datastore is opened; the
single-process path needs no Ray. A sharded datastore is the single-machine format cut into
contiguous entry ranges: the top folder keeps documents, texts, tokens, values and positions for
the whole datastore; `shards/NNN/` are each a complete datastore of their own (keys.f16, values,
positions, index), searched by one retrieval actor per shard.

- connection.py        joining a cluster ("local" starts one in this process)
- shard_plan.py        which batches of windows, and so which entries, each shard holds
- key_encoder.py       the model actor Ray Data runs over batches of windows
- cluster_builder.py   DatastoreBuilder with encoding and indexing on the cluster
- sharded_datastore.py retrieval actors, the fan-out and the merged top-k
"""
