from __future__ import annotations

import json

import pytest

from imageward.prepull import planner, report
from tests.unit.prepull import fleets

MiB = 2**20

BASE = fleets.layer("debian", 30 * MiB)
PYTHON = fleets.layer("python", 50 * MiB)
WEB = fleets.layer("web", 80 * MiB)
API = fleets.layer("api", 10 * MiB)
WORKER = fleets.layer("worker", 700 * MiB)
IMAGES = [
    fleets.image("ghcr.io/acme/web:1.4", BASE, PYTHON, WEB),
    fleets.image("ghcr.io/acme/api:2.0", BASE, PYTHON, API, API, weight=3),
    fleets.image("ghcr.io/acme/worker:3", BASE, WORKER),
]


def test_json_is_exactly_the_contract() -> None:
    plan = planner.build_plan(IMAGES, budget=100 * MiB)
    document = report.build_plan_json(IMAGES, plan)
    assert document == {
        "images": [
            {
                "image": "ghcr.io/acme/web:1.4",
                "digest": fleets.digest("manifest of ghcr.io/acme/web:1.4"),
                "bytes": 160 * MiB,
                "layers": [
                    {"digest": BASE.digest, "size": 30 * MiB},
                    {"digest": PYTHON.digest, "size": 50 * MiB},
                    {"digest": WEB.digest, "size": 80 * MiB},
                ],
            },
            {
                "image": "ghcr.io/acme/api:2.0",
                "digest": fleets.digest("manifest of ghcr.io/acme/api:2.0"),
                "bytes": 90 * MiB,  # the repeated layer is downloaded, and counted, once
                "layers": [
                    {"digest": BASE.digest, "size": 30 * MiB},
                    {"digest": PYTHON.digest, "size": 50 * MiB},
                    {"digest": API.digest, "size": 10 * MiB},
                ],
            },
            {
                "image": "ghcr.io/acme/worker:3",
                "digest": fleets.digest("manifest of ghcr.io/acme/worker:3"),
                "bytes": 730 * MiB,
                "layers": [
                    {"digest": BASE.digest, "size": 30 * MiB},
                    {"digest": WORKER.digest, "size": 700 * MiB},
                ],
            },
        ],
        "plan": {
            "layers": [
                {
                    "digest": BASE.digest,
                    "size": 30 * MiB,
                    "images": [
                        "ghcr.io/acme/web:1.4",
                        "ghcr.io/acme/api:2.0",
                        "ghcr.io/acme/worker:3",
                    ],
                },
                {
                    "digest": PYTHON.digest,
                    "size": 50 * MiB,
                    "images": ["ghcr.io/acme/web:1.4", "ghcr.io/acme/api:2.0"],
                },
                {"digest": API.digest, "size": 10 * MiB, "images": ["ghcr.io/acme/api:2.0"]},
            ],
            "bytes": 90 * MiB,
            "budget": 100 * MiB,
        },
        "savedBytes": (30 * 3 + 50 * 2 + 10) * MiB,
        "totalBytes": (160 + 90 + 730) * MiB,
    }
    # Plain JSON types only, and the totals add up the way a consumer would check them.
    assert json.loads(json.dumps(document)) == document
    assert document["totalBytes"] == sum(entry["bytes"] for entry in document["images"])
    assert document["plan"]["bytes"] == sum(entry["size"] for entry in document["plan"]["layers"])


def test_json_without_budget_says_null() -> None:
    plan = planner.build_plan(IMAGES, budget=None)
    document = json.loads(json.dumps(report.build_plan_json(IMAGES, plan)))
    assert document["plan"]["budget"] is None
    assert document["savedBytes"] == document["totalBytes"]


def test_text_report_for_people() -> None:
    plan = planner.build_plan(IMAGES, budget=100 * MiB)
    text = report.render_plan_text(IMAGES, plan)
    lines = text.splitlines()
    assert lines[0].split() == ["IMAGE", "DIGEST", "WEIGHT", "BYTES", "PLANNED", "PLANNED%"]
    web = next(line for line in lines if line.startswith("ghcr.io/acme/web:1.4"))
    assert web.split()[2:] == ["1", "160.0MiB", "80.0MiB", "50.0%"]
    api = next(line for line in lines if line.startswith("ghcr.io/acme/api:2.0"))
    assert api.split()[2:] == ["3", "90.0MiB", "90.0MiB", "100.0%"]
    assert lines[4].split() == ["all", "3", "images", "980.0MiB", "200.0MiB", "20.4%"]
    assert (
        f"{BASE.digest[:19]}  30.0MiB       3  ghcr.io/acme/web:1.4, ghcr.io/acme/api:2.0," in text
    )
    assert "Plan: 3 layers, 90.0MiB of the 100.0MiB budget per node (90.0%), minShare 1." in text
    assert "Pulls download 200.0MiB less of 980.0MiB (20.4%)" in text
    assert text.endswith("optimal.\n")
    # Columns line up: every row of the image table is as wide as its header allows.
    assert len({line.index("sha256:") for line in lines[1:4]}) == 1


def test_text_report_shortens_long_layer_lists() -> None:
    plan = planner.build_plan(IMAGES, budget=None)
    text = report.render_plan_text(IMAGES, plan, max_layers=2)
    assert "... and 3 more layers (790.0MiB)" in text
    assert "no budget" in text


def test_text_report_names_at_most_three_images_per_layer() -> None:
    shared = fleets.layer("shared", 1)
    images = [fleets.image(f"app-{i}:1", shared) for i in range(5)]
    text = report.render_plan_text(images, planner.build_plan(images, budget=None))
    assert "app-0:1, app-1:1, app-2:1, +2 more" in text


def test_text_report_of_nothing() -> None:
    text = report.render_plan_text([], planner.build_plan([], budget=0))
    assert "all 0 images" in text
    assert "Plan: 0 layers, 0B of the 0B budget per node (-)" in text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (812.4 * MiB, "812.4MiB"),
        (20 * 2**30, "20.0GiB"),
        (3 * 2**40, "3.0TiB"),
        (5 * 2**50, "5.0PiB"),
        (2**70, "1048576.0PiB"),
    ],
)
def test_format_bytes(count: float, text: str) -> None:
    assert report.format_bytes(count) == text
