"""The FUSE side: the image as a tree, the pyfuse3 adapter, the fetcher, the daemon."""
