# syntax=docker/dockerfile:1
# The imageward image: `imageward run` (the operator), `imageward agent` (the PrePull
# Layers-mode node agent) and /usr/local/bin/imageward-helper (the static helper PrePull
# copies into pre-pull pods, so scratch and distroless images pre-pull too).
#
#   docker build -t imageward:dev .
#
# Multi-stage: compilers and build tools stay in the first two stages; the final image is
# the Python base, one virtualenv with the wheel and its dependencies, and the helper.
# Both Python stages use the same base, so the virtualenv's interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- 1. The static helper (gcc -static: no libc needed where it runs). ----------------------
FROM ${PYTHON_IMAGE} AS helper
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY hack/static-helper/imageward-helper.c /src/imageward-helper.c
RUN mkdir /out \
    && gcc -static -Os -s -o /out/imageward-helper /src/imageward-helper.c \
    && /out/imageward-helper | grep -qx 'imageward-helper: ok'

# -- 2. The wheel, installed with its dependencies into a virtualenv without pip. -----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/imageward \
    && python -m pip --python /opt/imageward/bin/python install /wheels/imageward-*.whl \
    && /opt/imageward/bin/imageward --version

# -- 3. Runtime: non-root, read-only friendly (bytecode compiled at install time). ----------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="imageward" \
      org.opencontainers.image.description="Kubernetes operator: verifiable, small, fast-starting images" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry for uid 65532: Python's getpass (used by Kopf when POD_ID is unset) needs one.
RUN groupadd --system --gid 65532 imageward \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin imageward
COPY --from=build /opt/imageward /opt/imageward
COPY --from=helper /out/imageward-helper /usr/local/bin/imageward-helper
ENV PATH=/opt/imageward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081 9443
ENTRYPOINT ["imageward"]
CMD ["run", "--liveness=http://0.0.0.0:8081/healthz"]
