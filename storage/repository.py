"""A small typed async repository over the KitBooth schema. No ORM: SQL in plain sight.

One ``Database`` owns one aiosqlite connection. An ``asyncio.Lock`` serialises transactions so that two
coroutines sharing the connection can never interleave statements inside each other's transaction.
The queries live by table: ``repo_people`` (users, concepts), ``repo_catalogue`` (kits, guild settings),
``repo_jobs`` (jobs, outputs), on the core in ``repo_core``; the row types are in ``storage.rows``.
"""

from __future__ import annotations

from storage.repo_catalogue import CatalogueQueries
from storage.repo_faces import FaceQueries
from storage.repo_jobs import JobQueries
from storage.repo_messages import MessageQueries
from storage.repo_people import PeopleQueries
from storage.repo_squads import SquadQueries
from storage.rows import (
    ACTIVE_JOB_STATUSES,
    Concept,
    ConceptKind,
    ConceptStatus,
    GuildSettings,
    Job,
    JobStatus,
    Kit,
    Message,
    Output,
    User,
    utcnow,
)


class Database(PeopleQueries, CatalogueQueries, JobQueries, FaceQueries, MessageQueries, SquadQueries):
    """The repository. Create with ``await Database.open(path)``; close with ``await db.close()``."""


__all__ = [
    "ACTIVE_JOB_STATUSES", "Concept", "ConceptKind", "ConceptStatus", "Database", "GuildSettings", "Job", "JobStatus",
    "Kit", "Message", "Output", "User", "utcnow",
]
