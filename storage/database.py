"""The bot's database (SQLite through aiosqlite): connection, migrations, repository and row types.

Only the bot imports this module (the worker holds no database).
"""

from storage.db import connect, migrate
from storage.repository import Concept, Database, GuildSettings, Job, Kit, Output, User, utcnow

__all__ = ["Concept", "Database", "GuildSettings", "Job", "Kit", "Output", "User", "connect", "migrate", "utcnow"]
