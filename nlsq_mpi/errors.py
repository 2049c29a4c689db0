"""Typed errors. Each message names the argument and the offending value."""


class NlsqError(Exception):
    """Base class of every error nlsq_mpi raises on purpose."""


class InputError(NlsqError, ValueError):
    """A fit() argument is invalid; raised before any solver work, identically on every rank."""


class ModelError(NlsqError, RuntimeError):
    """The user's model failed when called, or returned the wrong shape."""
