"""`imageward check`: evaluate images against ImagePolicy files, no cluster needed.

Output and exit statuses are a contract (product.md): 0 no image denied, 1 an image
denied, 2 usage errors and unusable policies. `--output json` adds, under each image,
`"attestations": [{"policy", "name", "result": "pass"|"fail"|"error", "message"}]`
(one per attestation entry of each policy that matched; empty when none).
"""

from __future__ import annotations

import sys

from imageward import commands, constants, errors

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

# What a run needs is imported by the function that needs it, not here: `check --help`
# (and the other commands, which import this module for its helpers) need none of it;
# nor does a run need argparse (`cli` parses the common spellings of `check` itself).
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, TextIO

    from imageward import checker, imagesource, policystore, settings
    from imageward.policy import evaluate
    from imageward.registry import auth as registry_auth
    from imageward.registry import model as registry_model
    from imageward.registry import platforms as registry_platforms
    from imageward.signatures import verify as signatures_verify

EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2

#: `run` sets logging up itself, and only when it looks images up: a run that looks
#: nothing up logs nothing, and need not import logging (`cli.main` reads this).
SETS_UP_LOGGING = True


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


#: The options of `add_arguments` that take one value: attribute, repeatable (`append`),
#: and the conversion argparse makes (its `type`, or its `choices`).
_VALUE_OPTIONS: dict[str, tuple[str, bool, Any]] = {
    "--policy": ("policy", True, None),
    "--insecure-registry": ("insecure_registry", True, None),
    "--docker-config": ("docker_config", False, None),
    "--platform": ("platform", False, None),
    "--output": ("output", False, ("text", "json")),
    "--deadline": ("deadline", False, float),
}


def parse_arguments(argv: Sequence[str]) -> dict[str, Any] | None:
    """What the parser `add_arguments` makes sets from `argv` when `argv` spells
    `check`'s arguments the common way: each option whole, its value after it or after
    `=`, and the images together. None for anything else, for argparse to parse (and to
    say what is wrong with it): help, an abbreviated or unknown option, `--`, a value
    that is missing, empty or starts with `-`, an invalid `--output` or `--deadline`,
    images split by options, or none. `tests/unit/commands/test_check_argv.py` runs
    both over the same argv."""
    parsed: dict[str, Any] = {
        "policy": [],
        "insecure_registry": [],
        "docker_config": None,
        "platform": None,
        "output": "text",
        "deadline": 60.0,
        "images": [],
    }
    images_ended = False
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if not arg:
            return None
        if not arg.startswith("-"):
            if images_ended:
                return None
            parsed["images"].append(arg)
            continue
        if parsed["images"]:
            images_ended = True
        option, equals, value = arg.partition("=")
        if option not in _VALUE_OPTIONS:
            return None
        if not equals:
            if index == len(argv):
                return None
            value = argv[index]
            index += 1
        # argparse reads such values in ways of its own (`--policy=--` is [], an
        # option there, a negative number not).
        if not value or value.startswith("-"):
            return None
        name, repeatable, conversion = _VALUE_OPTIONS[option]
        if conversion is float:
            try:
                converted: Any = float(value)
            except ValueError:
                return None
        elif conversion is not None and value not in conversion:
            return None
        else:
            converted = value
        if repeatable:
            parsed[name].append(converted)
        else:
            parsed[name] = converted
    if not parsed["images"]:
        return None
    return parsed


def parse_platform(text: str | None) -> registry_model.Platform | None:
    if not text:
        return None
    from imageward.registry import model as registry_model

    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {text!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    return registry_model.Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def read_policy_documents(paths: Sequence[str]) -> list[dict[str, Any]]:
    from imageward.registry import configpaths

    documents: list[dict[str, Any]] = []
    for path in paths:
        try:
            # pathlib.Path(path).read_text(), without importing pathlib. UTF-8 whatever
            # the locale: what kubectl reads the same file as.
            with open(configpaths.build_path_text(path), encoding="utf-8") as file:
                text = file.read()
        except OSError as e:
            raise UsageError(f"--policy {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise UsageError(
                f"--policy {path}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                f"{e.start}"
            ) from e
        loaded = _load_yaml_documents(path, text)
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


def _load_yaml_documents(path: str, text: str) -> list[Any]:
    """The documents of `text` (empty ones left out).

    Most policy files are in the YAML `yamlsubset` reads (what `yaml.safe_dump` writes,
    and what people write by hand), which it parses exactly as PyYAML would without
    importing PyYAML. Any other text is parsed by libyaml when PyYAML has it (ten times
    faster than the Python parser); a document libyaml refuses is parsed again by the
    Python parser: what it accepts counts, and what it refuses is refused with the
    message `--policy` errors have always had.
    """
    from imageward.policy import yamlsubset

    simple = yamlsubset.parse_documents(text)
    if simple is not None:
        return [d for d in simple if d is not None]
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", None)
        if loader is not None:
            try:
                return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
            except yaml.YAMLError:
                pass
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise UsageError(f"--policy {path}: not YAML: {e}") from e


def read_docker_config(path: str | None) -> list[registry_auth.DockerConfig]:
    from imageward.registry import configpaths

    # As pathlib.Path would name and read them; pathlib itself is not needed.
    candidates = (
        [configpaths.build_path_text(path)] if path else configpaths.default_docker_config_files()
    )
    for candidate in candidates:
        if configpaths.is_file(candidate):
            from imageward.registry import auth as registry_auth

            try:
                with open(candidate, "rb") as file:
                    data = file.read()
                return [registry_auth.parse_docker_config(data, source=str(candidate))]
            except OSError as e:
                raise UsageError(f"--docker-config {candidate}: {e.strerror}") from e
            except errors.ImagewardError as e:
                raise UsageError(f"--docker-config {candidate}: {e}") from e
        if path:
            raise UsageError(f"--docker-config {path}: no such file")
    return []


def build_report(outcome: checker.Outcome) -> dict[str, Any]:
    return {
        "images": [
            build_image_report(item.image, item.digest, item.decision, item.attestations)
            for item in outcome.images
        ]
    }


def build_image_report(
    image: str,
    digest: str | None,
    decision: evaluate.Decision,
    attestations: Sequence[checker.AttestationReport] = (),
) -> dict[str, Any]:
    """One entry of `images`: the same for images checked and images no policy matched."""
    return {
        "image": image,
        "digest": digest,
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
            for a in attestations
        ],
    }


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


def _run(args: argparse.Namespace) -> int:
    from imageward import policystore

    platform = parse_platform(args.platform)
    documents = read_policy_documents(args.policy)
    loaded = [policystore.load_policy_offline(document) for document in documents]
    unusable = [p for p in loaded if not p.usable]
    if unusable:
        for policy in unusable:
            print(f"imageward check: ImagePolicy {policy.name}: {policy.reason}", file=sys.stderr)
        return EXIT_USAGE
    credentials = read_docker_config(args.docker_config)
    report = _unmatched_report(args.images, loaded)
    if report is None:
        # Something matched: only now the checker, asyncio and the registry client.
        commands.set_up_logging(args.verbose)
        import asyncio

        report = asyncio.run(_check(args, loaded, platform, credentials))
    if args.output == "json":
        import json

        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(report, sys.stdout)
    return EXIT_DENIED if any(i["decision"] == "deny" for i in report["images"]) else EXIT_OK


def _unmatched_report(
    images: Sequence[str], loaded: Sequence[policystore.LoadedPolicy]
) -> dict[str, Any] | None:
    """The report when no policy matches any image (every one allowed, nothing looked
    up), as the checker makes it; None when one matches, or when an image is no valid
    reference (the checker says why)."""
    from imageward.policy import evaluate
    from imageward.registry import reference as registry_reference

    distinct = list(dict.fromkeys(images))  # as checker.check_images
    digests = []
    for image in distinct:
        try:
            reference = registry_reference.parse_reference(image)
        except errors.InvalidReferenceError:
            return None
        if any(evaluate.evaluate_match(p.match, reference) for p in loaded):
            return None
        digests.append(reference.digest)
    allowed = evaluate.combine([])
    return {
        "images": [
            build_image_report(image, digest, allowed)
            for image, digest in zip(distinct, digests, strict=True)
        ]
    }


async def _check(
    args: argparse.Namespace,
    loaded: Sequence[policystore.LoadedPolicy],
    platform: registry_model.Platform | None,
    credentials: Sequence[registry_auth.DockerConfig],
) -> dict[str, Any]:
    # Imported here, not at the top: the checker's stack (signature verification,
    # metrics, asyncio) costs several times what a run that looks nothing up does.
    from imageward import checker, settings

    config = settings.Settings(
        registry=settings.RegistrySettings(insecure_registries=tuple(args.insecure_registry))
    )
    async with _LazySource(config.registry) as source:
        outcome = await checker.check_images(
            args.images,
            loaded,
            # Nothing exports metrics from a one-shot command: not counting them spares
            # the import of prometheus_client (here, in the cache and the transport).
            checker.Context(platform=platform, credentials=credentials, count_metrics=False),
            source=source,
            deadline=args.deadline,
        )
    return build_report(outcome)


class _LazySource:
    """The checker's image source, built at its first lookup: images no policy matches
    need no registry client at all, so a run that looks nothing up never imports one.

    A one-shot command talks HTTP with the standard library's streams
    (`registry.streams`), not aiohttp, whose import alone costs more than the lookups of
    a small image; and it counts no metrics (nothing exports them).
    """

    def __init__(self, config: settings.RegistrySettings) -> None:
        self._config = config
        self._source: imagesource.RegistryImageSource | None = None

    def _get(self) -> imagesource.RegistryImageSource:
        if self._source is None:
            from imageward import imagesource
            from imageward.registry import cache, client, streams

            registry_client = client.RegistryClient(
                self._config,
                cache_=cache.RegistryCache.from_settings(self._config, counted=False),
                transport_=streams.StreamTransport(
                    max_concurrency=self._config.max_concurrency,
                    ca_bundle=self._config.ca_bundle,
                    counted=False,
                ),
            )
            self._source = imagesource.RegistryImageSource(
                self._config, registry_client=registry_client
            )
        return self._source

    async def __aenter__(self) -> _LazySource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._source is not None:
            await self._source.__aexit__(*exc_info)

    async def fetch_facts(
        self,
        reference: registry_model.ImageReference,
        *,
        platform: registry_platforms.PlatformChoice | registry_model.Platform | None,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.ImageFacts:
        return await self._get().fetch_facts(reference, platform=platform, credentials=credentials)

    async def fetch_signatures(
        self,
        reference: registry_model.ImageReference,
        digest: registry_model.Digest,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
        attestations: bool = False,
    ) -> signatures_verify.SignatureSet:
        return await self._get().fetch_signatures(
            reference, digest, credentials=credentials, attestations=attestations
        )

    async def resolve(
        self,
        reference: registry_model.ImageReference,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.Digest:
        return await self._get().resolve(reference, credentials=credentials)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as e:
        print(f"imageward check: {e}", file=sys.stderr)
        return EXIT_USAGE
