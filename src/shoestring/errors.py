"""Errors meant for the user: the CLI prints their message (what went wrong, what to do)."""


class UserError(RuntimeError):
    """A problem with the user's input or environment that the message explains."""


class DeviceUnavailableError(UserError):
    """The requested device does not exist here; shoestring never falls back silently."""
