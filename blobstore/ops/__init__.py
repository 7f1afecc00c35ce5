"""Operations and services over a store: the garbage collector (``gc``), ``thaw check``
(``check``), pruning a node's disk cache (``cachegc``), node reports in the store
(``nodereport``), the peer blob API (``peerserver``, aiohttp) and blobstore's subcommands
(``cli``). The top layer of blobstore: nothing in blobstore imports it.
"""
