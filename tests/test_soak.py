"""`wildguard-lite bench soak` for a few seconds against the real app on a marker engine (the
same traffic as the 30-minute run: streams, hang-ups, long inputs, bad requests, several clients)."""

import argparse
import os

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_fakes import build_tokenizer, marker_app, running  # noqa: E402
from wildguard_lite.benchmarks import soak  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_soak_reports_resources_and_latency_per_minute(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    with running(marker_app(tokenizer, workers=2)) as url:
        args = parser.parse_args(["--url", url, "--pid", str(os.getpid()), "--minutes", "0.05", "--long-kb", "20"])
        result = soak.measure(args)
    (row,) = result["per_minute"]
    assert row["rss_mib"] > 0 and row["fds"] > 0 and row["threads"] > 1
    assert row["requests"] > 10 and row["short_p50_ms"] <= row["short_p99_ms"]
    # Every kind of traffic got its answer: judged, refused as bad input, or hung up on (0).
    assert "200" in row["statuses"] and set(row["statuses"]) <= {"0", "200", "413", "400", "422"}
    assert set(result["flatness"]) == {"baseline_minute", "rss_mib_max_change", "fds_max_change", "threads_max_change"}


@pytest.mark.parametrize("argv", [["--minutes", "0"], ["--minutes", "nan"], ["--clients", "0"]])
def test_soak_refuses_bad_options(argv):
    from wildguard_lite.errors import InvalidInputError

    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    with pytest.raises(InvalidInputError, match="--minutes must be positive"):
        soak.run(parser.parse_args(["--url", "http://127.0.0.1:1", *argv]))
