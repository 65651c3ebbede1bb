"""`imageward check`: evaluate images against ImagePolicy files, no cluster needed.

Output and exit statuses are a contract (product.md): 0 no image denied, 1 an image
denied, 2 usage errors and unusable policies. `--output json` adds, under each image,
`"attestations": [{"policy", "name", "result": "pass"|"fail"|"error", "message"}]`
(one per attestation entry of each policy that matched; empty when none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from imageward import commands, constants, errors, settings
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model

if TYPE_CHECKING:
    from imageward import checker

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2


class UsageError(errors.ImagewardError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file with one or more ImagePolicy documents (repeatable)",
    )
    commands.add_registry_arguments(parser)
    parser.add_argument("--platform", metavar="OS/ARCH", help="platform of an image index to check")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for all lookups")
    parser.add_argument("images", nargs="+", metavar="IMAGE")


def parse_platform(text: str | None) -> registry_model.Platform | None:
    if not text:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {text!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    return registry_model.Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def read_policy_documents(paths: Sequence[str]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in paths:
        try:
            text = pathlib.Path(path).read_text()
            loaded = [d for d in yaml.safe_load_all(text) if d is not None]
        except OSError as e:
            raise UsageError(f"--policy {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise UsageError(f"--policy {path}: not YAML: {e}") from e
        for index, document in enumerate(loaded):
            if not isinstance(document, dict) or document.get("kind") != "ImagePolicy":
                kind = (
                    document.get("kind") if isinstance(document, dict) else type(document).__name__
                )
                raise UsageError(
                    f"--policy {path}: document {index + 1} is {kind!r}, not an ImagePolicy"
                )
            if document.get("apiVersion") != constants.API_VERSION:
                raise UsageError(
                    f"--policy {path}: document {index + 1} has apiVersion "
                    f"{document.get('apiVersion')!r}, expected {constants.API_VERSION}"
                )
            documents.append(document)
    return documents


def read_docker_config(path: str | None) -> list[registry_auth.DockerConfig]:
    candidates = [pathlib.Path(path)] if path else registry_auth.default_docker_config_paths()
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = candidate.read_bytes()
                return [registry_auth.parse_docker_config(data, source=str(candidate))]
            except OSError as e:
                raise UsageError(f"--docker-config {candidate}: {e.strerror}") from e
            except errors.ImagewardError as e:
                raise UsageError(f"--docker-config {candidate}: {e}") from e
        if path:
            raise UsageError(f"--docker-config {path}: no such file")
    return []


def build_report(outcome: checker.Outcome) -> dict[str, Any]:
    images = []
    for item in outcome.images:
        decision = item.decision
        images.append(
            {
                "image": item.image,
                "digest": item.digest,
                "decision": decision.outcome,
                "violations": [
                    {"policy": v.policy, "rule": v.rule, "message": v.message}
                    for v in (*decision.violations, *decision.audits)
                ],
                "warnings": list(decision.warnings),
                "attestations": [
                    {
                        "policy": a.policy,
                        "name": a.name,
                        "result": a.result,
                        "message": a.message,
                    }
                    for a in item.attestations
                ],
            }
        )
    return {"images": images}


def render_text(report: dict[str, Any], out: TextIO) -> None:
    for image in report["images"]:
        digest = f" ({image['digest']})" if image["digest"] else ""
        out.write(f"{image['decision'].upper():5} {image['image']}{digest}\n")
        for violation in image["violations"]:
            out.write(f"      [{violation['rule']}] {violation['message']}\n")
        for warning in image["warnings"]:
            out.write(f"      warning: {warning}\n")
        for attestation in image.get("attestations", []):
            out.write(
                f"      attestation {attestation['policy']}/{attestation['name']}: "
                f"{attestation['result']}: {attestation['message']}\n"
            )


async def _run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: sigstore and the registry client cost a third of a
    # second that `imageward --help` and the other commands need not pay.
    from imageward import checker, imagesource, policystore

    platform = parse_platform(args.platform)
    documents = read_policy_documents(args.policy)
    loaded = [await policystore.load_policy(document) for document in documents]
    unusable = [p for p in loaded if not p.usable]
    if unusable:
        for policy in unusable:
            print(f"imageward check: ImagePolicy {policy.name}: {policy.reason}", file=sys.stderr)
        return EXIT_USAGE
    config = settings.Settings(
        registry=settings.RegistrySettings(insecure_registries=tuple(args.insecure_registry))
    )
    credentials = read_docker_config(args.docker_config)
    async with imagesource.RegistryImageSource(config.registry) as source:
        outcome = await checker.check_images(
            args.images,
            loaded,
            checker.Context(platform=platform, credentials=credentials),
            source=source,
            deadline=args.deadline,
        )
    report = build_report(outcome)
    if args.output == "json":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(report, sys.stdout)
    return EXIT_DENIED if any(i["decision"] == "deny" for i in report["images"]) else EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except UsageError as e:
        print(f"imageward check: {e}", file=sys.stderr)
        return EXIT_USAGE
