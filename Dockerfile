# One image for the operator and every service: `fleetflow operator|gateway|processor|writer`.
# Build: docker build -t fleetflow:dev .    (skaffold.yaml builds it the same way)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv under /opt/fleetflow that the runtime stage copies as a whole ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/fleetflow
ENV PATH=/opt/fleetflow/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: editing the code reuses this (slow) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
 && pip install --prefer-binary -r requirements.txt

# Then fleetflow itself, without touching the dependencies installed above.
COPY README.md ./
COPY services ./services
COPY operator ./operator
RUN pip install --no-deps . \
 && fleetflow --help > /dev/null

# ---- runtime: no compilers, no pip cache, a non-root user; works with a read-only root filesystem ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fleetflow" \
      org.opencontainers.image.description="fleetflow operator, gateway, processor and writer" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 fleetflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fleetflow

COPY --from=build /opt/fleetflow /opt/fleetflow

# Nothing is written under / at run time: bytecode was compiled at install, and the only writable
# place a service needs is /tmp (an emptyDir on Kubernetes), which HOME points into as well.
ENV PATH=/opt/fleetflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001

# Gateway HTTP, and the ops endpoint (/healthz, /readyz, /metrics) every service serves.
EXPOSE 8080 8081
ENTRYPOINT ["fleetflow"]
CMD ["--help"]
