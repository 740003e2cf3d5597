# syntax=docker/dockerfile:1
#
# The ray-gitops daemon image for the Kubernetes target (manifests/ deploys it).
#
#   docker build -t ray-gitops:0.1.0 .
#   bash tests/image/build.sh          # without Docker: podman on a Debian trixie base (README)
#   docker run --rm --read-only --tmpfs /tmp -v ray-gitops-state:/var/lib/ray-gitops \
#       -e RAY_GITOPS_REPO=https://github.com/example/ray-config.git -p 9464:9464 ray-gitops:0.1.0
#
# The package is installed WITHOUT the `local` extra (ray[default]): on Kubernetes the KubeRay
# operator runs Ray and submits RayJobs; the daemon only talks to the API server. The venv, built
# with the same pip steps as below on a Python 3.11 host (.pyc files included), is 167 MB without
# `local` and 494 MB with it (Ray alone is 240 MB). An environment with `target: {local: ...}`
# cannot run in this image; build one with `.[local]` for that.
#
# Pin the base by digest for reproducible builds (`python:3.11-slim-trixie@sha256:...`); both stages
# must use the same base, because the venv's `python` is a symlink to the base's interpreter.
ARG BASE_IMAGE=python:3.11-slim-trixie

# ---- builder: build the wheel, install it and its dependencies into /opt/ray-gitops ----
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Only what the wheel needs (see .dockerignore): a change under tests/ does not rebuild.
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler

# The venv has no pip (pip runs from the base image with --python), so the final stage carries no
# installer. --only-binary: every dependency must come as a wheel, so no compiler is needed (or
# silently used) here either. pip compiles .pyc files at install: the root filesystem is read-only
# at run time, so Python could not write them then. The last line checks that the entry point
# imports; this stage has no git binary, so GitPython's check for one is silenced here only (the
# final stage has git, and tests/image/ runs the built image).
# The optional build secret `ca-bundle` is the CA bundle pip trusts in this step only (for a
# TLS-inspecting proxy; tests/image/build.sh passes the host's). A secret is never kept in a layer;
# without it (plain `docker build .`) pip uses the base's own bundle.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/ray-gitops \
 && python -m pip --python /opt/ray-gitops/bin/python install --only-binary=:all: /wheels/ray_gitops-*.whl \
 && GIT_PYTHON_REFRESH=quiet /opt/ray-gitops/bin/ray-gitops --help >/dev/null

# ---- final: the interpreter, git, the venv; nothing that builds ----
FROM ${BASE_IMAGE}

# git: gitpython runs the git binary. openssh-client: git over ssh:// (a deploy key). Both come
# without recommends (no compilers, no editors); the apt lists are removed in the same layer. The
# base's own pip/setuptools/wheel go too: nothing is installed or built at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel

# A numeric, non-root user that also exists in /etc/passwd: ssh refuses to run for a UID without a
# passwd entry ("No user exists for uid"), and Kubernetes' runAsNonRoot needs a numeric USER.
RUN groupadd --system --gid 65532 ray-gitops \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/ray-gitops --no-create-home \
        --shell /usr/sbin/nologin ray-gitops \
 && mkdir -p /var/lib/ray-gitops \
 && chown 65532:65532 /var/lib/ray-gitops

COPY --from=builder /opt/ray-gitops /opt/ray-gitops

# Everything written at run time goes under /var/lib/ray-gitops (mount a volume there; the
# Deployment uses an emptyDir) or /tmp (a tmpfs/emptyDir), so the root filesystem can be read-only.
# The state dir holds the Git cache and the SQLite ledger; on Kubernetes each environment's ledger
# is also kept in a ConfigMap, so losing the volume costs a re-clone, never a re-run of a RayJob.
ENV PATH=/opt/ray-gitops/bin:$PATH \
    HOME=/var/lib/ray-gitops \
    XDG_CACHE_HOME=/var/lib/ray-gitops/.cache \
    RAY_GITOPS_STATE_DIR=/var/lib/ray-gitops/state \
    RAY_GITOPS_METRICS_ADDRESS=0.0.0.0:9464 \
    GIT_TERMINAL_PROMPT=0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

VOLUME ["/var/lib/ray-gitops"]
WORKDIR /var/lib/ray-gitops
USER 65532:65532
EXPOSE 9464

# No HEALTHCHECK: Kubernetes ignores it and uses the Deployment's liveness (/healthz) and readiness
# (/readyz) probes instead; a second check would only run in plain Docker. There, use
#   --health-cmd 'python -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:9464/healthz\")"'
#
# No init process: the daemon handles SIGTERM itself (finishes the current step, releases the
# leader Lease, exits 0), and it waits for every git process it starts.
ENTRYPOINT ["ray-gitops"]
CMD ["run"]

LABEL org.opencontainers.image.title="ray-gitops" \
      org.opencontainers.image.description="GitOps reconciler daemon for Ray on Kubernetes (KubeRay)" \
      org.opencontainers.image.version="0.1.0"
