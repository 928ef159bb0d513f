"""/metrics prints counters exactly (no %g rounding past a million) and floats with all digits."""

import pytest

from wildguard_lite.server.metrics import Metrics, number


@pytest.mark.parametrize(
    "value, text",
    [
        (1_975_653, "1975653"),
        (2**53 + 1, "9007199254740993"),  # beyond a float's integers: still exact
        (0, "0"),
        (0.1 + 0.2, "0.30000000000000004"),  # every digit a float has
        (1234567.891, "1234567.891"),
    ],
)
def test_number(value, text):
    assert number(value) == text


def test_a_counter_past_a_million_renders_exactly():
    metrics = Metrics()
    metrics.observe("/v1/moderations", 200, 0.5)
    metrics.requests[("/v1/moderations", 200)] = 1_975_653
    metrics.errors["timeout"] = 12_345_678
    text = metrics.render(None)
    assert 'wildguard_requests_total{endpoint="/v1/moderations",status="200"} 1975653\n' in text
    assert 'wildguard_errors_total{type="timeout"} 12345678\n' in text
    assert 'wildguard_request_duration_seconds_sum{endpoint="/v1/moderations"} 0.5\n' in text
    assert "e+" not in text
