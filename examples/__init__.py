"""Example hosts that mount intranet-licenses: Flask-Security-Too and Flask-AppBuilder apps."""
