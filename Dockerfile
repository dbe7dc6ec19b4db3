# One image for every certcheck service; the command picks the service:
#   docker run IMAGE watcher|evaluator|recorder|notifier|exporter [flags]
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
COPY devcluster ./devcluster
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home certcheck
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1 CERTCHECK_HTTP_PORT=8080
EXPOSE 8080
ENTRYPOINT ["certcheck"]
