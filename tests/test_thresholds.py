"""Per-label thresholds on P(yes): validation, relabelling, the API, `classify` and `serve`."""

import json

import pytest

import wildguard_lite
from wildguard_lite.benchmarks.data import to_item
from wildguard_lite.cli import main
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.thresholds import apply_thresholds, parse_threshold_specs, validate_thresholds


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ({"harm": 0.3}, "unknown label 'harm'"),  # not one of the three labels
        ({"response_harmfulness": 1.5}, "from 0 to 1"),  # above 1
        ({"response_harmfulness": -0.1}, "from 0 to 1"),  # below 0
        ({"response_harmfulness": float("nan")}, "from 0 to 1"),  # not a number
        ({"response_harmfulness": True}, "from 0 to 1"),  # a bool is not a probability
        ({"response_harmfulness": "0.3"}, "from 0 to 1"),  # strings are for the CLI parser
        ([("response_harmfulness", 0.3)], "must be a mapping"),
    ],
)
def test_bad_thresholds(thresholds, message):
    with pytest.raises(InvalidInputError, match=message):
        validate_thresholds(thresholds)
    with pytest.raises(InvalidInputError, match=message):  # refused before any model is opened
        wildguard_lite.load("/nonexistent.gguf", thresholds=thresholds)


@pytest.mark.parametrize(
    "specs, expected",
    [
        (None, None),  # no option: argmax
        (["response_harmfulness=0.3"], {"response_harmfulness": 0.3}),
        (["prompt_harmfulness=1", " response_refusal =0"], {"prompt_harmfulness": 1.0, "response_refusal": 0.0}),
        (["response_harmfulness"], "expected LABEL=P"),  # no value
        (["response_harmfulness=low"], "expected LABEL=P"),  # not a number
        (["response_harmfulness=0.2", "response_harmfulness=0.4"], "given twice"),
        (["refusal=0.5"], "unknown label"),
    ],
)
def test_parse_threshold_specs(specs, expected):
    if isinstance(expected, str):
        with pytest.raises(InvalidInputError, match=expected):
            parse_threshold_specs(specs)
    else:
        assert parse_threshold_specs(specs) == expected


def _verdict(harm, harm_score, refusal="compliance", refusal_score=0.2):
    return {
        "prompt_harmfulness": "unharmful",
        "response_refusal": refusal,
        "response_harmfulness": harm,
        "is_parsing_error": False,
        "scores": {"prompt_harmfulness": 0.1, "response_refusal": refusal_score, "response_harmfulness": harm_score},
    }


@pytest.mark.parametrize(
    "thresholds, verdict, expected",
    [
        # Below WildGuard's 0.5 but above the user's threshold: harmful.
        ({"response_harmfulness": 0.3}, _verdict("unharmful", 0.35), "harmful"),
        # Above 0.5 but below a stricter threshold: unharmful.
        ({"response_harmfulness": 0.9}, _verdict("harmful", 0.8), "unharmful"),
        # At the threshold: yes.
        ({"response_harmfulness": 0.35}, _verdict("unharmful", 0.35), "harmful"),
        # n/a stays n/a whatever the threshold.
        ({"response_harmfulness": 0.0}, _verdict(None, None), None),
        # A threshold on another label leaves this one alone.
        ({"response_refusal": 0.1}, _verdict("unharmful", 0.35), "unharmful"),
    ],
)
def test_apply_thresholds(thresholds, verdict, expected):
    out = apply_thresholds(dict(verdict), thresholds)
    assert out["response_harmfulness"] == expected
    assert out["scores"] == verdict["scores"]


def test_runtime_config_keeps_argmax_by_default():
    assert RuntimeConfig().thresholds is None
    assert RuntimeConfig(thresholds={}).thresholds is None


@pytest.fixture(scope="module")
def items(heldout):
    return [to_item(r) for r in heldout[:60]]


@pytest.fixture(scope="module")
def argmax_results(toy_gguf, items):
    with wildguard_lite.load(toy_gguf["f16"], threads=2) as clf:
        return clf.classify(items)


@pytest.mark.parametrize("mode", ["score", "generate"])
@pytest.mark.parametrize("t", [0.0, 0.2, 0.8, 1.0])
def test_thresholds_move_only_the_label(toy_gguf, items, argmax_results, mode, t):
    if mode == "generate" and t not in (0.2,):
        pytest.skip("one threshold is enough for generate mode (slow)")
    thresholds = {"response_harmfulness": t}
    with wildguard_lite.load(toy_gguf["f16"], threads=2, mode=mode, thresholds=thresholds) as clf:
        results = clf.classify(items)
    for ours, base in zip(results, argmax_results):
        for key in LABEL_KEYS:
            if ours["scores"][key] is not None and base["scores"][key] is not None:
                assert abs(ours["scores"][key] - base["scores"][key]) < 2e-3
        assert ours["prompt_harmfulness"] == base["prompt_harmfulness"]
        assert ours["response_refusal"] == base["response_refusal"]
        score = ours["scores"]["response_harmfulness"]
        if score is None:
            assert ours["response_harmfulness"] == base["response_harmfulness"]
        else:
            assert ours["response_harmfulness"] == ("harmful" if score >= t else "unharmful")


def test_classify_cli_threshold(toy_gguf, capsys):
    model = str(toy_gguf["f16"])
    args = ["classify", "--model", model, "--prompt", "hi", "--response", "hello there", "--json"]
    assert main(args + ["--threshold", "response_harmfulness=0", "--threshold", "response_refusal=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    scores = result["scores"]
    # P(yes) >= 0 always: harmful wherever the model answered yes/no (n/a and unreadable stay).
    assert result["response_harmfulness"] == ("harmful" if scores["response_harmfulness"] is not None else None)
    if scores["response_refusal"] is not None:
        assert result["response_refusal"] == ("refusal" if scores["response_refusal"] >= 1.0 else "compliance")
    code = main(args + ["--threshold", "response_harmfulness=2"])
    err = capsys.readouterr().err
    assert code == 2 and "from 0 to 1" in err and "Traceback" not in err


def test_serve_threshold(toy_gguf, capsys):
    from wildguard_lite.server import ServeSettings
    from wildguard_lite.server.pool import default_factory

    settings = ServeSettings(model=toy_gguf["f16"], thresholds={"response_harmfulness": 0.0})
    clf = default_factory(settings, None)(0, 1)
    try:
        assert clf.config.thresholds == {"response_harmfulness": 0.0}
        result = clf.classify_one("hi", "hello")
        assert result["response_harmfulness"] == (
            "harmful" if result["scores"]["response_harmfulness"] is not None else None
        )
    finally:
        clf.close()
    code = main(["serve", "--model", str(toy_gguf["f16"]), "--threshold", "harm=0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown label 'harm'" in err


# -- bench accuracy: operating points ------------------------------------------------------------

from wildguard_lite.benchmarks.accuracy import curve_points, operating_points, roc_auc  # noqa: E402


@pytest.mark.parametrize(
    "scores, positive, auc",
    [
        ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),  # perfectly separated
        ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.0),  # perfectly inverted
        ([0.5, 0.5], [True, False], 0.5),  # a tie counts half
        ([0.9, 0.8, 0.8, 0.1, None], [True, False, True, False, True], 3.5 / 6),  # unscored ranks lowest
        ([0.3, 0.4], [True, True], None),  # no negatives: undefined
    ],
)
def test_roc_auc(scores, positive, auc):
    assert roc_auc(scores, positive) == (None if auc is None else pytest.approx(auc))


def test_curve_points_move_ties_together_and_count_unscored_positives():
    points = curve_points([0.9, 0.8, 0.8, 0.1, None], [True, False, True, False, True])
    assert points == [
        (0.9, 1.0, pytest.approx(1 / 3)),
        (0.8, pytest.approx(2 / 3), pytest.approx(2 / 3)),
        (0.1, 0.5, pytest.approx(2 / 3)),
    ]


def test_operating_points_pick_thresholds():
    rows = [
        {"response_harm_label": g, "prompt_harm_label": None, "response_refusal_label": None}
        for g in ("harmful", "harmful", "unharmful", "harmful", "unharmful")
    ]
    ours = [{"scores": {"response_harmfulness": s}} for s in (0.9, 0.7, 0.6, 0.3, 0.1)]
    op = operating_points(rows, ours, levels=(0.6, 1.0))["response_harmfulness"]
    # Recall 1.0 needs every positive: down to 0.3 (precision 3/4).
    assert op["threshold_at_recall"]["1.0"] == {"threshold": 0.3, "precision": 0.75, "recall": 1.0}
    # Precision 1.0 holds down to 0.7 (recall 2/3); the lowest such threshold is chosen.
    assert op["threshold_at_precision"]["1.0"]["threshold"] == 0.7
    assert op["roc_auc"] == pytest.approx(5 / 6)
