"""Storage on SQLite or PostgreSQL: schema, migrations, typed records and per-guild repositories.

The only channel between the bot and the trainer. Knows nothing of Discord or torch.
"""
from storage.db import Database

__all__ = ["Database"]
