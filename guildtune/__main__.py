from guildtune.cli import app

app()
