# One image for every aygolog role: `aygolog lb`, `aygolog api`, `aygolog ui`.
# With no command it picks the role from the seed's environment variables (`aygolog auto`),
# so the seed's `docker run` lines work with this image's name put in.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# UV_SYSTEM_CERTS: trust the build host's CA store too (needed behind TLS-inspecting proxies).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 UV_PYTHON_DOWNLOADS=never \
    UV_SYSTEM_CERTS=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet "uv==0.13.9"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
# The locked dependencies, the server and web-page extras, no dev tools; the project itself
# as a wheel (not editable), so /src is not needed at run time.
RUN UV_PROJECT_ENVIRONMENT=/opt/aygolog /opt/uv/bin/uv sync --frozen --no-dev --no-editable \
        --extra server --extra ui --python python3

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --home-dir /home/aygolog --create-home aygolog
COPY --from=build /opt/aygolog /opt/aygolog
ENV PATH=/opt/aygolog/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AYGOLOG_HOST=0.0.0.0 \
    AYGOLOG_UI_HOST=0.0.0.0 \
    AYGOLOG_UI_PORT=5173
USER aygolog
WORKDIR /home/aygolog
EXPOSE 8080 5173
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["aygolog", "healthcheck"]
ENTRYPOINT ["aygolog"]
CMD ["auto"]
