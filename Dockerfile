# syntax=docker/dockerfile:1
# Two stages: the first builds wheels for aggtrio and its dependencies; the second installs
# them from a bind mount, so neither the wheels nor pip's cache nor any build tool ends up
# in the runtime image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency has a wheel for CPython 3.11 on x86_64 Linux; on a platform where one
# must be compiled, install its compiler here (this stage only).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Nothing is installed at run time: the installer and the build tools go once aggtrio is in.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels aggtrio \
    && pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && groupadd --system --gid 10001 aggtrio \
    && useradd --system --uid 10001 --gid aggtrio --no-create-home \
       --shell /usr/sbin/nologin aggtrio
# Numeric, so that a cluster can tell the user is not root without reading /etc/passwd.
USER 10001:10001
# Inside a container the service must listen beyond loopback to be reachable. Any setting
# can be given the same way (AGGTRIO_*, see README "Deploying"), or by mounting a file and
# setting AGGTRIO_CONFIG to its path.
ENV AGGTRIO_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 50051
ENTRYPOINT ["python", "-m", "aggtrio"]
CMD ["serve"]
