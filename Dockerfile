# syntax=docker/dockerfile:1
# The imageward image: `imageward run` (the operator), `imageward agent` (the PrePull
# Layers-mode node agent) and /imageward-helper (the static helper PrePull copies into
# pre-pull pods, so scratch and distroless images pre-pull too).
#
#   docker build -t imageward:dev .
#   make image          # the same Dockerfile without Docker (hack/build-image.sh: buildah)
#
# Multi-stage: compilers, pip and build tools stay in the first stages. The final image is
# the Python base and four layers, the most stable first, so a new imageward version
# re-pulls only its own small layer: the passwd entry, the helper, the dependencies
# (a virtualenv without pip, trimmed by hack/trim-venv.py), imageward itself.
# All stages share one Python at one path, so the virtualenv's interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The final stage's base. By default the same image; hack/build-image.sh passes a Debian
# base with the same python3.11 but without pip, venv and apt caches.
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

# -- 1. Build tools: gcc for the static helper, binutils to strip the dependencies. -------
FROM ${PYTHON_IMAGE} AS tools
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev binutils \
    && rm -rf /var/lib/apt/lists/*

# -- 2. The static helper (gcc -static: no libc needed where it runs). --------------------
FROM tools AS helper
COPY hack/static-helper/imageward-helper.c /src/imageward-helper.c
RUN mkdir /out \
    && gcc -static -Os -s -o /out/imageward-helper /src/imageward-helper.c \
    && /out/imageward-helper | grep -qx 'imageward-helper: ok'

# -- 3. The dependencies, from pyproject.toml alone (source edits keep this layer). --------
FROM tools AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml /src/pyproject.toml
# The versions the test suite ran with (hack/constraints.txt pins the development venv too).
COPY hack/constraints.txt /build/constraints.txt
COPY hack/trim-venv.py /build/trim-venv.py
RUN python -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
       > /build/requirements.txt \
    && python -m venv --without-pip /opt/imageward \
    && python -m pip --python /opt/imageward/bin/python install --requirement /build/requirements.txt \
         --constraint /build/constraints.txt \
    && /opt/imageward/bin/python -I /build/trim-venv.py trim /opt/imageward /build/requirements.txt /build/trimmed.json \
    && find /opt/imageward -name '*.so*' -type f -exec strip --strip-unneeded {} + \
    && du -sh /opt/imageward

# -- 4. imageward itself, installed over the dependencies, then collected on its own. -------
FROM deps AS build
WORKDIR /src
COPY LICENSE ./
COPY operator ./operator
# README.md is only the wheel's long description: a stub keeps README edits from
# rebuilding the image.
RUN printf '# imageward\n' > README.md \
    && python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m pip --python /opt/imageward/bin/python install --no-deps /wheels/imageward-*.whl \
    && python -m pip --python /opt/imageward/bin/python check \
    && /opt/imageward/bin/python -I /build/trim-venv.py verify /opt/imageward /build/trimmed.json \
    && /opt/imageward/bin/python -I /build/trim-venv.py collect /opt/imageward imageward /out \
    && /opt/imageward/bin/imageward --version

# -- 5. Runtime: non-root, read-only friendly (bytecode compiled at install time). ----------
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="imageward" \
      org.opencontainers.image.description="Kubernetes operator: verifiable, small, fast-starting images" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry for uid 65532: Python's getpass (used by Kopf when POD_ID is unset) needs one.
# The helper lives at /imageward-helper, where PrePull's init containers run it from
# (prepull/daemonset.py HELPER_SOURCE); the link puts it on PATH.
RUN echo 'imageward:x:65532:65532:imageward:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'imageward:x:65532:' >> /etc/group \
    && ln -s /imageward-helper /usr/local/bin/imageward-helper
COPY --from=helper /out/imageward-helper /imageward-helper
COPY --from=deps /opt/imageward /opt/imageward
COPY --from=build /out/ /
ENV PATH=/opt/imageward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081 9443
ENTRYPOINT ["imageward"]
CMD ["run", "--liveness=http://0.0.0.0:8081/healthz"]
