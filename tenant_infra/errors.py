"""Errors a user can act on: shown as one line, never as a traceback."""


class InvalidInput(ValueError):
    """Input refused before anything is created. The message names the rule broken."""


class BackendUnavailable(RuntimeError):
    """A platform service (PostgreSQL, RabbitMQ, Vault, MongoDB) could not be reached."""
