"""The thaw command line. Nothing imports this package."""
