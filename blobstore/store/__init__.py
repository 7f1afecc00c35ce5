"""The storage core: blobs by id and objects by name, and the tiers a node reads through.

Blob ids (``digest``), the stored form of a blob (``codec``), the object-store interface
(``base``) and its backends (``local``, ``s3`` with its lean client ``s3lite``, ``memory``
for tests), opening one by URL (``url``), retries (``retrying``), blobs over an object store
(``blobs``), the stored-blob protocol and its wrappers (``tiers``), the node's disk cache
(``diskcache``, with ``rangelocks`` and ``tempfiles``), a bytes-bounded LRU (``lru``), and
the cache peers' client tier (``peers`` over ``peerclient``, ``peerhealth`` and
``peerhedge``). Imports only ``blobstore.errors`` and ``blobstore.units`` above it: it knows
nothing of images, leases or the collector.
"""
