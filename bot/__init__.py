"""The Discord face of guildtune. Light by design: it never imports torch or transformers."""
