"""A small Flask-Security-Too intranet that mounts intranet-licenses (see README.md)."""
