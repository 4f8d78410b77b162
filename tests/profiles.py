"""Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``dev``).

- ``ci``: bounded (30 examples per property), derandomized: what CI and ``scripts/test.sh`` run.
- ``dev``: 400 examples per property, random seeds: the local default.
- ``long``: 1,000 examples per property (about 300,000 over the suite's 305 properties,
  hours on 2 cores; over the grammar's own properties alone, ``tests/test_{remi,tsd,
  midilike,structured,compiler,corpus}.py``, about 170,000 in half an hour): run once per
  stage, e.g. ``HYPOTHESIS_PROFILE=long scripts/test.sh tests/test_remi.py ...``.

Every property scales with the profile: a test that needs fewer (or more) examples than
the others asks for :func:`scaled` of its count at ``ci``, never a fixed ``max_examples``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 30
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=_SLOW
)
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=_SLOW)
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_SLOW)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def scaled(at_ci: int) -> int:
    """Examples for a property that runs ``at_ci`` under the ``ci`` profile, in proportion
    to the loaded profile."""
    return max(1, round(at_ci * settings.default.max_examples / CI_EXAMPLES))
