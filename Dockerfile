# syntax=docker/dockerfile:1
# Build a wheel in one stage, install only the wheel in a slim runtime image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home aggtrio
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER aggtrio
# Inside a container the service must listen beyond loopback to be reachable.
ENV AGGTRIO_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 50051
ENTRYPOINT ["python", "-m", "aggtrio"]
CMD ["serve"]
