"""Shared settings for the property-based tests (hypothesis).

Bounded so that all of them together stay within a few seconds on a loaded 2-core machine:
a fixed number of examples per property, no per-example deadline (the examples take
microseconds; a deadline would only turn a scheduler hiccup into a flaky failure), and no
example database written into the checkout.
"""

from hypothesis import HealthCheck, settings

BOUNDED = settings(max_examples=120, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
