# One image for every aygolog role: `aygolog lb`, `aygolog api`, `aygolog ui`.
# With no command it picks the role from the seed's environment variables (`aygolog auto`),
# so the seed's `docker run` lines work with this image's name put in.
#
#   docker build -t aygolog .
#   podman build --format docker -t aygolog .     # podman: keep the HEALTHCHECK (OCI drops it)
#
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module; here, where no
# registry is reachable, `../shared/tools/oci build` passes its local Debian base image.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# UV_SYSTEM_CERTS: trust the build host's CA store too (needed behind TLS-inspecting proxies).
# UV_COMPILE_BYTECODE: the run-time user cannot write __pycache__ into /opt/aygolog, so compile
# now: every start (and every HEALTHCHECK run) imports ~5x faster, for ~45 MB.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 UV_PYTHON_DOWNLOADS=never \
    UV_SYSTEM_CERTS=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/aygolog
# binutils: `strip`, which takes the debug symbols out of the wheels' C extensions (-25 MB).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet "uv==0.13.9"
WORKDIR /src
# The locked dependencies first (a layer that survives source changes), then the project itself
# as a wheel (not editable), so /src is not needed at run time. Server and web-page extras, no
# dev tools.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-project --extra server --extra ui \
        --python python3
COPY src ./src
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable --extra server --extra ui \
        --python python3 \
    && find /opt/aygolog -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} + \
    && /opt/aygolog/bin/aygolog version

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 aygolog \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/aygolog \
        --shell /usr/sbin/nologin aygolog
COPY --from=build /opt/aygolog /opt/aygolog
ENV PATH=/opt/aygolog/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AYGOLOG_HOST=0.0.0.0 \
    AYGOLOG_UI_HOST=0.0.0.0 \
    AYGOLOG_UI_PORT=5173
USER 10001:10001
WORKDIR /home/aygolog
# 8080: the load balancer or a Log API instance; 5173: the web page (the seed's Vite port).
EXPOSE 8080 5173
# `aygolog healthcheck` GETs /health (LB, Log API) or / (web page) on 127.0.0.1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["aygolog", "healthcheck"]
ENTRYPOINT ["aygolog"]
CMD ["auto"]
