"""How jobs reach engine workers. The JobManager sees only :class:`Transport`."""

from bot.transport.base import Transport

__all__ = ["Transport"]
