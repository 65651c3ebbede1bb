"""One-shot commands leave without the interpreter's teardown (`cli._leave`): what they
wrote and their exit code must arrive all the same, through a pipe, past its buffer."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import imageward

OPERATOR = pathlib.Path(imageward.__file__).resolve().parent.parent

POLICY = """\
apiVersion: imageward.io/v1alpha1
kind: ImagePolicy
metadata: {name: tags}
spec:
  match: {images: ["**"]}
  rules: {forbiddenTags: ["latest"]}
"""


def _check(tmp_path: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return subprocess.run(
        [sys.executable, "-m", "imageward", "check", "--policy", str(policy), *argv],
        capture_output=True,
        text=True,
        # Buffered, as a pipeline's step is: PYTHONUNBUFFERED would write as it goes.
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            "PYTHONPATH": str(OPERATOR),
            "HOME": str(tmp_path),
        },
        timeout=60,
    )


def test_a_report_larger_than_a_pipe_buffer_arrives_whole_with_the_exit_code(
    tmp_path: pathlib.Path,
) -> None:
    # 2,000 images (one refused) give a JSON report of about 400 KB: a pipe holds 64 KiB,
    # so most of it is still in the process when the command returns.
    images = [f"example.com/app-{i}:1" for i in range(1999)] + ["example.com/last:latest"]
    done = _check(tmp_path, "--output", "json", *images)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert [entry["image"] for entry in report["images"]] == images
    assert report["images"][-1]["violations"][0]["rule"] == "forbiddenTags"
