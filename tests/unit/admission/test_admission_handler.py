"""The AdmissionReview response the endpoints write (admission.k8s.io/v1)."""

from __future__ import annotations

import base64
import json

from imageward.admission import handler


def test_refusal_carries_status_and_warnings() -> None:
    answer = handler.Answer(allowed=False, code=403, message="no", warnings=("careful",))
    assert answer.to_response("u1") == {
        "uid": "u1",
        "allowed": False,
        "status": {"code": 403, "message": "no"},
        "warnings": ["careful"],
    }


def test_pin_patch_is_base64_jsonpatch() -> None:
    op = {
        "op": "replace",
        "path": "/spec/containers/0/image",
        "value": "nginx:1@sha256:" + "a" * 64,
    }
    response = handler.Answer(allowed=True, patch=(op,)).to_response("u2")  # type: ignore[arg-type]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == [op]
    assert "status" not in response


def test_plain_allow_is_minimal() -> None:
    assert handler.ALLOW.to_response("u3") == {"uid": "u3", "allowed": True}
