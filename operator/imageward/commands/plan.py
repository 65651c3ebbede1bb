"""`imageward plan`: print the layer plan for a set of images (product.md contract)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from imageward import commands, errors, settings
from imageward.commands import check
from imageward.policy import quantities
from imageward.prepull import planner, report
from imageward.registry import client, reference

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands.add_registry_arguments(parser)
    parser.add_argument("--budget", metavar="QUANTITY", help="byte budget per node, e.g. 20Gi")
    parser.add_argument("--min-share", type=int, default=1, metavar="N")
    parser.add_argument("--platform", default="linux/amd64", metavar="OS/ARCH")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("images", nargs="+", metavar="IMAGE")


async def _run(args: argparse.Namespace) -> int:
    platform = check.parse_platform(args.platform)
    budget = None
    if args.budget is not None:
        try:
            budget = quantities.parse_bytes(args.budget)
        except errors.ImagewardError as e:
            raise check.UsageError(f"--budget {args.budget!r}: {e}") from e
    if args.min_share < 1:
        raise check.UsageError("--min-share must be at least 1")
    references = []
    for image in args.images:
        try:
            references.append(reference.parse_reference(image))
        except errors.InvalidReferenceError as e:
            raise check.UsageError(str(e)) from e
    credentials = check.read_docker_config(args.docker_config)
    config = settings.RegistrySettings(insecure_registries=tuple(args.insecure_registry))
    async with client.RegistryClient(config) as registry:
        try:
            facts = await asyncio.gather(
                *(
                    registry.fetch_facts(ref, platform=platform, credentials=credentials)
                    for ref in references
                )
            )
        except errors.ImagewardError as e:
            print(f"imageward plan: {e}", file=sys.stderr)
            return EXIT_FAILED
    plan_images = []
    for image, found in zip(args.images, facts, strict=True):
        if not found.images:
            print(f"imageward plan: {image} has no {platform} image", file=sys.stderr)
            return EXIT_FAILED
        plan_images.append(
            planner.PlanImage(image=image, digest=found.digest, layers=found.images[0].layers)
        )
    plan = planner.build_plan(plan_images, budget=budget, min_share=args.min_share)
    if args.output == "json":
        json.dump(report.build_plan_json(plan_images, plan), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.render_plan_text(plan_images, plan))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except check.UsageError as e:
        print(f"imageward plan: {e}", file=sys.stderr)
        return EXIT_USAGE
