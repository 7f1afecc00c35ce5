"""Turn sources (directories, tars, OCI images, files) into chunks and a manifest."""

# What ``thaw push --format`` accepts; here, so that the command line names them without
# importing the readers of every format (``sources.py``).
FORMATS = ("auto", "dir", "tar", "oci", "docker-archive", "file")
