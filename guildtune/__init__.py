"""guildtune: the composition root — settings and the command line. No business logic here."""
__version__ = "0.1.0"
