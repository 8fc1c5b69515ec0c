"""A small Flask-AppBuilder intranet that mounts intranet-licenses (see README.md)."""
