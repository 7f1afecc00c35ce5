"""The image model: what an image is, how it is named, and how it is written.

The manifest's types and checks (``entries``), its two formats (``manifest``: format 1 and
the one entry point to encode and decode; ``dirmanifest``: format 2, a section per
directory), tags (``refs``), hint lists (``hints``), opening an image by ref (``images``),
the ordered fetch window (``pipeline``) and the one writer of images (``writer``, fenced by
``lifecycle``). Imports the storage core and the lifecycle, never the collector.
"""
