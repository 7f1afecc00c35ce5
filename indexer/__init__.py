"""Turn sources (directories, tars, OCI images, files) into chunks and a manifest."""
