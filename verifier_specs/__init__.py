"""Verifier backends: one module and one YAML profile per verifier.

``load_backend(name_or_profile)`` finds the profile ``verifier_specs/profiles/<name>.yaml``
(or a YAML path), whose ``backend:`` key names the module ``verifier_specs.<backend>``; the
module exposes ``BACKEND``, a :class:`~verifier_specs.base.Backend` subclass. Adding a
verifier therefore touches nothing outside this folder.
"""

from .base import STATUSES, Backend, Instance, Verdict, load_backend, profile_names

__all__ = ["STATUSES", "Backend", "Instance", "Verdict", "load_backend", "profile_names"]
