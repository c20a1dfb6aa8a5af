"""Database access: models, the session factory and the queries the bot runs. Nothing else touches SQL."""

from bot.db.models import Base, Guild, Image, Job, JobState, Usage, User
from bot.db.session import Database

__all__ = ["Base", "Database", "Guild", "Image", "Job", "JobState", "Usage", "User"]
