"""What writers and the garbage collector agree on, so that deleting is safe.

Leases (``leases``: what a push, mount or restore in progress holds), the collector's
record and lock as documents in the store (``gcrecord``), and the writer's fence
(``fence``: read the record and lock just before a tag is written, wait out a collector
that may still delete). Below the image model, since writing an image needs them; the
collector itself (``ops.gc``) sits above both. Imports the storage core only.
"""
